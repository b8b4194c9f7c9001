"""`python -m train_svc` as a real process: configuration, SERVING, metrics, NOT_SERVING and exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import train_pb2, train_pb2_grpc
from scripts.local_aws import free_port
from scripts.programs import start
from sentiment.errors import ConfigError
from train_svc.config import TrainConfig


def test_config_defaults_and_errors_name_the_key() -> None:
    config = TrainConfig.from_env({"STORE_URI": "s3://bucket/prefix"})
    assert config.listen_addr == "[::]:50051" and config.metrics_port == 8001
    assert config.auth_token == "" and config.dataset_uri == "" and config.work_dir == ""
    assert (config.max_dataset_rows, config.max_dataset_bytes) == (2_000_000, 2 << 30)
    assert config.max_queued_jobs == 16
    limited = TrainConfig.from_env(
        {"STORE_URI": "/s", "MAX_DATASET_ROWS": "500", "MAX_DATASET_BYTES": "1048576", "MAX_QUEUED_JOBS": "2"}
    )
    assert (limited.dataset_limits.max_rows, limited.dataset_limits.max_bytes) == (500, 1 << 20)
    assert limited.max_queued_jobs == 2
    bad = [
        ({}, "STORE_URI"),
        ({"STORE_URI": "gs://bucket"}, "STORE_URI"),
        ({"STORE_URI": "/tmp/s", "DATASET_URI": "http://x/y.csv"}, "DATASET_URI"),
        ({"STORE_URI": "/tmp/s", "METRICS_PORT": "eighty"}, "METRICS_PORT"),
        ({"STORE_URI": "/tmp/s", "GRACE_S": "-1"}, "GRACE_S"),
        ({"STORE_URI": "/tmp/s", "MAX_DATASET_ROWS": "5"}, "MAX_DATASET_ROWS"),
        ({"STORE_URI": "/tmp/s", "MAX_DATASET_BYTES": "2GiB"}, "MAX_DATASET_BYTES"),
        ({"STORE_URI": "/tmp/s", "MAX_QUEUED_JOBS": "0"}, "MAX_QUEUED_JOBS"),
    ]
    for environ, key in bad:
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_env(environ)


async def test_module_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {
        **os.environ,
        "STORE_URI": str(tmp_path / "store"),
        "METRICS_PORT": str(metrics_port),
        "WORK_DIR": str(tmp_path / "work"),
        "GRACE_S": "2",
    }
    program = start("train_svc", env, tmp_path / "train_svc.log", port=0)
    try:
        port = await program.wait_port(30)  # from its "serving on ... (port N)" line

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service="sentiment.v1.TrainService"))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            jobs = await train_pb2_grpc.TrainServiceStub(channel).ListJobs(
                train_pb2.ListJobsRequest(), timeout=5
            )
            assert list(jobs.jobs) == []
            exposition = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
            )
            assert b'train_jobs{state="QUEUED"} 0.0' in exposition
            assert b'train_stage{train_stage="idle"} 1.0' in exposition

            program.terminate()
            update = await asyncio.wait_for(watch.read(), 10)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await asyncio.to_thread(program.wait, 20) == 0, program.log_text()
    finally:
        program.kill()
