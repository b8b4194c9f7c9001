"""The replay source reports like the X source: connected while it reads, done at the end of the file,
failed (with the cause) when the file cannot be read to its end; a failed replay ends the run with exit 1
and the cause, after everything read before the error is written."""

from __future__ import annotations

import asyncio
import logging
import zlib
from pathlib import Path
from typing import Any

import pytest

from scripts.local_aws import free_port
from sentiment.synthetic import write_jsonl, write_sentiment140
from stream_svc import app
from stream_svc.config import EXIT_FAILED, StreamConfig
from stream_svc.replay import ReplaySource
from stream_svc.tweets import Tweet
from tests.fixtures_stream import table_items
from tests.test_stream_x_operability import probe


def truncated_gzip_csv(path: Path, rows: int, keep: float) -> int:
    """A gzipped Sentiment140 CSV cut at `keep` of its bytes (as a copy that died half-way would be); the
    rows that can still be read whole from it."""
    write_sentiment140(path, rows, seed=71)
    data = path.read_bytes()
    cut = data[: int(len(data) * keep)]
    path.write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    return readable.count(b"\n")


async def test_a_replay_is_connected_while_it_reads_and_done_at_the_end(tmp_path: Path) -> None:
    source = ReplaySource(write_jsonl(tmp_path / "replay.jsonl", 1200, seed=70))  # three read chunks
    assert not source.connected and not source.done
    seen = 0
    async for event in source:
        assert source.connected and not source.done and not source.failed
        seen += isinstance(event, Tweet)
    assert seen == 1200
    assert source.done and not source.connected and not source.failed and source.failure == ""


async def test_an_unreadable_replay_fails_naming_the_file_after_the_rows_before_the_damage(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tweets.csv.gz"
    readable = truncated_gzip_csv(path, 3000, keep=0.6)
    source = ReplaySource(path)
    events = [event async for event in source]
    assert source.failed and not source.done and not source.connected
    assert source.failure.startswith("cannot read tweets.csv.gz:"), source.failure
    assert "ended before the end-of-stream marker" in source.failure
    # Every whole row before the damage is handed over, none twice (the last, cut row cannot be read).
    ids = [e.id for e in events if isinstance(e, Tweet)]
    assert len(ids) == len(set(ids)) and readable - 1 <= len(ids) <= readable, (len(ids), readable)
    assert len(ids) > 1000, "rows of the chunk that met the error are kept too"


async def test_a_failed_replay_ends_the_run_with_exit_1_the_cause_and_nothing_lost(
    stream_model_server: Any,
    stream_table: str,
    tmp_path: Path,
    dead_letter_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "tweets.csv.gz"
    truncated_gzip_csv(path, 1500, keep=0.5)
    port = free_port()
    config = StreamConfig(
        source="replay",
        replay_path=str(path),
        replay_rate=600,  # about a second of reading: long enough to probe
        model_target=f"127.0.0.1:{stream_model_server.port}",
        dynamodb_table=stream_table,
        dead_letter_path=str(dead_letter_path),
        metrics_port=port,
        batch_size=32,
    )
    caplog.set_level(logging.INFO, logger="stream_svc")
    running = asyncio.create_task(app.run(config))
    ready: set[int] = set()
    while not running.done():  # read as the kubelet reads it while the replay goes on
        try:
            ready.add(probe(f"http://127.0.0.1:{port}/readyz"))
        except OSError:
            pass  # not listening yet, or closed at the end
        await asyncio.sleep(0.05)
    assert await running == EXIT_FAILED
    assert 200 in ready, "ready while reading"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("stream_svc stopped: cannot read tweets.csv.gz" in m for m in errors), errors
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream_svc finished")]
    counts = dict(part.split("=") for part in summary.split(": ", 1)[1].split())
    assert counts["balanced"] == "True" and int(counts["received"]) > 300, summary
    assert int(counts["written"]) == len(table_items(stream_table)), summary
    assert int(counts["written"]) + int(counts["skipped_empty"]) == int(counts["received"]), summary
