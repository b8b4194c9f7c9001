"""SIGTERM with a stage that cannot finish: the drain ends at GRACE_S, the rest is dead-lettered, none lost.

As Kubernetes does it: SIGTERM, then SIGKILL once the grace period is over. stream_svc must exit on its
own before the kill, with every tweet it took in either in the table or in the dead-letter file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scripts.local_aws import free_port
from sentiment.predict_client import PredictClient
from sentiment.synthetic import generate, write_jsonl, x_api_payload
from stream_svc.deadletter import DeadLetterFile, read_dead_letters
from stream_svc.pipeline import Pipeline
from stream_svc.replay import ReplaySource
from stream_svc.sink import DynamoSink, WriteRetry
from stream_svc.x_stream import XStreamSource
from tests.fake_x_api import FakeXApi
from tests.fixtures_stream import (
    DynamoFaultProxy,
    log_records,
    run_summary,
    spawn_stream_svc,
    table_items,
    wait_until,
)

GRACE_S = 2.0
KILL_AFTER_S = GRACE_S + 3  # the pod's terminationGracePeriodSeconds, scaled down with GRACE_S


def replay_ids(replay: Path, n: int) -> set[str]:
    return {json.loads(line)["data"]["id"] for line in replay.read_text().splitlines()[:n]}


async def _collect(
    stream: asyncio.StreamReader, lines: list[bytes], seen: asyncio.Event, marker: bytes
) -> None:
    """Read a child's stderr to its end (so it never blocks on a full pipe); set `seen` at `marker`."""
    while line := await stream.readline():
        lines.append(line)
        if marker in line:
            seen.set()


async def test_sigterm_with_model_svc_down_dead_letters_at_grace_s_and_exits_before_the_kill(
    stream_table: str, tmp_path: Path, dead_letter_path: Path
) -> None:
    replay = write_jsonl(tmp_path / "replay.jsonl", 2000, seed=51)
    env = {
        **os.environ,
        "SOURCE": "replay",
        "REPLAY_PATH": str(replay),
        "MODEL_TARGET": f"127.0.0.1:{free_port()}",  # nothing listens: every PredictBatch is retried
        "GRACE_S": str(GRACE_S),
        "DYNAMODB_TABLE": stream_table,
        "DEAD_LETTER_PATH": str(dead_letter_path),
        "METRICS_PORT": "0",
    }
    proc = await spawn_stream_svc(env)
    assert proc.stderr is not None
    lines: list[bytes] = []
    retrying = asyncio.Event()
    reader = asyncio.create_task(_collect(proc.stderr, lines, retrying, b"Predict UNAVAILABLE"))
    try:
        await asyncio.wait_for(retrying.wait(), 30)  # tweets are taken in and PredictBatch is failing
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            await asyncio.wait_for(proc.wait(), KILL_AFTER_S)
        except TimeoutError:
            proc.kill()  # what Kubernetes does at the end of the grace period
            await proc.wait()
        exited_after_s = time.monotonic() - signalled
        await reader
    finally:
        if proc.returncode is None:
            proc.kill()
    stderr = b"".join(lines)
    print(f"SIGTERM to exit: {exited_after_s:.2f}s (GRACE_S={GRACE_S:g})")  # the figure, with -s
    assert proc.returncode == 0, stderr.decode()[-3000:]  # not -9: it exited on its own
    assert GRACE_S - 0.1 <= exited_after_s < KILL_AFTER_S
    summary = run_summary(stderr)
    assert summary["balanced"] == "True" and summary["written"] == 0
    assert 0 < summary["received"] < 2000  # the source was stopped
    assert summary["dead_lettered"] == summary["abandoned"] == summary["received"] - summary["skipped_empty"]
    letters = read_dead_letters(dead_letter_path)
    dead = {entry["id"] for entry in letters}
    assert len(letters) == len(dead)
    assert all(e["stage"] == "predict" and "drain deadline" in e["reason"] for e in letters)
    landed = set(table_items(stream_table))
    skipped = summary["skipped_empty"]
    assert len(landed | dead) + skipped == summary["received"]
    assert landed | dead <= replay_ids(replay, summary["received"])  # none lost, none invented
    assert any("SIGTERM received" in r["msg"] for r in log_records(stderr))


async def test_deadline_dead_letters_items_queued_and_writes_in_flight(
    stream_model_server: Any,
    stream_table: str,
    dynamo_fault_proxy: Callable[..., Awaitable[DynamoFaultProxy]],
    tmp_path: Path,
    dead_letter_path: Path,
) -> None:
    proxy = await dynamo_fault_proxy(throttle=10**6)  # every write is throttled, and retried, forever
    retry = WriteRetry(attempts=10**6, initial_backoff_s=0.01, max_backoff_s=0.05)
    sink = await DynamoSink.open(stream_table, retry=retry, endpoint_url=proxy.url)
    replay = write_jsonl(tmp_path / "replay.jsonl", 2000, seed=52)
    async with PredictClient(f"127.0.0.1:{stream_model_server.port}") as client:
        run = Pipeline(ReplaySource(replay), client, sink, DeadLetterFile(dead_letter_path), batch_size=32)
        task = asyncio.create_task(run.run())
        try:
            # The writers hold 8 x 25 in flight and the items queue 200 more: both are full.
            await wait_until(
                lambda: run.counters.predicted >= 400 and proxy.throttled >= 16, 30, "writes stuck"
            )
            stopped = time.monotonic()
            await run.stop(grace_s=0.5)
            counters = await asyncio.wait_for(task, 5)
            took_s = time.monotonic() - stopped
        finally:
            await sink.aclose()
    assert 0.5 <= took_s < 2
    assert counters.balanced() and counters.written == 0 and counters.abandoned == counters.dead_lettered
    assert counters.received < 2000
    letters = read_dead_letters(dead_letter_path)
    stages = {e["stage"] for e in letters}
    assert "write" in stages and stages <= {"predict", "write"}
    assert all("drain deadline: not finished within 0.5s" in e["reason"] for e in letters)
    assert [e["record"]["sentiment"] for e in letters if e["stage"] == "write"]  # the item, predicted
    dead = {e["id"] for e in letters}
    assert len(dead) == len(letters) == counters.received - counters.skipped_empty
    assert dead <= replay_ids(replay, counters.received) and not table_items(stream_table)


async def test_deadline_dead_letters_what_the_x_source_had_buffered(
    fake_x: Callable[..., Awaitable[FakeXApi]], stream_table: str, dead_letter_path: Path
) -> None:
    tweets = list(generate(1200, seed=53))
    fake = await fake_x(messages=[x_api_payload(t) for t in tweets])
    source = XStreamSource("test-token", ["love"], base_url=fake.base_url)
    sink = await DynamoSink.open(stream_table)
    # model_svc is down: the pipeline holds ~500 tweets, the source's own queue the other ~700.
    async with PredictClient(f"127.0.0.1:{free_port()}") as client:
        run = Pipeline(source, client, sink, DeadLetterFile(dead_letter_path))
        task = asyncio.create_task(run.run())
        try:
            await wait_until(
                lambda: run.counters.received + source.queue.qsize() == len(tweets),
                30,
                "every tweet received",
            )
            assert source.queue.qsize() > 0
            await run.stop(grace_s=0.3)
            counters = await asyncio.wait_for(task, 5)
        finally:
            await sink.aclose()
    assert counters.received == len(tweets) and counters.balanced()
    dead = {e["id"] for e in read_dead_letters(dead_letter_path)}
    assert len(dead) == counters.dead_lettered == counters.abandoned == len(tweets) - counters.skipped_empty
    assert dead <= {t.id for t in tweets}
