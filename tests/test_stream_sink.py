"""stream_svc DynamoDB sink on the local endpoint: types, idempotency, retries, dead letters, the report CLI.

Faults are injected at the HTTP level: an aiohttp proxy in front of moto (`DynamoFaultProxy`) answers
throttling errors and turns half of some requests into `UnprocessedItems`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import boto3

from scripts.local_aws import LocalAws
from sentiment.synthetic import write_jsonl
from stream_svc.deadletter import DeadLetterFile, read_dead_letters
from stream_svc.dynamodb import create_table
from stream_svc.pipeline import Pipeline
from stream_svc.replay import ReplaySource
from stream_svc.sink import DynamoSink, WriteRetry
from tests.fixtures_stream import THROTTLE_CODES, DynamoFaultProxy, FakeSentimentClient, table_items

FAST_RETRY = WriteRetry(attempts=10, initial_backoff_s=0.005, max_backoff_s=0.05)


def item(i: int, sentiment: str = "POSITIVE", score: str = "0.912345", hour: int = 10) -> dict[str, object]:
    return {
        "id": f"{1_900_000_000_000_000_000 + i}",
        "user": f"user_{i % 7}",
        "sentiment": sentiment,
        "score": Decimal(score),
        "twitter_raw": f"raw {i} https://t.co/x 😍",
        "twitter_clean": f"raw {i}",
        "data": f"2026-11-01T{hour:02d}:{i % 60:02d}:00.000Z",
        "model_version": "v1",
        "analyzed_at": "2026-11-28T12:00:00Z",
    }


def test_write_backoff_is_full_jitter_capped_from_either_base() -> None:
    retry = WriteRetry(initial_backoff_s=0.05, max_backoff_s=1.0, auth_initial_backoff_s=0.5)
    for attempt in range(1, 12):
        for _ in range(20):
            assert 0 <= retry.backoff_s(attempt) <= min(1.0, 0.05 * 2 ** (attempt - 1))
            assert (
                0
                <= retry.backoff_s(attempt, retry.auth_initial_backoff_s)
                <= min(1.0, 0.5 * 2 ** (attempt - 1))
            )


async def test_items_land_typed_and_idempotent(stream_table: str) -> None:
    sink = await DynamoSink.open(stream_table, concurrency=4)
    try:
        items = [item(i) for i in range(60)]
        assert await sink.write([*items, *items[:5]]) == []  # duplicates inside one call collapse
        assert await sink.write(items[10:20]) == []  # and a re-send overwrites
    finally:
        await sink.aclose()
    landed = table_items(stream_table)
    assert len(landed) == 60
    one = landed[str(items[0]["id"])]
    assert one["score"] == {"N": "0.912345"}
    for key in (
        "id",
        "user",
        "sentiment",
        "twitter_raw",
        "twitter_clean",
        "data",
        "model_version",
        "analyzed_at",
    ):
        assert set(one[key]) == {"S"}, key
    assert one["twitter_raw"]["S"] == "raw 0 https://t.co/x 😍"


async def test_throttling_and_unprocessed_items_are_retried_until_everything_lands(
    stream_table: str, dynamo_fault_proxy: Callable[..., Awaitable[DynamoFaultProxy]]
) -> None:
    proxy = await dynamo_fault_proxy(throttle=6, unprocessed=5)
    sink = await DynamoSink.open(stream_table, concurrency=4, retry=FAST_RETRY, endpoint_url=proxy.url)
    try:
        assert await sink.write([item(i) for i in range(100)]) == []
    finally:
        await sink.aclose()
    assert proxy.throttled == 6 and proxy.split == 5
    assert sink.retries == 11  # one re-send per injected fault
    assert len(table_items(stream_table)) == 100


async def test_throttling_that_never_ends_fails_with_the_reason(
    stream_table: str, dynamo_fault_proxy: Callable[..., Awaitable[DynamoFaultProxy]]
) -> None:
    proxy = await dynamo_fault_proxy(throttle=10**6)
    retry = WriteRetry(attempts=3, initial_backoff_s=0.001, max_backoff_s=0.005)
    sink = await DynamoSink.open(stream_table, retry=retry, endpoint_url=proxy.url)
    try:
        failures = await sink.write([item(i) for i in range(30)])
    finally:
        await sink.aclose()
    assert len(failures) == 30 and proxy.batch_requests == 2 * 3
    assert all(f.reason.startswith("gave up after 3 attempts: ") for f in failures)
    assert all(any(code in f.reason for code in THROTTLE_CODES) for f in failures)


async def test_permanently_failing_write_goes_to_the_dead_letter_file(
    aws: LocalAws, tmp_path: Path, dead_letter_path: Path
) -> None:
    # A table keyed on another attribute: every put is a ValidationException, retried singly, then given up.
    table = f"wrongkey-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb").create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "tweet_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "tweet_id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    sink = await DynamoSink.open(table, retry=FAST_RETRY)
    source = ReplaySource(write_jsonl(tmp_path / "replay.jsonl", 40, seed=5))
    run = Pipeline(source, FakeSentimentClient(), sink, DeadLetterFile(dead_letter_path), batch_size=16)
    try:
        counters = await run.run()
    finally:
        await sink.aclose()
    assert counters.received == 40 and counters.dead_lettered == 40 and counters.written == 0
    assert counters.balanced()
    letters = read_dead_letters(dead_letter_path)
    assert len({entry["id"] for entry in letters}) == 40
    assert all(entry["stage"] == "write" and "ValidationException" in entry["reason"] for entry in letters)
    assert letters[0]["record"]["sentiment"] in ("POSITIVE", "NEGATIVE")


def _cli(*args: str, table: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DYNAMODB_TABLE": table, "LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "stream_svc", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_create_table_cli_is_idempotent_and_report_prints_totals_and_plot(
    aws: LocalAws, tmp_path: Path
) -> None:
    table = f"report-{uuid.uuid4().hex[:8]}"
    first = _cli("create-table", table=table)
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    assert not (await create_table(table)).created  # already there
    sink = await DynamoSink.open(table)
    try:
        rows = [item(i, "POSITIVE", "0.9", hour=10) for i in range(10)]
        rows += [item(i, "NEGATIVE", "0.1", hour=11) for i in range(10, 15)]
        rows += [item(i, "NEUTRAL", "0.5", hour=12) for i in range(15, 20)]
        assert await sink.write(rows) == []
    finally:
        await sink.aclose()
    png = tmp_path / "plot" / "sentiment.png"
    result = _cli("report", "--plot", str(png), "--recent", "3", table=table)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "tweets analysed: 20" in out
    assert "POSITIVE         10   50.0%      0.900" in out
    assert "NEGATIVE          5   25.0%      0.100" in out
    assert "NEUTRAL           5   25.0%      0.500" in out
    assert "all              20  100.0%      0.600" in out
    assert "tweets per hour: 6.7 on average over 3 hours" in out
    assert "2026-11-01T10:00Z  10" in out and "2026-11-01T12:00Z  5" in out
    recent = out.split("most recent:")[1].split("plot written")[0].strip().splitlines()
    assert len(recent) == 3 and all("NEUTRAL" in line for line in recent)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
