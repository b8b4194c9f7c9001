"""`app.run` in the test process: one AsyncExitStack holds every resource, for a normal end and a failed start."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scripts.local_aws import free_port
from sentiment.synthetic import write_jsonl
from stream_svc import app
from stream_svc.config import StreamConfig
from tests.fixtures_stream import table_items


def port_is_free(port: int) -> bool:
    """Nothing listens on `port` (SO_REUSEADDR: a scrape's closed connection may linger in TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return False
        return True


async def scrape(url: str, name: str) -> float:
    """The sum of the samples `name` at `url`, whatever their labels (0 when there are none yet)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    values = [
        line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith((name + " ", name + "{"))
    ]
    return sum(float(v) for v in values)


async def test_run_serves_its_own_metrics_and_closes_everything_at_the_end(
    stream_model_server: Any, stream_table: str, tmp_path: Path, dead_letter_path: Path
) -> None:
    port = free_port()
    config = StreamConfig(
        source="replay",
        replay_path=str(write_jsonl(tmp_path / "replay.jsonl", 200, seed=61)),
        replay_rate=200,
        model_target=f"127.0.0.1:{stream_model_server.port}",
        dynamodb_table=stream_table,
        dead_letter_path=str(dead_letter_path),
        metrics_port=port,
        batch_size=16,
        batch_max_wait_s=0.02,
    )
    running = asyncio.create_task(app.run(config))
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = asyncio.get_running_loop().time() + 30
    written = 0.0
    while written == 0:  # scraped while the replay goes on: the endpoint serves the run's registry
        assert not running.done() and asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
        try:
            written = await scrape(url, "stream_tweets_written_total")
        except aiohttp.ClientConnectionError:
            continue  # not listening yet
    assert await asyncio.wait_for(running, 60) == 0
    assert len(table_items(stream_table)) == 200 and not dead_letter_path.exists()
    assert port_is_free(port), "the metrics endpoint is closed with the rest"


async def test_a_start_that_fails_part_way_unwinds_what_it_had_opened(
    stream_table: str, tmp_path: Path
) -> None:
    port = free_port()
    config = StreamConfig(
        source="replay",
        replay_path=str(write_jsonl(tmp_path / "replay.jsonl", 5, seed=62)),
        dynamodb_table=stream_table,
        metrics_port=port,
        tls_ca_path=str(tmp_path / "missing-ca.pem"),  # read after the metrics endpoint has started
    )
    with pytest.raises(FileNotFoundError):
        await app.run(config)
    assert port_is_free(port), "the metrics endpoint opened before the failure is closed"
