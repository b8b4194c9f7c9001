"""The Pods CI runs in the cluster (pull_image, test_after_deploy): strictly valid, under the same policy, and the
smoke test's script run against real servers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml

from model_svc.server import ModelServer
from tests.deploy.helpers import VENV_BIN, assert_container_policy, ci_pod_templates, kubernetes_validate
from tests.fixtures_train import TrainHarness


def test_ci_pods_validate_strictly(tmp_path: Path) -> None:
    for name, pod in ci_pod_templates().items():
        path = tmp_path / name
        path.write_text(yaml.safe_dump(pod))
        result = kubernetes_validate(path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_ci_pods_meet_the_same_policy() -> None:
    for name, pod in ci_pod_templates().items():
        for ctr in pod["spec"]["containers"]:
            assert_container_policy(name, pod["spec"], ctr)


async def test_ci_smoke_test_passes_against_real_servers_and_fails_without_a_model(
    model_server: ModelServer,
    start_model_server: Callable[..., Awaitable[ModelServer]],
    train_harness: TrainHarness,
    tmp_path: Path,
) -> None:
    """The test_after_deploy script, run by a shell as in its pod, with the Services mapped to local ports."""
    train_server, _ = await train_harness.start(str(tmp_path / "store"))
    (tmp_path / "empty").mkdir()
    empty_model_server = await start_model_server(tmp_path / "empty")
    pod = ci_pod_templates()["smoke-test-pod.yaml"]
    (script,) = pod["spec"]["containers"][0]["args"]

    async def run_smoke(model_port: int) -> tuple[int, str]:
        text = str(script).replace("model-svc-headless:50052", f"127.0.0.1:{model_port}")
        text = text.replace("model-svc:50052", f"127.0.0.1:{model_port}")
        text = text.replace("train-svc:50051", f"127.0.0.1:{train_server.port}")
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await run_smoke(model_server.port)
    assert code == 0 and "smoke test passed" in out, out
    assert out.count('"label"') == 2
    code, out = await run_smoke(empty_model_server.port)
    assert code != 0 and "smoke test passed" not in out, "a model server with no model is not healthy"
