"""Build, start and stop the train_svc gRPC server: TrainService, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health

from protos import train_pb2_grpc
from sentiment import rpc
from sentiment.store import ArtifactStore, open_store
from train_svc.config import TrainConfig, package_version
from train_svc.jobs import JobRunner
from train_svc.metrics import TrainMetrics
from train_svc.servicer import SERVICE_NAME, TrainServiceServicer

log = logging.getLogger(__name__)


class TrainServer:
    """A started server; `port` is the bound port (useful with LISTEN_ADDR host:0)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: health.aio.HealthServicer,
        runner: JobRunner,
        store: ArtifactStore,
        metrics: TrainMetrics,
    ) -> None:
        self.port = port
        self.runner = runner
        self.store = store
        self.metrics = metrics
        self._server = server
        self._health = health_servicer
        self._stopped = False

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING; stop taking calls (in-flight ones get `grace_s`) while the running job is cancelled
        and recorded, so watchers see it end; then close the store. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        await rpc.set_serving(self._health, [SERVICE_NAME], False)
        await asyncio.gather(self._server.stop(grace_s), self.runner.aclose())
        await self.store.aclose()
        self.metrics.close()
        log.info("train_svc stopped")


async def start_server(config: TrainConfig) -> TrainServer:
    """Open the store, load recorded jobs, bind and start; health turns SERVING once all of that is done."""
    store = await open_store(config.store_uri)
    metrics = TrainMetrics()
    runner = JobRunner(
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
    server: grpc.aio.Server | None = None
    try:
        await runner.start()
        server = grpc.aio.server(
            options=rpc.server_options(config.max_message_bytes),
            interceptors=[rpc.UndecodableRequests(lambda name: metrics.invalid_requests.labels(name).inc())],
        )
        train_pb2_grpc.add_TrainServiceServicer_to_server(
            TrainServiceServicer(runner, store, config.auth_token), server
        )
        health_servicer = await rpc.add_health_and_reflection(server, [SERVICE_NAME])
        port = rpc.bind(server, config.listen_addr)
        await server.start()
        metrics.serve(config.metrics_port)
    except BaseException:
        if server is not None:
            await server.stop(0)
        await runner.aclose()
        await store.aclose()
        raise
    await rpc.set_serving(health_servicer, [SERVICE_NAME], True)
    log.info("train_svc serving on %s (port %d), store %s", config.listen_addr, port, store.uri)
    return TrainServer(server, port, health_servicer, runner, store, metrics)


async def serve(config: TrainConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    await rpc.serve_until_signal(lambda: start_server(config), config.grace_s)
