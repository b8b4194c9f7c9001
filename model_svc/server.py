"""Build, start and stop the model server: PredictService, health, reflection, hot reload, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc

from model_svc.config import ModelConfig
from model_svc.inference import Inference
from model_svc.metrics import ModelMetrics
from model_svc.model import LoadedModel, configure_threads
from model_svc.reload import Reloader
from model_svc.servicer import SERVICE_NAME, PredictService
from protos import predict_pb2_grpc
from sentiment import rpc
from sentiment.lifecycle import Grace, Lifecycle
from sentiment.metrics import MetricsEndpoint, build_info, package_version
from sentiment.names import remove_tree
from sentiment.store import open_store

log = logging.getLogger(__name__)


@dataclass
class ModelServer:
    """A started server. `port` is the bound port (useful with LISTEN_ADDR ...:0)."""

    port: int
    inference: Inference
    reloader: Reloader
    metrics: ModelMetrics
    lifecycle: Lifecycle

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING, stop polling, finish in-flight RPCs within `grace_s`, drain the batcher, close."""
        await self.lifecycle.stop(grace_s)


async def start_server(
    config: ModelConfig, loaded_together: Callable[[], Awaitable[None]] | None = None
) -> ModelServer:
    """Listen at once (health NOT_SERVING), then load the CURRENT model if there is one (SERVING) and
    keep polling `models/CURRENT` every RELOAD_INTERVAL_S. A worker process (`reuse_port`) loads first,
    then awaits `loaded_together` (until every worker's first load is over), then listens.

    Returns when the first load attempt is over, whatever its outcome: with no model (none promoted,
    or a bad bundle) Predict answers UNAVAILABLE until a good one appears. Every resource is entered on
    one AsyncExitStack, so a start that fails part-way (port taken, bad TLS files, metrics port in use)
    and a stop release the same things in the same (reverse) order.
    """
    configure_threads(config.intra_op_threads, config.inter_op_threads)
    async with AsyncExitStack() as stack:
        grace = Grace()
        store = await open_store(config.store_uri)
        stack.push_async_callback(store.aclose)
        model_dir = await _model_dir(config, stack)
        metrics = ModelMetrics()
        build_info(
            metrics.registry, "model_svc", config.code_version or package_version(), config.code_revision
        )
        endpoint = MetricsEndpoint(metrics.registry, config.metrics_port)
        stack.callback(endpoint.close)
        inference = build_inference(config, metrics)
        stack.push_async_callback(inference.batcher.aclose, drain=True)
        server = grpc.aio.server(
            options=rpc.server_options(config.max_message_bytes, reuse_port=config.reuse_port),
            interceptors=[
                rpc.UndecodableRequests(lambda name: metrics.requests.labels(name, "INVALID_ARGUMENT").inc())
            ],
        )
        stack.push_async_callback(lambda: server.stop(grace.seconds))
        health_servicer = await rpc.add_health_and_reflection(server, [SERVICE_NAME])

        async def on_loaded(model: LoadedModel) -> None:
            settle_heap()
            await rpc.set_serving(health_servicer, [SERVICE_NAME], True)

        reloader = Reloader(
            store,
            model_dir,
            inference,
            config.reload_interval_s,
            on_loaded,
            limits=config.bundle_limits,
            load_timeout_s=config.load_timeout_s,
            xla_max_rows=config.xla_max_rows,
        )
        predict_pb2_grpc.add_PredictServiceServicer_to_server(
            PredictService(inference, lambda: reloader.current_version), server
        )
        if config.reuse_port:
            # One of WORKERS sharing the port: it joins the kernel's accept group only once its first load
            # is over, or the kernel would hand it connections that get "no model loaded" while the
            # workers that are ready (and answer the readiness probe) serve. And not before the others: the
            # first ready would take every connection opened meanwhile, and keep them (gRPC's are long-lived).
            await reloader.check()
            if loaded_together is not None:
                await loaded_together()
        port = rpc.bind(server, config.listen_addr, config.tls_cert_path, config.tls_key_path)
        await server.start()
        endpoint.start()
        log.info(
            "PredictService listening on port %d (%s), metrics on %s",
            port,
            "TLS" if config.tls_cert_path else "plaintext",
            config.metrics_port or "off",
        )
        if not config.reuse_port:
            await reloader.check()
        reload_task = asyncio.get_running_loop().create_task(reloader.run(), name="model-reload")
        stack.push_async_callback(_cancel, reload_task)
        lifecycle = Lifecycle("model_svc", health_servicer, grace, stack.pop_all())
        return ModelServer(port, inference, reloader, metrics, lifecycle)
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


def build_inference(config: ModelConfig, metrics: ModelMetrics) -> Inference:
    """The serving path without gRPC, as `config` sets it (the benchmark runs it in process too)."""
    return Inference(
        max_text_chars=config.max_text_chars,
        predict_batch_max_texts=config.predict_batch_max_texts,
        batch_max_texts=config.inference_batch_max_texts,
        batch_max_wait_s=config.inference_batch_max_wait_s,
        queue_max_texts=config.queue_max_texts,
        metrics=metrics,
    )


def settle_heap() -> None:
    """After a model swap: one full garbage collection now, then every object alive is frozen out of later
    ones. TensorFlow and a model are ~400k objects that a full pass (~0.3 s) would otherwise walk again at
    some random moment under traffic; the model just replaced, frozen since its own load, is freed here."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _model_dir(config: ModelConfig, stack: AsyncExitStack) -> Path:
    """MODEL_DIR, or a temporary folder removed when the stack unwinds."""
    if config.model_dir:
        model_dir = Path(config.model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        return model_dir
    temp_dir = Path(tempfile.mkdtemp(prefix="model_svc-"))

    async def remove() -> None:
        try:
            await asyncio.to_thread(remove_tree, Path(tempfile.gettempdir()), temp_dir)
        except (OSError, ValueError) as exc:
            log.error("could not remove %s: %s", temp_dir, exc)

    stack.push_async_callback(remove)
    return temp_dir


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
