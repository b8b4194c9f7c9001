"""End to end: fake X API or a replay file -> stream_svc -> real model_svc -> DynamoDB (local endpoint)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import boto3

from sentiment.predict_client import PredictClient
from sentiment.synthetic import generate, write_jsonl, x_api_payload
from stream_svc.deadletter import DeadLetterFile, read_dead_letters
from stream_svc.pipeline import Pipeline
from stream_svc.sink import DynamoSink
from stream_svc.x_stream import XStreamSource
from tests.fake_x_api import FakeXApi
from tests.fixtures_stream import (
    RecordingSink,
    model_svc_config,
    run_summary,
    spawn_stream_svc,
    table_items,
    wait_until,
)

MakeFakeX = Callable[..., Awaitable[FakeXApi]]
ITEM_KEYS = {
    "id",
    "user",
    "sentiment",
    "score",
    "twitter_raw",
    "twitter_clean",
    "data",
    "model_version",
    "analyzed_at",
    "time_bucket",
    "time_sort",
}


async def test_fake_x_to_model_svc_to_table(
    fake_x: MakeFakeX, stream_model_server: Any, stream_table: str, dead_letter_path: Path
) -> None:
    tweets = list(generate(150, seed=21))
    fake = await fake_x(messages=[x_api_payload(t) for t in tweets], rules=[], drop_after=[70])
    source = XStreamSource("test-token", ["sentiment"], base_url=fake.base_url)
    sink = RecordingSink(await DynamoSink.open(stream_table))
    async with PredictClient(f"127.0.0.1:{stream_model_server.port}") as client:
        run = Pipeline(
            source, client, sink, DeadLetterFile(dead_letter_path), batch_size=32, batch_max_wait_s=0.02
        )
        task = asyncio.create_task(run.run())
        try:
            await wait_until(lambda: {t.id for t in tweets} <= sink.landed, 30, "all tweets written")
        finally:
            await run.stop()
            counters = await task
            await sink.aclose()
    assert counters.balanced() and counters.dead_lettered == 0 and fake.connections == 2
    landed = table_items(stream_table)
    assert set(landed) == {t.id for t in tweets}
    for tweet in tweets:
        row = landed[tweet.id]
        assert set(row) == ITEM_KEYS
        assert set(row["score"]) == {"N"} and 0.0 <= float(row["score"]["N"]) <= 1.0
        assert all(set(row[key]) == {"S"} for key in ITEM_KEYS - {"score"})
        assert row["user"]["S"] == tweet.user and row["twitter_raw"]["S"] == tweet.text
        assert row["data"]["S"] == tweet.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert row["sentiment"]["S"] in ("POSITIVE", "NEUTRAL", "NEGATIVE")
        assert row["model_version"]["S"] == "v1"
        assert row["time_bucket"]["S"] == tweet.created_at.strftime("%Y-%m-%dT%H")
        assert row["time_sort"]["S"] == f"{row['data']['S']}#{tweet.id}"
        assert "https://" not in row["twitter_clean"]["S"]


async def test_model_svc_stopped_and_restarted_mid_stream_loses_nothing(
    fake_x: MakeFakeX, stream_model_store: Path, stream_table: str, dead_letter_path: Path
) -> None:
    from model_svc.server import start_server

    server = await start_server(model_svc_config(stream_model_store))
    port = server.port
    tweets = list(generate(240, seed=22))
    fake = await fake_x(messages=[x_api_payload(t) for t in tweets], hold_after=[79])
    source = XStreamSource("test-token", ["sentiment"], base_url=fake.base_url)
    sink = RecordingSink(await DynamoSink.open(stream_table))
    client = PredictClient(f"127.0.0.1:{port}")
    run = Pipeline(
        source, client, sink, DeadLetterFile(dead_letter_path), batch_size=16, batch_max_wait_s=0.01
    )
    task = asyncio.create_task(run.run())
    try:
        await wait_until(lambda: len(sink.landed) == 80, 30, "the first 80 tweets written")
        await server.stop(0)
        fake.release()  # the other 160 arrive while model_svc is down
        await wait_until(lambda: client.retries > 0, 30, "a Predict retry while model_svc is down")
        server = await start_server(model_svc_config(stream_model_store, f"127.0.0.1:{port}"))
        await wait_until(lambda: {t.id for t in tweets} <= sink.landed, 60, "all tweets written")
    finally:
        await run.stop()
        counters = await task
        await sink.aclose()
        await client.aclose()
        await server.stop(0)
    assert counters.balanced() and counters.dead_lettered == 0 and counters.predict_retries > 0
    assert not dead_letter_path.exists()
    assert set(table_items(stream_table)) == {t.id for t in tweets}


def _env(table: str, replay: Path, model_port: int, dead_letter: Path, rate: float) -> dict[str, str]:
    return {
        **os.environ,
        "SOURCE": "replay",
        "REPLAY_PATH": str(replay),
        "REPLAY_RATE": str(rate),
        "MODEL_TARGET": f"127.0.0.1:{model_port}",
        "DYNAMODB_TABLE": table,
        "DEAD_LETTER_PATH": str(dead_letter),
        "METRICS_PORT": "0",
        "BATCH_SIZE": "32",
        "BATCH_MAX_WAIT_S": "0.02",
        "LOG_LEVEL": "INFO",
    }


async def test_replay_run_exits_zero_when_the_file_is_done(
    stream_model_server: Any, stream_table: str, tmp_path: Path, dead_letter_path: Path
) -> None:
    replay = write_jsonl(tmp_path / "replay.jsonl", 300, seed=23)
    proc = await spawn_stream_svc(_env(stream_table, replay, stream_model_server.port, dead_letter_path, 0))
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    summary = run_summary(stderr)
    assert summary["received"] == summary["written"] == 300 and summary["dead_lettered"] == 0
    assert len(table_items(stream_table)) == 300


async def test_sigterm_mid_stream_drains_and_exits_zero(
    stream_model_server: Any, stream_table: str, tmp_path: Path, dead_letter_path: Path
) -> None:
    replay = write_jsonl(tmp_path / "replay.jsonl", 4000, seed=24)
    proc = await spawn_stream_svc(_env(stream_table, replay, stream_model_server.port, dead_letter_path, 400))
    client = boto3.client("dynamodb")

    def count() -> int:
        return int(client.scan(TableName=stream_table, Select="COUNT")["Count"])

    deadline = asyncio.get_running_loop().time() + 60
    while await asyncio.to_thread(count) < 200:
        assert proc.returncode is None and asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    summary = run_summary(stderr)
    received = summary["received"]
    assert 200 <= received < 4000  # stopped mid-stream
    landed = set(table_items(stream_table))
    dead = {entry["id"] for entry in read_dead_letters(dead_letter_path)}
    assert summary["written"] == len(landed) and summary["dead_lettered"] == len(dead)
    first_ids = [json.loads(line)["data"]["id"] for line in replay.read_text().splitlines()[:received]]
    assert (
        landed | dead == set(first_ids) and summary["skipped_empty"] == 0
    )  # every tweet taken in is accounted for
