"""Durable dead letters and redrive: files roll over, segments ship to S3 (at start, as they roll, and at
SIGTERM before exit), and `redrive` sends dead-lettered tweets back through Predict into the table."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aioboto3
import boto3
import pytest

from scripts.local_aws import free_port
from sentiment.errors import TooLarge
from sentiment.store import S3Store
from sentiment.synthetic import write_jsonl
from stream_svc.deadletter import DeadLetterFile, parse_dead_letter, read_dead_letters
from stream_svc.pipeline import Pipeline
from stream_svc.redrive import DeadLetterSource
from stream_svc.replay import ReplaySource
from stream_svc.shipper import DeadLetterShipper, shipped_dead_letters
from stream_svc.sink import DynamoSink
from stream_svc.tweets import Malformed, Tweet
from tests.fixtures_stream import (
    DynamoFaultProxy,
    FakeSentimentClient,
    MemorySink,
    run_cli,
    run_summary,
    spawn_stream_svc,
    table_items,
    unavailable,
)


async def dead_letter_file(path: Path, n: int, seed: int, stage: str = "predict") -> set[str]:
    """`n` generated tweets run into `path` as dead letters of `stage`: `predict` (model_svc was down) or
    `write` (the table refused them). Returns their ids."""
    replay = write_jsonl(path.with_name(f"replay-{seed}.jsonl"), n, seed=seed)
    ids = {json.loads(line)["data"]["id"] for line in replay.read_text().splitlines()}
    client = FakeSentimentClient(fail_with=unavailable() if stage == "predict" else None)
    sink = MemorySink(fail_ids=list(ids) if stage == "write" else ())
    with closing(DeadLetterFile(path)) as letters:
        counters = await Pipeline(ReplaySource(replay), client, sink, letters, batch_size=50).run()
    assert counters.balanced() and counters.dead_lettered == n
    return ids


def test_the_file_rolls_over_by_size_and_by_age(tmp_path: Path) -> None:
    rolled: list[Path] = []
    by_size = DeadLetterFile(tmp_path / "dl.jsonl", roll_bytes=300, on_roll=rolled.append)
    for i in range(10):
        by_size.add("write", [({"id": str(i), "twitter_raw": "x" * 100}, "refused")])
    by_size.close()
    assert len(rolled) >= 3 and by_size.segments() == rolled
    lines = [json.loads(line) for p in [*rolled, by_size.path] for line in p.read_text().splitlines()]
    assert [entry["id"] for entry in lines] == [str(i) for i in range(10)]  # none lost, in order
    by_age = DeadLetterFile(tmp_path / "age" / "dl.jsonl", roll_s=1e-9)
    by_age.add("predict", [({"id": "a"}, "r")])
    by_age.add("predict", [({"id": "b"}, "r")])  # the first file is older than roll_s now
    by_age.close()
    assert len(by_age.segments()) == 1 and read_dead_letters(by_age.path)[0]["id"] == "b"


def test_a_dead_letter_line_reads_back_as_its_tweet_at_either_stage() -> None:
    predict = {"id": "1", "stage": "predict", "reason": "r", "at": "t", "record": {"id": "1", "user": "u", "twitter_raw": "hi", "twitter_clean": "hi", "data": "2026-11-01T00:00:00.000Z"}}  # fmt: skip
    write = {**predict, "stage": "write", "record": {**predict["record"], "sentiment": "POSITIVE"}}  # type: ignore[dict-item]
    tweet = Tweet(id="1", user="u", text="hi", date="2026-11-01T00:00:00.000Z")
    assert parse_dead_letter(json.dumps(predict)) == tweet == parse_dead_letter(json.dumps(write))
    assert isinstance(parse_dead_letter("{broken"), Malformed)
    assert isinstance(parse_dead_letter(json.dumps({"data": {"id": "1", "text": "x"}})), Malformed)


async def test_redrive_of_10000_dead_letters_writes_each_once(
    stream_table: str, dynamo_fault_proxy: Callable[..., Awaitable[DynamoFaultProxy]], tmp_path: Path
) -> None:
    letters = tmp_path / "dead-letter.jsonl"
    ids = await dead_letter_file(letters, 10_000, seed=71)
    with letters.open("a") as out:  # the same tweet dead-lettered twice, and a line that is no dead letter
        out.write(letters.read_text().splitlines()[5] + "\n" + '{"not": "a dead letter"}\n')
    proxy = await dynamo_fault_proxy()
    sink = await DynamoSink.open(stream_table, endpoint_url=proxy.url)
    source = DeadLetterSource(str(letters))
    failed_again = DeadLetterFile(tmp_path / "again.jsonl")
    try:
        counters = await Pipeline(source, FakeSentimentClient(), sink, failed_again, batch_size=128).run()
    finally:
        await sink.aclose()
    assert counters.received == counters.written == 10_000 and counters.balanced()
    assert source.duplicates == 1 and counters.malformed == {"not_a_dead_letter": 1}
    assert set(proxy.put_ids) == ids and set(proxy.put_ids.values()) == {1}  # all of them, none twice
    assert not failed_again.path.exists()


async def test_redrive_round_trips_dead_letters_through_model_svc_into_the_table(
    stream_model_server: Any, stream_table: str, tmp_path: Path
) -> None:
    letters = tmp_path / "dead-letter.jsonl"
    ids = await dead_letter_file(letters, 60, seed=72) | await dead_letter_file(
        letters, 60, seed=75, stage="write"
    )
    assert {e["stage"] for e in read_dead_letters(letters)} == {"predict", "write"}
    env = {
        "DYNAMODB_TABLE": stream_table,
        "MODEL_TARGET": f"127.0.0.1:{stream_model_server.port}",
        "DEAD_LETTER_PATH": str(tmp_path / "out" / "dead-letter.jsonl"),
    }
    code, out = await run_cli("redrive", str(letters), env=env)
    assert code == 0, out
    assert f"redrive of {letters}: 120 dead letters in 1 file; 0 duplicate ids skipped" in out
    assert "written 120, failed again 0, empty after cleaning 0; balanced=True" in out
    landed = table_items(stream_table)
    assert set(landed) == ids
    assert {row["model_version"]["S"] for row in landed.values()} == {"v1"}
    assert all(row["time_sort"]["S"].endswith("#" + tweet_id) for tweet_id, row in landed.items())
    assert not (tmp_path / "out").exists()  # nothing failed again


async def test_what_a_redrive_fails_again_goes_to_a_new_file(stream_table: str, tmp_path: Path) -> None:
    letters = tmp_path / "dead-letter.jsonl"
    ids = await dead_letter_file(letters, 30, seed=73)
    env = {
        "DYNAMODB_TABLE": stream_table,
        "MODEL_TARGET": f"127.0.0.1:{free_port()}",  # still down
        "DEAD_LETTER_PATH": str(letters),
        "PREDICT_TIMEOUT_S": "0.2",
    }
    code, out = await run_cli("redrive", str(letters), env=env)
    assert code == 1 and "written 0, failed again 30" in out, out
    (again,) = tmp_path.glob("dead-letter.redrive-*.jsonl")
    assert f"what failed again is in {again}" in out
    assert {e["id"] for e in read_dead_letters(again)} == ids
    assert len(read_dead_letters(letters)) == 30  # the input is only read


async def test_a_spool_left_by_an_earlier_process_is_shipped_at_start(bucket: str, tmp_path: Path) -> None:
    spool = DeadLetterFile(tmp_path / "dead-letter.jsonl")
    spool.add("write", [({"id": "7", "twitter_raw": "x"}, "refused")])
    spool.close()  # the process died here; its emptyDir survived the restart
    shipper = await DeadLetterShipper.open(f"s3://{bucket}/dl", DeadLetterFile(spool.path))
    await shipper.aclose()
    (key,) = shipper.shipped
    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"dl/{key}")["Body"].read().decode()
    assert json.loads(body)["id"] == "7" and not list(tmp_path.iterdir())


async def test_a_shipped_dead_letter_object_too_large_to_read_back_is_refused(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="big/a.jsonl", Body=b'{"id": "1"}\n')
    s3.put_object(Bucket=bucket, Key="big/b.jsonl", Body=b"x" * 200)
    monkeypatch.setattr("stream_svc.shipper.MAX_SEGMENT_BYTES", 100)
    read: list[str] = []
    async with aioboto3.Session().client("s3") as client:
        with pytest.raises(TooLarge, match=f"s3://{bucket}/big/b.jsonl is larger than 100 bytes"):
            async for key, _ in shipped_dead_letters(client, f"s3://{bucket}/big"):
                read.append(key)
    assert read == ["big/a.jsonl"], "what came before it was read"


async def test_sigterm_ships_the_unfinished_to_s3_before_exit_and_redrive_reads_them_back(
    stream_model_server: Any, stream_table: str, bucket: str, tmp_path: Path
) -> None:
    replay = write_jsonl(tmp_path / "replay.jsonl", 2000, seed=74)
    spool = tmp_path / "spool" / "dead-letter.jsonl"
    uri = f"s3://{bucket}/stream/dead-letters"
    env = {
        **os.environ,
        "SOURCE": "replay",
        "REPLAY_PATH": str(replay),
        "MODEL_TARGET": f"127.0.0.1:{free_port()}",  # nothing listens: every PredictBatch is retried
        "GRACE_S": "1",
        "DYNAMODB_TABLE": stream_table,
        "DEAD_LETTER_URI": uri,
        "DEAD_LETTER_PATH": str(spool),
        "METRICS_PORT": "0",
    }
    proc = await spawn_stream_svc(env)
    assert proc.stderr is not None
    lines: list[bytes] = []
    while b"Predict UNAVAILABLE" not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
        assert line, b"".join(lines).decode()[-3000:]  # tweets taken in, PredictBatch failing and retried
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(proc.communicate(), 30)
    stderr = b"".join(lines) + rest
    assert proc.returncode == 0, stderr.decode()[-3000:]
    summary = run_summary(stderr)
    assert summary["balanced"] == "True" and summary["written"] == 0 and summary["dead_lettered"] > 0
    store = await S3Store.open(uri)
    try:
        keys = await store.list_keys("dead-letter")
        shipped = [
            json.loads(line) for key in keys for line in (await store.get_bytes(key)).decode().splitlines()
        ]
    finally:
        await store.aclose()
    assert len(shipped) == len({e["id"] for e in shipped}) == summary["dead_lettered"]
    assert not list(spool.parent.iterdir())  # everything reached S3 before the exit

    env = {"DYNAMODB_TABLE": stream_table, "MODEL_TARGET": f"127.0.0.1:{stream_model_server.port}", "DEAD_LETTER_URI": uri, "DEAD_LETTER_PATH": str(spool)}  # fmt: skip
    code, out = await run_cli("redrive", uri, env=env)
    assert code == 0 and f"written {summary['dead_lettered']}, failed again 0" in out, out
    assert set(table_items(stream_table)) == {e["id"] for e in shipped}


async def test_forget_removes_tweets_from_the_dead_letters_so_no_redrive_writes_them_back(
    stream_model_server: Any, stream_table: str, bucket: str, tmp_path: Path
) -> None:
    """X's compliance rules: a tweet deleted upstream goes from every store, the dead letters too."""
    first, second = tmp_path / "dead-letter.20261201T000000.000000Z.jsonl", tmp_path / "dead-letter.jsonl"
    ids_first = await dead_letter_file(first, 40, seed=76)
    ids_second = await dead_letter_file(second, 40, seed=77, stage="write")
    prefix = "stream/dead-letters"
    s3 = boto3.client("s3")
    for path in (first, second):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    gone = sorted(ids_second)[:5]
    ids_file = tmp_path / "deleted.txt"
    ids_file.write_text("\n".join(gone) + "\n")
    etag = s3.head_object(Bucket=bucket, Key=f"{prefix}/{first.name}")["ETag"]
    env = {
        "DYNAMODB_TABLE": stream_table,
        "MODEL_TARGET": f"127.0.0.1:{stream_model_server.port}",
        "DEAD_LETTER_URI": f"s3://{bucket}/{prefix}",
        "DEAD_LETTER_PATH": str(tmp_path / "spool" / "dead-letter.jsonl"),
    }
    code, out = await run_cli("forget", "--ids", str(ids_file), env=env)
    assert code == 0, out
    assert "forget: 5 ids, 0 deleted, 5 not in the table, 0 failed" in out
    assert (
        f"dead letters at s3://{bucket}/{prefix}: 2 files read, 1 rewritten; forgotten tweets' lines removed: 5"
        in out
    )
    assert s3.head_object(Bucket=bucket, Key=f"{prefix}/{first.name}")["ETag"] == etag, "left as it was"
    # A local file and its closed segments, with --dead-letters.
    code, out = await run_cli("forget", "--ids", str(ids_file), "--dead-letters", str(second), env=env)
    assert code == 0 and "2 files read, 1 rewritten; forgotten tweets' lines removed: 5" in out, out
    assert {e["id"] for e in read_dead_letters(second)} == ids_second - set(gone)
    assert {e["id"] for e in read_dead_letters(first)} == ids_first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".scrub")], "no temporary file left"

    code, out = await run_cli("redrive", f"s3://{bucket}/{prefix}", env=env)
    assert code == 0, out
    landed = set(table_items(stream_table))
    assert landed == (ids_first | ids_second) - set(gone), "a forgotten tweet was written back"
    code, out = await run_cli("forget", "--ids", str(ids_file), env=env)  # idempotent
    assert code == 0 and "2 files read, 0 rewritten; forgotten tweets' lines removed: 0" in out, out
