"""The X source tells when it is stuck: tweepy against the fake X API for a 429, a stalled stream and a
reconnect, with the connection metrics and the /livez and /readyz probes read as Kubernetes reads them."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from scripts.local_aws import free_port
from sentiment.metrics import MetricsEndpoint
from sentiment.synthetic import generate, x_api_payload
from stream_svc.health import StreamHealth
from stream_svc.metrics import StreamMetrics
from stream_svc.tweets import SourceEvent, Tweet
from stream_svc.x_stream import XStreamSource, rate_limit_wait_s
from tests.fake_x_api import FakeXApi
from tests.fixtures_stream import wait_until

MakeFakeX = Callable[..., Awaitable[FakeXApi]]


def probe(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@asynccontextmanager
async def reading(source: XStreamSource) -> AsyncIterator[list[SourceEvent]]:
    received: list[SourceEvent] = []

    async def read() -> None:
        async for event in source:
            received.append(event)

    reader = asyncio.create_task(read())
    try:
        yield received
    finally:
        await source.aclose()
        await reader


async def test_a_429_backs_off_our_way_then_connects_and_counts_it(fake_x: MakeFakeX) -> None:
    tweets = list(generate(4, seed=41))
    fake = await fake_x(messages=[x_api_payload(t) for t in tweets], answer_first=[429, 429])
    metrics = StreamMetrics()
    source = XStreamSource(
        "test-token", ["love"], base_url=fake.base_url, metrics=metrics, rate_limit_wait_s=0.05
    )
    async with reading(source) as received:
        await wait_until(lambda: len(received) == len(tweets), 20, "the tweets after two 429s")
        assert metrics.sample("stream_x_http_errors_total", {"status": "429"}) == 2
        assert metrics.sample("stream_x_connects_total") == 1 and metrics.sample("stream_x_connected") == 1
        assert source.client.rate_limited == 0, "a connect resets the backoff"
    assert [e.id for e in received if isinstance(e, Tweet)] == [t.id for t in tweets]
    assert not source.failed and metrics.sample("stream_x_connected") == 0


def test_a_429_waits_a_minute_doubling_as_x_documents() -> None:
    assert [rate_limit_wait_s(n) for n in range(1, 7)] == [60.0, 120.0, 240.0, 480.0, 960.0, 960.0]


async def test_a_stalled_stream_fails_liveness_within_stall_s_and_a_reconnect_heals_it(
    fake_x: MakeFakeX,
) -> None:
    tweets = list(generate(6, seed=43))
    fake = await fake_x(messages=[x_api_payload(t) for t in tweets], keepalive_s=0.05, drop_after=[4])
    metrics = StreamMetrics()
    source = XStreamSource("test-token", ["love"], base_url=fake.base_url, metrics=metrics)
    health = StreamHealth(source, stall_s=0.5)
    port = free_port()
    endpoint = MetricsEndpoint(
        metrics.registry, port, {"/livez": health.liveness, "/readyz": health.readiness}
    )
    beat = asyncio.create_task(health.beat())
    endpoint.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert probe(f"{base}/readyz") == 503, "not connected yet"
        async with reading(source) as received:
            # The cut after message 4 is a reconnect: counted, and connected again.
            await wait_until(lambda: len(received) >= len(tweets), 20, "every tweet, across the reconnect")
            assert metrics.sample("stream_x_connects_total") == 2 and fake.connections == 2
            assert probe(f"{base}/readyz") == 200 and probe(f"{base}/livez") == 200
            heard = metrics.sample("stream_last_message_timestamp_seconds")
            assert heard > 0
            fake.stall()  # connected, and X sends nothing at all
            await wait_until(lambda: source.silent_s() > 0.6, 10, "the stall to pass STALL_S")
            assert source.connected and probe(f"{base}/livez") == 503
            assert metrics.sample("stream_x_connected") == 1, "a stall is not a disconnect"
            fake.unstall()  # keep-alives again
            await wait_until(lambda: source.silent_s() < 0.2, 10, "keep-alives after the stall")
            assert probe(f"{base}/livez") == 200
            assert metrics.sample("stream_last_message_timestamp_seconds") > heard
    finally:
        beat.cancel()
        endpoint.close()
    assert probe_closed(base)


def probe_closed(base: str) -> bool:
    try:
        probe(f"{base}/livez")
    except OSError:
        return True
    return False
