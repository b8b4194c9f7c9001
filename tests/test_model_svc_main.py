"""`python -m model_svc` as users run it: SERVING on health, metrics on its port, exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from model_svc.model import LoadedModel
from protos import predict_pb2, predict_pb2_grpc
from scripts.local_aws import free_port
from scripts.programs import start
from sentiment.bundle import read_local_bundle
from sentiment.synthetic import generate


async def test_serves_and_exits_0_on_sigterm(
    model_store: Path, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "XLA_MAX_ROWS"},  # as shipped: XLA programs
        "STORE_URI": str(model_store),
        "METRICS_PORT": str(metrics_port),
        "GRACE_S": "2",
        "TF_INTRA_OP_THREADS": "1",
        "TF_INTER_OP_THREADS": "1",
        "LOG_LEVEL": "INFO",
    }
    program = start("model_svc", env, tmp_path / "model_svc.log", port=free_port())
    try:
        await program.wait_serving("sentiment.v1.PredictService", timeout_s=90)
        async with grpc.aio.insecure_channel(program.address) as channel:
            reply = await predict_pb2_grpc.PredictServiceStub(channel).Predict(
                predict_pb2.PredictRequest(text="what a day"), timeout=10
            )
            texts = [t.text for t in generate(24, seed=5)] + ["ok", "so " * 50]
            batch = await predict_pb2_grpc.PredictServiceStub(channel).PredictBatch(
                predict_pb2.PredictBatchRequest(texts=texts), timeout=10
            )
        assert reply.model_version == "v1"
        # The shipped default compiled its XLA programs; they score as the graph does.
        assert "XLA programs (up to 32 texts" in program.log_text()
        graph = LoadedModel(read_local_bundle(tiny_bundle_dir, "v1"), xla_max_rows=0)
        expected = graph.scores(texts)
        np.testing.assert_allclose([p.score for p in batch.predictions], expected, atol=1e-5)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        # Label-agnostic: with WORKERS > 1 every series also carries a `worker` label.
        samples = [s for family in text_string_to_metric_families(page) for s in family.samples]

        def total(name: str, **labels: str) -> float:
            return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

        assert total("model_svc_requests_total", code="OK", rpc="Predict") == 1.0
        served = [
            s.value for s in samples if s.name == "model_svc_model_info" and s.labels["version"] == "v1"
        ]
        assert served and set(served) == {1.0}, "every worker serves v1"
        assert "model_svc_batch_texts_bucket" in page and "model_svc_model_load_seconds" in page
        code = await asyncio.to_thread(program.stop, 30)
    finally:
        program.kill()
    log = program.log_text()
    assert code == 0 and not program.killed, log
    assert "SIGTERM received" in log and "model_svc stopped" in log


async def test_a_bad_setting_fails_at_start_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "STORE_URI": str(tmp_path), "BATCH_MAX_SIZE": "lots"}
    program = start("model_svc", env, tmp_path / "model_svc.log")
    assert await asyncio.to_thread(program.wait, 60) == 2
    assert "BATCH_MAX_SIZE='lots' is not an integer" in program.log_text()
