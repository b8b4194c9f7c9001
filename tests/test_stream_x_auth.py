"""The X API refusing the stream (401: the token; 403: the app's access): bounded tries, a metric, exit 4.

tweepy on its own retries a 401/403 forever, waiting up to 320 s between tries, and logs nothing an
operator can act on; these tests hold the source and `python -m stream_svc` to a bounded number of tries.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sentiment.synthetic import generate, x_api_payload
from stream_svc.config import EXIT_X_REFUSED
from stream_svc.metrics import StreamMetrics
from stream_svc.x_stream import REFUSALS, XStreamSource
from tests.fake_x_api import FakeXApi
from tests.fixtures_stream import log_records, run_summary, spawn_stream_svc, wait_until

MakeFakeX = Callable[..., Awaitable[FakeXApi]]


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_stream_connect_fails_the_source_after_bounded_tries(
    fake_x: MakeFakeX, status: int
) -> None:
    fake = await fake_x(refuse_stream=status)
    metrics = StreamMetrics()
    source = XStreamSource(
        "test-token",
        ["love"],
        base_url=fake.base_url,
        auth_max_tries=3,
        auth_retry_wait_s=0.01,
        metrics=metrics,
    )
    started = time.monotonic()
    async with asyncio.timeout(10):
        events = [event async for event in source]
    assert events == [] and source.failed and source.refused
    assert source.failure.endswith(REFUSALS[status]) and "3 times in a row" in source.failure
    assert fake.refused == 3  # three tries, then no more
    assert metrics.sample("stream_x_http_errors_total", {"status": str(status)}) == 3
    assert time.monotonic() - started < 5  # waits of 0.01 s and 0.02 s, not tweepy's 5 s and 10 s


async def test_a_refusal_that_clears_is_retried_and_the_stream_goes_on(fake_x: MakeFakeX) -> None:
    tweets = list(generate(5, seed=31))
    fake = await fake_x(messages=[x_api_payload(t) for t in tweets], refuse_stream=401)
    source = XStreamSource(
        "test-token", ["love"], base_url=fake.base_url, auth_max_tries=3, auth_retry_wait_s=0.3
    )
    received: list[str] = []

    async def read() -> None:
        async for event in source:
            received.append(getattr(event, "id", ""))

    reader = asyncio.create_task(read())
    try:
        await wait_until(lambda: fake.refused == 1, 10, "a first refusal")
        fake.refuse_stream = 0  # the token is fixed before the second try
        await wait_until(lambda: len(received) == len(tweets), 10, "the tweets after the refusal")
    finally:
        await source.aclose()
        await reader
    assert received == [t.id for t in tweets] and fake.refused == 1
    assert not source.failed and source.client.refusals == 0  # a connect resets the count


@pytest.mark.parametrize(
    ("where", "status"), [("stream", 401), ("stream", 403), ("rules (a wrong token)", 401)]
)
async def test_module_exits_4_with_the_cause_when_x_refuses(
    fake_x: MakeFakeX, stream_table: str, dead_letter_path: Path, where: str, status: int
) -> None:
    fake = await fake_x(refuse_stream=status if where == "stream" else 0)
    env = {
        **os.environ,
        "SOURCE": "x",
        "X_BEARER_TOKEN": "test-token" if where == "stream" else "revoked-token",
        "X_RULES": "love;hate",
        "X_API_BASE_URL": fake.base_url,
        "X_AUTH_MAX_TRIES": "2",
        "X_AUTH_RETRY_WAIT_S": "0.05",
        "MODEL_TARGET": "127.0.0.1:1",  # never called: no tweet arrives
        "DYNAMODB_TABLE": stream_table,
        "DEAD_LETTER_PATH": str(dead_letter_path),
        "METRICS_PORT": "0",
    }
    proc = await spawn_stream_svc(env)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EXIT_X_REFUSED, stderr.decode()[-3000:]
    errors = [r["msg"] for r in log_records(stderr) if r["level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("stream_svc stopped: X API refused the ")
    assert errors[0].count(REFUSALS[status]) == 1 and "2 times in a row" in errors[0]
    assert fake.refused == (2 if where == "stream" else 0)
    summary = run_summary(stderr)
    assert summary["received"] == 0 and summary["balanced"] == "True"
