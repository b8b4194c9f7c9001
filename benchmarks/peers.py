"""The servers bench_predict measures side by side: model_svc as users run it, and MLServer 1.7.1 as its peer.

Each is a process of its own on the CPUs it is given (`benchmarks.common.pinned`), serving the same bundle.
MLServer runs from a benchmark-only virtualenv (`make mlserver-venv`, made here on first use, never .venv:
it needs protobuf 6.33 and uvloop < 0.22) through `benchmarks.mlserver_runtime`, which calls model_svc's
own `LoadedModel.predict_texts`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, cpu_s, memory_mib, pinned, start_model_svc
from scripts.local_aws import free_port

MLSERVER_VENV = ROOT / "var" / "mlserver-venv"
MLSERVER_REQUIREMENTS = Path(__file__).resolve().parent / "mlserver-requirements.txt"
MLSERVER_STAMP = MLSERVER_VENV / ".installed"
MODEL_NAME = "sentiment"


def ensure_mlserver_venv() -> Path:
    """The MLServer virtualenv's `mlserver` program, installed from PyPI (pinned) when missing or stale."""
    program = MLSERVER_VENV / "bin" / "mlserver"
    fresh = (
        MLSERVER_STAMP.is_file() and MLSERVER_STAMP.stat().st_mtime >= MLSERVER_REQUIREMENTS.stat().st_mtime
    )
    if fresh and program.is_file():
        return program
    print(f"installing MLServer into {MLSERVER_VENV} (benchmark only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(MLSERVER_REQUIREMENTS)], check=True)
    MLSERVER_STAMP.touch()
    return program


def v2_descriptor() -> bytes:
    """MLServer's serialized `dataplane.proto` (the V2 inference protocol), read from its generated module:
    the load generators build their message classes from it with their own protobuf runtime."""
    found = list(MLSERVER_VENV.glob("lib/python*/site-packages/mlserver/grpc/dataplane_pb2.py"))
    if not found:
        raise SystemExit(f"MLServer's dataplane_pb2.py not found under {MLSERVER_VENV}")
    for node in ast.walk(ast.parse(found[0].read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    raise SystemExit(f"no serialized descriptor in {found[0]}")


@dataclass(frozen=True)
class Target:
    """What a load generator needs to call a server (picklable): its protocol and port."""

    kind: str  # "model_svc" or "mlserver"
    port: int
    descriptor: bytes = b""  # the V2 protocol's, for "mlserver"


class ModelSvcPeer:
    """`python -m model_svc` on `cpus`, with `env` on top; its metrics give the batch statistics."""

    kind = "model_svc"

    def __init__(self, name: str, store: Path, cpus: set[int], env: dict[str, str]) -> None:
        self.name = name
        self.cpus = cpus
        self.metrics_port = free_port()
        log = store.parent / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log"
        # One reload poll an hour: no store reads in the measured windows.
        self.program = start_model_svc(
            store, log, cpus, METRICS_PORT=str(self.metrics_port), RELOAD_INTERVAL_S="3600", **env
        )

    async def wait_ready(self) -> float:
        return await self.program.wait_serving("sentiment.v1.PredictService", timeout_s=240)

    @property
    def target(self) -> Target:
        return Target(self.kind, self.program.port)

    def pids(self) -> list[int]:
        return _process_tree(self.program.pid)

    def batch_stats(self) -> tuple[float, float]:
        """(texts, model calls) so far, summed over every worker's series."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        page = urllib.request.urlopen(url, timeout=10).read().decode()

        def total(name: str) -> float:
            return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", page, re.MULTILINE))

        return total("model_svc_batch_texts_sum"), total("model_svc_batch_texts_count")

    def stop(self) -> int:
        return self.program.stop(grace_s=60)


class MLServerPeer:
    """MLServer 1.7.1 on `cpus`: `parallel_workers` inference processes, adaptive batching on or off."""

    kind = "mlserver"

    def __init__(
        self, name: str, bundle: Path, cpus: set[int], adaptive: dict[str, float] | None, workers: int = 1
    ) -> None:
        self.name = name
        self.cpus = cpus
        program = ensure_mlserver_venv()
        self.folder = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
        self.http_port, self.grpc_port = free_port(), free_port()
        settings = {
            "debug": False,
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": free_port(),
            "parallel_workers": workers,
            "grpc_max_message_length": 64 << 20,
        }
        model: dict[str, Any] = {
            "name": MODEL_NAME,
            "implementation": "benchmarks.mlserver_runtime.SentimentRuntime",
            "parameters": {"uri": str(bundle.resolve()), "version": "bench"},
            **(adaptive or {}),
        }
        (self.folder / "settings.json").write_text(json.dumps(settings))
        (self.folder / MODEL_NAME).mkdir()
        (self.folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log_path = self.folder / "mlserver.log"
        with pinned(cpus), self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(program), "start", str(self.folder)],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    async def wait_ready(self, timeout_s: float = 240) -> float:
        import asyncio

        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MLServer exited with {self.proc.returncode}; read {self.log_path}")
            try:
                status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).status)
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"MLServer not ready within {timeout_s:.0f}s; read {self.log_path}")

    @property
    def target(self) -> Target:
        return Target(self.kind, self.grpc_port, v2_descriptor())

    def pids(self) -> list[int]:
        return _process_tree(self.proc.pid)

    def batch_stats(self) -> tuple[float, float]:
        return 0.0, 0.0  # MLServer's runtime keeps no such counters

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            code = self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        return code


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (MLServer's inference workers, model_svc's worker processes)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return out


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (those gone count 0)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid)
        except OSError:
            pass
    return total


def tree_memory_mib(pids: list[int]) -> float:
    """Resident memory of these processes together, MiB."""
    total = 0.0
    for pid in pids:
        try:
            total += memory_mib(pid)["rss_mib"]
        except OSError:
            pass
    return round(total, 1)
