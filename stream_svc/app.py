"""Wiring of the `run` command: metrics, Predict client, DynamoDB sink, source, pipeline, SIGTERM drain.

Every resource is entered on one `AsyncExitStack`, so a start that fails part-way and a normal stop
unwind the same way; SIGTERM/SIGINT come through `sentiment.rpc.wait_for_signal`, as for the servers.

Exit codes: 0 the source ended or a stop was asked for, and every tweet is accounted for (a drain cut
short at GRACE_S dead-letters what was unfinished); 1 the counters do not balance, or the X stream ended
by itself; 2 a configuration error (`__main__`); 3 DynamoDB refused the credentials, their permissions or
the table; 4 the X API refused the bearer token or the app's access (401/403).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, closing
from pathlib import Path

from sentiment.errors import ConfigError
from sentiment.metrics import MetricsEndpoint, build_info, package_version
from sentiment.rpc import wait_for_signal
from stream_svc.config import EXIT_FAILED, EXIT_TABLE_REFUSED, EXIT_X_REFUSED, StreamConfig
from stream_svc.counters import Counters
from stream_svc.dynamodb import TableAccessError, table_exists
from stream_svc.health import StreamHealth
from stream_svc.metrics import StreamMetrics
from stream_svc.pipeline import Pipeline
from stream_svc.replay import ReplaySource
from stream_svc.sources import Source
from stream_svc.wiring import open_pipeline
from stream_svc.x_stream import XStreamSource

log = logging.getLogger(__name__)


def build_source(config: StreamConfig, metrics: StreamMetrics) -> Source:
    if config.source == "replay":
        path = Path(config.replay_path)
        if not path.is_file():
            raise ConfigError(f"REPLAY_PATH={config.replay_path!r} is not a file")
        return ReplaySource(path, rate=config.replay_rate)
    return XStreamSource(
        config.x_bearer_token,
        config.x_rules,
        base_url=config.x_api_base_url,
        auth_max_tries=config.x_auth_max_tries,
        auth_retry_wait_s=config.x_auth_retry_wait_s,
        metrics=metrics,
    )


async def run(config: StreamConfig) -> int:
    """Stream until the source ends (a replay file) or SIGTERM/SIGINT, drain, log the summary; exit code.

    A signal stops the source and gives the drain `config.grace_s`; then what is unfinished is
    dead-lettered and the process exits. A fatal cause ends it with one ERROR line naming it.
    """
    try:
        exists = await table_exists(config.dynamodb_table)
    except TableAccessError as exc:
        log.error("stream_svc cannot start: %s", exc)
        return EXIT_TABLE_REFUSED
    if not exists:
        raise ConfigError(
            f"DYNAMODB_TABLE={config.dynamodb_table!r} does not exist; create it with `python -m stream_svc create-table`"
        )
    metrics = StreamMetrics()
    source = build_source(config, metrics)
    async with AsyncExitStack() as stack:
        pipeline = await _open_pipeline(config, source, metrics, stack)
        refused: TableAccessError | None = None
        try:
            counters = await _run_until_signal(pipeline, config.grace_s)
        except TableAccessError as exc:
            counters, refused = pipeline.counters, exc
    log.info("stream_svc finished: %s", counters.summary(), extra={"count": counters.received})
    return _exit_code(counters, source, refused)


async def _open_pipeline(
    config: StreamConfig, source: Source, metrics: StreamMetrics, stack: AsyncExitStack
) -> Pipeline:
    """The pipeline (stream_svc.wiring) and its metrics endpoint with the probes, entered on `stack`."""
    health = StreamHealth(source, config.stall_s)
    probes = {"/livez": health.liveness, "/readyz": health.readiness}
    stack.enter_context(closing(MetricsEndpoint(metrics.registry, config.metrics_port, probes).start()))
    beat = asyncio.get_running_loop().create_task(health.beat(), name="stream-health")
    stack.callback(beat.cancel)
    build_info(metrics.registry, "stream_svc", config.code_version or package_version(), config.code_revision)
    pipeline = await open_pipeline(config, source, metrics, stack)
    health.table_ok = lambda: not pipeline.table_refused
    return pipeline


def _exit_code(counters: Counters, source: Source, refused: TableAccessError | None) -> int:
    """The exit code of a finished run; a failure's cause is logged at ERROR, once."""
    if not counters.balanced():
        log.error("counters do not balance: received != written + dead_lettered + skipped_empty")
        return EXIT_FAILED
    if refused is not None:
        log.error(
            "stream_svc stopped: %s (%d tweets taken in and not written are in the dead-letter file)",
            refused,
            counters.dead_lettered,
        )
        return EXIT_TABLE_REFUSED
    if source.failed:
        if isinstance(source, XStreamSource) and source.refused:
            log.error("stream_svc stopped: %s (check X_BEARER_TOKEN and the app's access)", source.failure)
            return EXIT_X_REFUSED
        log.error("stream_svc stopped: %s", source.failure)
        return EXIT_FAILED
    return 0


async def _run_until_signal(pipeline: Pipeline, grace_s: float) -> Counters:
    """Run the pipeline to its end; the first SIGTERM or SIGINT stops it, giving the drain `grace_s`.

    A later signal is taken and ignored: the drain is bounded already, and cutting it short loses tweets.
    """
    signalled = asyncio.create_task(wait_for_signal())
    running = asyncio.create_task(pipeline.run())
    ignored: asyncio.Task[object] | None = None
    try:
        await asyncio.wait([signalled, running], return_when=asyncio.FIRST_COMPLETED)
        if signalled.done():
            ignored = asyncio.create_task(wait_for_signal())
            sig = signalled.result()
            log.info("%s received: stopping the source and draining (for %gs at most)", sig.name, grace_s)
            await pipeline.stop(grace_s)
        return await running
    finally:
        # Cancelling a wait_for_signal task removes its handlers; `running` is done unless this raised.
        for task in (signalled, ignored, running):
            if task is not None:
                task.cancel()
