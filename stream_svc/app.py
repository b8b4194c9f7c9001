"""Wiring of the `run` command: metrics, Predict client, DynamoDB sink, source, pipeline, SIGTERM drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from pathlib import Path

from model_svc.client import PredictClient
from sentiment.errors import ConfigError
from stream_svc.config import StreamConfig
from stream_svc.deadletter import DeadLetterFile
from stream_svc.metrics import start_metrics_server
from stream_svc.pipeline import Counters, Pipeline
from stream_svc.sink import DynamoSink, table_exists
from stream_svc.sources import ReplaySource, Source, XStreamSource

log = logging.getLogger(__name__)


def build_source(config: StreamConfig) -> Source:
    if config.source == "replay":
        path = Path(config.replay_path)
        if not path.is_file():
            raise ConfigError(f"REPLAY_PATH={config.replay_path!r} is not a file")
        return ReplaySource(path, rate=config.replay_rate)
    return XStreamSource(config.x_bearer_token, config.x_rules, base_url=config.x_api_base_url)


async def run(config: StreamConfig) -> int:
    """Stream until the source ends (a replay file) or SIGTERM/SIGINT, drain, log the summary; exit code."""
    if not await table_exists(config.dynamodb_table):
        raise ConfigError(
            f"DYNAMODB_TABLE={config.dynamodb_table!r} does not exist; create it with `python -m stream_svc create-table`"
        )
    start_metrics_server(config.metrics_port)
    root_certificates = Path(config.tls_ca_path).read_bytes() if config.tls_ca_path else None
    source = build_source(config)
    dead_letter = DeadLetterFile(config.dead_letter_path)
    async with AsyncExitStack() as stack:
        predictor = await stack.enter_async_context(
            PredictClient(
                config.model_target, timeout_s=config.predict_timeout_s, root_certificates=root_certificates
            )
        )
        sink = await DynamoSink.open(config.dynamodb_table, concurrency=config.write_concurrency)
        stack.push_async_callback(sink.aclose)
        stack.callback(dead_letter.close)
        pipeline = Pipeline(
            source,
            predictor,
            sink,
            dead_letter,
            batch_size=config.batch_size,
            batch_max_wait_s=config.batch_max_wait_s,
            predict_concurrency=config.predict_concurrency,
            write_concurrency=config.write_concurrency,
        )
        counters = await _run_until_signal(pipeline)
    log.info("stream_svc finished: %s", counters.summary(), extra={"count": counters.received})
    if not counters.balanced():
        log.error("counters do not balance: received != written + dead_lettered + skipped_empty")
        return 1
    if isinstance(source, XStreamSource) and source.failed:
        return 1
    return 0


async def _run_until_signal(pipeline: Pipeline) -> Counters:
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stopping:
            log.info("%s received: stopping the source and draining", sig.name)
            stopping.append(loop.create_task(pipeline.stop()))

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        counters = await pipeline.run()
        if stopping:
            await stopping[0]
        return counters
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
