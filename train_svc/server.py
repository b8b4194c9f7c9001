"""Build, start and stop the train_svc gRPC server: TrainService, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc

from protos import train_pb2_grpc
from sentiment import rpc
from sentiment.lifecycle import Grace, Lifecycle
from sentiment.metrics import MetricsEndpoint, build_info, package_version
from sentiment.store import ArtifactStore, open_store
from train_svc.config import TrainConfig
from train_svc.metrics import TrainMetrics
from train_svc.runner import JobRunner
from train_svc.servicer import SERVICE_NAME, TrainService

log = logging.getLogger(__name__)


@dataclass
class TrainServer:
    """A started server; `port` is the bound port (useful with LISTEN_ADDR host:0)."""

    port: int
    runner: JobRunner
    store: ArtifactStore
    metrics: TrainMetrics
    lifecycle: Lifecycle

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING; stop taking calls (in-flight ones get `grace_s`) while the running job is cancelled
        and recorded, so watchers see it end; then close the metrics endpoint and the store. Safe twice."""
        await self.lifecycle.stop(grace_s)


async def start_server(config: TrainConfig) -> TrainServer:
    """Open the store, load recorded jobs, bind and start; health turns SERVING once all of that is done.

    Each resource's release is pushed on one AsyncExitStack as it is acquired, so a start that fails
    part-way (WORK_DIR held by another server, port or metrics port taken) and a stop unwind the same way.
    """
    async with AsyncExitStack() as stack:
        grace = Grace()
        store = await open_store(config.store_uri)
        stack.push_async_callback(store.aclose)
        metrics = TrainMetrics()
        build_info(
            metrics.registry, "train_svc", config.code_version or package_version(), config.code_revision
        )
        endpoint = MetricsEndpoint(metrics.registry, config.metrics_port)
        stack.callback(endpoint.close)
        runner = _runner(config, store, metrics)
        stack.push_async_callback(runner.aclose)
        await runner.start()
        server = grpc.aio.server(
            options=rpc.server_options(config.max_message_bytes),
            interceptors=[rpc.UndecodableRequests(lambda name: metrics.invalid_requests.labels(name).inc())],
        )

        async def stop_serving() -> None:
            # A WatchJob stream ends only when its job does: the job is cancelled during the grace, not after.
            await asyncio.gather(server.stop(grace.seconds), runner.aclose())

        stack.push_async_callback(stop_serving)
        train_pb2_grpc.add_TrainServiceServicer_to_server(
            TrainService(runner, store, config.auth_token), server
        )
        health_servicer = await rpc.add_health_and_reflection(server, [SERVICE_NAME])
        port = rpc.bind(server, config.listen_addr)
        await server.start()
        endpoint.start()
        await rpc.set_serving(health_servicer, [SERVICE_NAME], True)
        log.info("train_svc serving on %s (port %d), store %s", config.listen_addr, port, store.uri)
        lifecycle = Lifecycle("train_svc", health_servicer, grace, stack.pop_all())
        return TrainServer(port, runner, store, metrics, lifecycle)
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


def _runner(config: TrainConfig, store: ArtifactStore, metrics: TrainMetrics) -> JobRunner:
    return JobRunner(
        store,
        work_dir=config.work_dir,
        default_dataset_uri=config.dataset_uri,
        cancel_timeout_s=config.cancel_timeout_s,
        code_version=config.code_version or package_version(),
        log_level=config.log_level,
        metrics=metrics,
        dataset_limits=config.dataset_limits,
        max_queued_jobs=config.max_queued_jobs,
    )


async def serve(config: TrainConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    await rpc.serve_until_signal(lambda: start_server(config), config.grace_s)
