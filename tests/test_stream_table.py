"""The time-bucketed table on the local endpoint: create-table (index, TTL, PITR), window reports that issue
no Scan, `report --all`, backfill of items written before the time keys, and forget."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from scripts.local_aws import LocalAws
from sentiment.prediction import Prediction
from stream_svc.backfill import BackfillProgress, backfill_buckets
from stream_svc.commands import dynamodb_client
from stream_svc.dynamodb import create_table, to_dynamodb
from stream_svc.items import make_item
from stream_svc.keys import DEFAULT_LAYOUT, INDEX_NAME, TableLayout
from stream_svc.sink import DynamoSink
from stream_svc.tweets import Tweet
from tests.fixtures_stream import DynamoFaultProxy, run_cli, table_items

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL")


def tweet_items(n: int, layout: TableLayout = DEFAULT_LAYOUT, per_hour: int = 10) -> list[dict[str, Any]]:
    """`n` items, `per_hour` an hour from START; labels in turn; model v1 for the first half, v2 after."""
    items = []
    for i in range(n):
        moment = START + timedelta(seconds=i * 3600 // per_hour)
        tweet = Tweet(f"{1_900_000_000_000_000_000 + i}", f"user_{i % 5}", f"tweet {i}", _iso(moment))
        label = LABELS[i % 3]
        prediction = Prediction(
            label, {"POSITIVE": 0.9, "NEGATIVE": 0.1}.get(label, 0.5), "v1" if i < n // 2 else "v2"
        )
        items.append(make_item(tweet, f"tweet {i}", prediction, _iso(moment + timedelta(seconds=1)), layout))
    return items


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def write(table: str, items: list[dict[str, Any]]) -> None:
    sink = await DynamoSink.open(table)
    try:
        assert await sink.write(items) == []
    finally:
        await sink.aclose()


def new_table_name() -> str:
    return f"tweets-{uuid.uuid4().hex[:10]}"


async def test_create_table_makes_the_index_ttl_and_pitr_and_is_safe_to_run_again(aws: LocalAws) -> None:
    table = new_table_name()
    code, out = await run_cli("create-table", env={"DYNAMODB_TABLE": table, "RETENTION_DAYS": "30"})
    assert code == 0, out
    assert f"table {table} created" in out and "index by_time" in out and "TTL on expires_at enabled" in out
    assert "point-in-time recovery enabled" in out and "expire 30 days after analysis" in out
    client = boto3.client("dynamodb")
    (index,) = client.describe_table(TableName=table)["Table"]["GlobalSecondaryIndexes"]
    assert index["IndexName"] == INDEX_NAME
    assert [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]] == [
        ("time_bucket", "HASH"),
        ("time_sort", "RANGE"),
    ]
    assert set(index["Projection"]["NonKeyAttributes"]) == {"sentiment", "score", "model_version"}
    ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"
    backups = client.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    code, again = await run_cli("create-table", env={"DYNAMODB_TABLE": table})
    assert code == 0 and "already exists" in again and "present" in again and "kept for ever" in again


async def test_create_table_adds_the_index_and_ttl_to_a_table_made_before_them(aws: LocalAws) -> None:
    table = new_table_name()
    boto3.client("dynamodb").create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    code, out = await run_cli("report", "--since", "1h", env={"DYNAMODB_TABLE": table})
    assert code == 2 and "has no by_time index: run `python -m stream_svc create-table`" in out
    setup = await create_table(table)
    assert not setup.created
    assert any("added" in step and INDEX_NAME in step for step in setup.steps), setup.steps
    assert "TTL on expires_at enabled" in setup.steps
    described = boto3.client("dynamodb").describe_table(TableName=table)["Table"]
    assert [i["IndexName"] for i in described["GlobalSecondaryIndexes"]] == [INDEX_NAME]


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_window_report_queries_the_index_and_issues_no_scan(
    aws: LocalAws,
    dynamo_fault_proxy: Callable[..., Awaitable[DynamoFaultProxy]],
    tmp_path: Path,
    shards: int,
) -> None:
    table = new_table_name()
    await create_table(table)
    await write(table, tweet_items(120, TableLayout(bucket_shards=shards)))  # 12 hours, 10 an hour
    proxy = await dynamo_fault_proxy()
    env = {"DYNAMODB_TABLE": table, "AWS_ENDPOINT_URL": proxy.url, "BUCKET_SHARDS": str(shards)}
    figures = tmp_path / "window.json"
    since, until = "2026-11-20T03:30:00Z", "2026-11-20T06:00:00Z"  # 25 tweets: 5 + 10 + 10
    code, out = await run_cli("report", "--since", since, "--until", until, "--json", str(figures), env=env)
    assert code == 0, out
    assert proxy.targets["Scan"] == 0 and proxy.targets["Query"] == 3 * (shards + (shards > 1))
    summary = json.loads(figures.read_text())
    assert summary["total"] == 25 and sum(summary["by_sentiment"].values()) == 25
    assert summary["per_hour"] == {"2026-11-20T03:00Z": 5, "2026-11-20T04:00Z": 10, "2026-11-20T05:00Z": 10}
    assert summary["by_model_version"] == {"v1": {"POSITIVE": 8, "NEGATIVE": 8, "NEUTRAL": 9}}
    assert summary["reads"]["items_read"] <= 1.05 * 25 + 5  # the window, and the 5 recent examples
    assert summary["window"] == {"since": "2026-11-20T03:30:00Z", "until": until, "model_version": None}
    assert [r["data"] for r in summary["recent"]][:2] == [
        "2026-11-20T05:54:00.000Z",
        "2026-11-20T05:48:00.000Z",
    ]
    assert "window: 2026-11-20T03:30:00Z to 2026-11-20T06:00:00Z" in out and "Scan" not in out

    code, out = await run_cli("report", "--since", "2026-11-20T05:00:00Z", "--until", "2026-11-20T07:00:00Z", "--model-version", "v2", "--json", str(figures), env=env)  # fmt: skip
    assert code == 0, out
    summary = json.loads(figures.read_text())
    assert summary["total"] == 10 and set(summary["by_model_version"]) == {"v2"}  # 06:00-07:00 is v2
    assert proxy.targets["Scan"] == 0


async def test_report_all_scans_in_parallel_and_counts_items_without_time_keys(
    aws: LocalAws, tmp_path: Path
) -> None:
    table = new_table_name()
    await create_table(table)
    items = tweet_items(90)
    await write(table, items[:60])
    await _write_without_time_keys(table, items[60:])
    figures, png = tmp_path / "all.json", tmp_path / "all.png"
    code, out = await run_cli("report", "--all", "--segments", "3", "--json", str(figures), "--plot", str(png), env={"DYNAMODB_TABLE": table})  # fmt: skip
    assert code == 0, out
    summary = json.loads(figures.read_text())
    assert summary["total"] == 90 and len(summary["per_hour"]) == 9
    assert summary["reads"]["requests"]["Scan"] >= 3 and "Query" not in summary["reads"]["requests"]
    assert summary["window"]["since"] is None and "window: the whole table" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def _write_without_time_keys(table: str, items: list[dict[str, Any]]) -> None:
    """Items as they were written before the time keys existed."""
    client = boto3.client("dynamodb")
    old = [{k: v for k, v in item.items() if k not in ("time_bucket", "time_sort")} for item in items]
    for start in range(0, len(old), 25):
        request = [{"PutRequest": {"Item": to_dynamodb(item)}} for item in old[start : start + 25]]
        await asyncio.to_thread(client.batch_write_item, RequestItems={table: request})


async def test_backfill_makes_old_items_visible_to_window_reports(aws: LocalAws, tmp_path: Path) -> None:
    table = new_table_name()
    await create_table(table)
    await _write_without_time_keys(table, tweet_items(60))  # 6 hours before the time keys
    env = {"DYNAMODB_TABLE": table, "RETENTION_DAYS": "7"}
    window = ("--since", "2026-11-20T00:00:00Z", "--until", "2026-11-20T06:00:00Z")
    figures = tmp_path / "w.json"
    assert (await run_cli("report", *window, "--json", str(figures), env=env))[0] == 0
    assert json.loads(figures.read_text())["total"] == 0  # invisible to the index

    state = tmp_path / "backfill.json"
    code, out = await run_cli("backfill-buckets", "--rate", "1000", "--state", str(state), env=env)
    assert code == 0, out
    assert "backfill done: 60 items given time keys, 0 skipped" in out and not state.exists()
    assert (await run_cli("report", *window, "--json", str(figures), env=env))[0] == 0
    summary = json.loads(figures.read_text())
    assert summary["total"] == 60 and summary["reads"]["requests"].get("Scan", 0) == 0
    row = table_items(table)["1900000000000000000"]
    assert row["time_bucket"]["S"] == "2026-11-20T00" and row["time_sort"]["S"].endswith(
        "#1900000000000000000"
    )
    expected = int((START + timedelta(seconds=1, days=7)).timestamp())
    assert int(row["expires_at"]["N"]) == expected  # analyzed_at + RETENTION_DAYS

    code, out = await run_cli("backfill-buckets", "--rate", "1000", "--state", str(state), env=env)
    assert code == 0 and "backfill done: 0 items given time keys" in out  # idempotent


async def test_backfill_resumes_where_an_interrupted_run_stopped(aws: LocalAws, tmp_path: Path) -> None:
    table = new_table_name()
    await create_table(table)
    await _write_without_time_keys(table, tweet_items(50))
    state = tmp_path / "state.json"

    class Interrupted(Exception):
        pass

    def interrupt(progress: BackfillProgress) -> None:
        if progress.updated >= 10:
            raise Interrupted  # the process dies between two pages

    async with dynamodb_client() as client:
        with pytest.raises(Interrupted):
            await backfill_buckets(
                client, table, TableLayout(), segments=1, state_path=state, progress=interrupt, page_items=10
            )
        assert state.exists()
        done = await backfill_buckets(
            client, table, TableLayout(), segments=1, state_path=state, page_items=10
        )
    assert done.resumed and done.updated == 40 and not state.exists()
    assert all("time_bucket" in row for row in table_items(table).values())


async def test_backfill_leaves_an_item_the_stream_rewrote_meanwhile(aws: LocalAws, tmp_path: Path) -> None:
    table = new_table_name()
    await create_table(table)
    items = tweet_items(3)
    await _write_without_time_keys(table, items)
    rewritten = {**items[0], "time_bucket": "2026-11-20T00#9", "score": Decimal("0.123")}
    await write(table, [rewritten])  # has the keys: the filter skips it
    async with dynamodb_client() as client:
        done = await backfill_buckets(client, table, TableLayout(), state_path=tmp_path / "s.json")
    assert done.found == 2 and done.updated == 2
    assert table_items(table)[items[0]["id"]]["time_bucket"]["S"] == "2026-11-20T00#9"


async def test_forget_deletes_items_by_id_and_counts_them(aws: LocalAws, tmp_path: Path) -> None:
    table = new_table_name()
    await create_table(table)
    items = tweet_items(10)
    await write(table, items)
    ids = tmp_path / "deleted.txt"
    gone = [items[1]["id"], items[4]["id"], items[7]["id"]]
    ids.write_text(
        f"# deleted upstream\n{gone[0]}\n\n{gone[1]}  # a comment\n{gone[2]}\n{gone[0]}\nnever-seen\n"
    )
    code, out = await run_cli(
        "forget", "--ids", str(ids), env={"DYNAMODB_TABLE": table, "DEAD_LETTER_URI": str(tmp_path / "none")}
    )
    assert code == 0, out
    assert "forget: 4 ids, 3 deleted, 1 not in the table, 0 failed" in out
    assert set(table_items(table)) == {item["id"] for item in items} - set(gone)
    code, out = await run_cli(
        "forget", "--ids", str(ids), env={"DYNAMODB_TABLE": table, "DEAD_LETTER_URI": str(tmp_path / "none")}
    )
    assert code == 0 and "forget: 4 ids, 0 deleted, 4 not in the table, 0 failed" in out  # idempotent
