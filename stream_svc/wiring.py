"""The pipeline wired to its Predict client, sink and dead letters, all entered on one AsyncExitStack:
`run` (stream_svc.app) and `redrive` build it the same way."""

from __future__ import annotations

from contextlib import AsyncExitStack, aclosing
from pathlib import Path

from sentiment.predict_client import PredictClient
from stream_svc.config import StreamConfig
from stream_svc.metrics import StreamMetrics
from stream_svc.pipeline import Pipeline
from stream_svc.shipper import open_dead_letters
from stream_svc.sink import DynamoSink, WriteRetry
from stream_svc.sources import Source


async def open_pipeline(
    config: StreamConfig,
    source: Source,
    metrics: StreamMetrics,
    stack: AsyncExitStack,
    dead_letter_path: Path | None = None,
) -> Pipeline:
    """A Pipeline reading `source`; what it opens closes with `stack` (the dead letters shipped last when
    DEAD_LETTER_URI is s3://). `dead_letter_path` replaces DEAD_LETTER_PATH when given."""
    root_certificates = Path(config.tls_ca_path).read_bytes() if config.tls_ca_path else None
    client = await stack.enter_async_context(
        PredictClient(
            config.model_target,
            timeout_s=config.predict_timeout_s,
            root_certificates=root_certificates,
            connections=config.predict_connections,
        )
    )
    retry = WriteRetry(auth_attempts=config.dynamodb_auth_max_tries)
    sink = await DynamoSink.open(
        config.dynamodb_table, concurrency=config.write_concurrency, retry=retry, metrics=metrics
    )
    await stack.enter_async_context(aclosing(sink))
    dead_letter = await open_dead_letters(config, stack, metrics, path=dead_letter_path)
    return Pipeline(
        source,
        client,
        sink,
        dead_letter,
        batch_size=config.batch_size,
        batch_max_wait_s=config.batch_max_wait_s,
        predict_concurrency=config.predict_concurrency,
        write_concurrency=config.write_concurrency,
        metrics=metrics,
        layout=config.layout,
    )
