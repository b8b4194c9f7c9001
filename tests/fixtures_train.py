"""Fixtures for the train tests: in-process TrainService servers on port 0, clients, and grpcurl."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import train_pb2, train_pb2_grpc
from train_svc.config import TrainConfig
from train_svc.server import TrainServer, start_server

GRPCURL = str(Path(sys.executable).with_name("grpcurl"))
TERMINAL = {train_pb2.SUCCEEDED, train_pb2.FAILED, train_pb2.CANCELLED}


class TrainClient:
    """A channel to one train server with the stubs the tests use."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = train_pb2_grpc.TrainServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def serving(self) -> bool:
        response = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def watch_until_done(
        self, job_id: str, timeout_s: float = 60, until: Callable[[train_pb2.TrainJob], bool] | None = None
    ) -> train_pb2.TrainJob:
        """Follow WatchJob until the job ends (or `until(job)` holds); returns that snapshot."""
        done = until or (lambda job: job.state in TERMINAL)

        async def follow() -> train_pb2.TrainJob:
            call = self.stub.WatchJob(train_pb2.WatchJobRequest(job_id=job_id))
            try:
                async for job in call:
                    if done(job):
                        return job
            finally:
                call.cancel()
            raise AssertionError(f"WatchJob of {job_id} ended before the condition held")

        return await asyncio.wait_for(follow(), timeout_s)

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class TrainHarness:
    """Start servers on 127.0.0.1:0 (metrics off, small timeouts) and connect clients; all stopped at teardown."""

    work_dir: Path
    servers: list[TrainServer]
    clients: list[TrainClient]

    async def start(self, store_uri: str, **overrides: Any) -> tuple[TrainServer, TrainClient]:
        config = TrainConfig(
            store_uri=store_uri,
            listen_addr="127.0.0.1:0",
            metrics_port=0,
            work_dir=str(self.work_dir),
            grace_s=1.0,
            cancel_timeout_s=3.0,
        )
        server = await start_server(replace(config, **overrides))
        self.servers.append(server)
        client = TrainClient(server.port)
        self.clients.append(client)
        return server, client


@pytest.fixture
async def train_harness(tmp_path: Path) -> AsyncIterator[TrainHarness]:
    harness = TrainHarness(tmp_path / "work", [], [])
    yield harness
    for client in harness.clients:
        await client.close()
    for server in harness.servers:
        await server.stop(1.0)


@dataclass(frozen=True)
class GrpcurlResult:
    returncode: int
    stdout: str
    stderr: str

    def json_objects(self) -> list[dict[str, Any]]:
        """grpcurl prints one pretty JSON object per response message."""
        decoder = json.JSONDecoder()
        text, at = self.stdout, 0
        objects: list[dict[str, Any]] = []
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            if at >= len(text):
                return objects
            obj, at = decoder.raw_decode(text, at)
            objects.append(obj)


GrpcurlRunner = Callable[..., Awaitable[GrpcurlResult]]


@pytest.fixture
def grpcurl() -> GrpcurlRunner:
    """Run the real grpcurl binary without blocking the event loop the in-process servers run on."""

    async def run(*args: str, timeout_s: float = 60) -> GrpcurlResult:
        process = await asyncio.create_subprocess_exec(
            GRPCURL,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return GrpcurlResult(process.returncode, out.decode(), err.decode())

    return run
