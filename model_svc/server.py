"""Build, start and stop the model server: PredictService, health, reflection, hot reload, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health
from prometheus_client import start_http_server

from model_svc import metrics
from model_svc.config import ModelConfig
from model_svc.model import LoadedModel, configure_threads
from model_svc.predictor import Predictor
from model_svc.reload import Reloader
from model_svc.servicer import SERVICE_NAME, PredictService
from protos import predict_pb2_grpc
from sentiment import rpc
from sentiment.names import remove_tree
from sentiment.store import ArtifactStore, open_store

log = logging.getLogger(__name__)


@dataclass
class ModelServer:
    """A started server. `port` is the bound port (useful with LISTEN_ADDR ...:0)."""

    server: grpc.aio.Server
    port: int
    predictor: Predictor
    reloader: Reloader
    health: health.aio.HealthServicer
    store: ArtifactStore
    reload_task: asyncio.Task[None]
    temp_dir: Path | None = None
    metrics_http: Any = None
    stopped: bool = field(default=False)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING, stop polling, finish in-flight RPCs within `grace_s`, drain the batcher, close."""
        if self.stopped:
            return
        self.stopped = True
        await rpc.set_serving(self.health, [SERVICE_NAME], False)
        self.reload_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reload_task
        await _release(self.server, grace_s, self.predictor, self.store, self.metrics_http, self.temp_dir)
        log.info("model server stopped")


async def _release(
    server: grpc.aio.Server,
    grace_s: float,
    predictor: Predictor,
    store: ArtifactStore,
    metrics_http: Any,
    temp_dir: Path | None,
) -> None:
    """Finish in-flight RPCs within `grace_s`, drain the batcher, close the store client, the metrics
    endpoint and the temporary model folder: a stop, or a start that failed part-way."""
    await server.stop(grace_s)
    await predictor.batcher.aclose(drain=True)
    await store.aclose()
    if metrics_http is not None:
        metrics_http.shutdown()
        metrics_http.server_close()
    if temp_dir is not None:
        try:
            await asyncio.to_thread(remove_tree, Path(tempfile.gettempdir()), temp_dir)
        except (OSError, ValueError) as exc:
            log.error("could not remove %s: %s", temp_dir, exc)


async def start_server(config: ModelConfig) -> ModelServer:
    """Listen at once (health NOT_SERVING), then load the CURRENT model if there is one (SERVING) and
    keep polling `models/CURRENT` every RELOAD_INTERVAL_S.

    Returns when the first load attempt is over, whatever its outcome: with no model (none promoted,
    or a bad bundle) Predict answers UNAVAILABLE until a good one appears.
    """
    configure_threads(config.intra_op_threads, config.inter_op_threads)
    store = await open_store(config.store_uri)
    temp_dir = None if config.model_dir else Path(tempfile.mkdtemp(prefix="model_svc-"))
    model_dir = Path(config.model_dir) if config.model_dir else temp_dir
    assert model_dir is not None
    model_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(
        max_text_chars=config.max_text_chars,
        max_batch_texts=config.max_batch_texts,
        batch_max_size=config.batch_max_size,
        batch_max_wait_s=config.batch_max_wait_s,
        queue_max_texts=config.queue_max_texts,
    )
    metrics.QUEUE_TEXTS.set_function(lambda: predictor.batcher.queued)

    server = grpc.aio.server(
        options=rpc.server_options(config.max_message_bytes),
        interceptors=[
            rpc.UndecodableRequests(lambda name: metrics.REQUESTS.labels(name, "INVALID_ARGUMENT").inc())
        ],
    )
    metrics_http = None
    try:  # a start that fails part-way (port taken, bad TLS files) frees what it had taken
        health_servicer = await rpc.add_health_and_reflection(server, [SERVICE_NAME])

        async def on_loaded(model: LoadedModel) -> None:
            await rpc.set_serving(health_servicer, [SERVICE_NAME], True)

        reloader = Reloader(
            store,
            model_dir,
            predictor,
            config.reload_interval_s,
            on_loaded,
            limits=config.bundle_limits,
            load_timeout_s=config.load_timeout_s,
        )
        predict_pb2_grpc.add_PredictServiceServicer_to_server(
            PredictService(predictor, lambda: reloader.current_version), server
        )
        port = rpc.bind(server, config.listen_addr, config.tls_cert_path, config.tls_key_path)
        await server.start()
        if config.metrics_port:
            metrics_http, _ = start_http_server(config.metrics_port)
        log.info(
            "PredictService listening on port %d (%s), metrics on %s",
            port,
            "TLS" if config.tls_cert_path else "plaintext",
            config.metrics_port or "off",
        )
        await reloader.check()
    except BaseException:
        await _release(server, 0, predictor, store, metrics_http, temp_dir)
        raise
    reload_task = asyncio.get_running_loop().create_task(reloader.run(), name="model-reload")
    return ModelServer(
        server=server,
        port=port,
        predictor=predictor,
        reloader=reloader,
        health=health_servicer,
        store=store,
        reload_task=reload_task,
        temp_dir=temp_dir,
        metrics_http=metrics_http,
    )
