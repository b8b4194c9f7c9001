"""Fixtures for the model tests: model_svc servers on port 0 over a local store holding the tiny bundle."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_svc.config import ModelConfig
from model_svc.server import ModelServer, start_server
from sentiment.bundle import MANIFEST_FILE, VOCAB_FILE

GRPCURL = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "grpcurl")


def model_config(store: Path | str, **overrides: Any) -> ModelConfig:
    """A test config: loopback port 0, no metrics endpoint, fast polling, no XLA programs (compiling
    them takes ~7 s a load of the tiny model; tests/test_model_svc_xla.py and the `python -m model_svc`
    test run them)."""
    base = ModelConfig(
        store_uri=str(store),
        listen_addr="127.0.0.1:0",
        metrics_port=0,
        reload_interval_s=0.1,
        grace_s=1.0,
        xla_max_rows=0,
    )
    return replace(base, **overrides)


def add_version(store: Path, source: Path, version: str, promote: bool = True) -> Path:
    """Copy a bundle folder into the store as `models/<version>/`, and name it in CURRENT."""
    target = store / "models" / version
    shutil.copytree(source, target)
    if promote:
        (store / "models" / "CURRENT").write_text(version)
    return target


def corrupt_checksum(bundle_dir: Path) -> None:
    """Change one payload file after the manifest recorded its checksum."""
    path = bundle_dir / VOCAB_FILE
    path.write_text(path.read_text().replace('"', '"x', 2))


def set_format_version(bundle_dir: Path, format_version: int) -> None:
    path = bundle_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["format_version"] = format_version
    path.write_text(json.dumps(manifest))


async def health_status(target: str, service: str = "sentiment.v1.PredictService") -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Run the real grpcurl binary without blocking the event loop the server runs on."""
    proc = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def start_model_server() -> AsyncIterator[Callable[..., Any]]:
    """`server = await start_model_server(store, **config_overrides)`; every server is stopped after the test."""
    servers: list[ModelServer] = []

    async def start(store: Path | str, **overrides: Any) -> ModelServer:
        server = await start_server(model_config(store, **overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def model_server(model_store: Path, start_model_server: Callable[..., Any]) -> ModelServer:
    """A model_svc serving the tiny bundle as version v1 on 127.0.0.1:<port> (plaintext)."""
    server: ModelServer = await start_model_server(model_store)
    return server


@pytest.fixture(scope="module")
async def shared_model_server(
    tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModelServer]:
    """One server for the tests of a module that only read from it (v1 = the tiny bundle)."""
    store = tmp_path_factory.mktemp("model_store")
    add_version(store, tiny_bundle_dir, "v1")
    server = await start_server(model_config(store))
    yield server
    await server.stop(0)
