"""`python -m model_svc` as users run it: SERVING on health, metrics on its port, exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import predict_pb2, predict_pb2_grpc
from scripts.local_aws import free_port

REPO = Path(__file__).resolve().parents[1]


async def run_module(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "model_svc",
        cwd=REPO,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="sentiment.v1.PredictService"),
            wait_for_ready=True,
            timeout=90,
        )
        async for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return


async def test_serves_and_exits_0_on_sigterm(model_store: Path) -> None:
    port, metrics_port = free_port(), free_port()
    proc = await run_module(
        {
            "STORE_URI": str(model_store),
            "LISTEN_ADDR": f"127.0.0.1:{port}",
            "METRICS_PORT": str(metrics_port),
            "GRACE_S": "2",
            "TF_INTRA_OP_THREADS": "1",
            "TF_INTER_OP_THREADS": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    try:
        await wait_serving(f"127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await predict_pb2_grpc.PredictServiceStub(channel).Predict(
                predict_pb2.PredictRequest(text="what a day"), timeout=10
            )
        assert reply.model_version == "v1"
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        assert 'model_svc_requests_total{code="OK",rpc="Predict"} 1.0' in page
        assert 'model_svc_model{version="v1"} 1.0' in page
        assert "model_svc_batch_texts_bucket" in page and "model_svc_model_load_seconds" in page
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert code == 0, log
    assert "SIGTERM received" in log and "model server stopped" in log


async def test_a_bad_setting_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    proc = await run_module({"STORE_URI": str(tmp_path), "BATCH_MAX_SIZE": "lots"})
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "BATCH_MAX_SIZE='lots' is not an integer" in err.decode()
