"""bench_predict over gRPC (lines 3 to 5): `python -m model_svc` in its own process, and load generators in
spawned processes (no TensorFlow in them) that measure the same window.

`serve_lines` runs every line: each spreads its concurrency over the pool's processes, each process runs its
share of call loops on one channel, and the server's metrics give the mean batch and how busy inference was.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import memory_mib, percentile, start_model_svc
from scripts.local_aws import free_port

# Spawned processes need time to connect and warm up before the window opens.
START_DELAY_S = 1.5
# The gRPC lines: (name, kind, concurrency, texts per call).
GRPC_LINES = [
    ("3. gRPC Predict, concurrency 1", "predict", 1, 1),
    ("3. gRPC Predict, concurrency 16", "predict", 16, 1),
    ("3. gRPC Predict, concurrency 64", "predict", 64, 1),
    ("4. gRPC PredictBatch of 64, concurrency 4", "batch", 4, 64),
    ("4. gRPC PredictBatch of 256, concurrency 4", "batch", 4, 256),
    ("5. no-op health Check, concurrency 64", "health", 64, 1),
    ("5. no-op GetModel, concurrency 64", "getmodel", 64, 1),
]


def row(name: str, items: int, seconds: float, latencies_s: list[float], **extra: Any) -> dict[str, Any]:
    """One table line: throughput and latency percentiles of `latencies_s` (one per call)."""
    return {
        "name": name,
        "tweets_per_s": round(items / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(latencies_s, 0.5) * 1000, 3),
        "p99_ms": round(percentile(latencies_s, 0.99) * 1000, 3),
        "calls": len(latencies_s),
        **extra,
    }


def warm_worker() -> int:
    """Import what a load generator needs, so a process spawning late costs no measured time."""
    import grpc  # noqa: F401
    from grpc_health.v1 import health_pb2_grpc  # noqa: F401

    from protos import predict_pb2_grpc  # noqa: F401

    return os.getpid()


def load_worker(
    port: int, kind: str, concurrency: int, batch: int, start_at: float, seconds: float, texts: list[str]
) -> tuple[int, list[float], int, bool]:
    """In a spawned process: `concurrency` loops on one channel from `start_at` for `seconds`.

    Returns (items done, latencies, errors, whether this process started after the window opened).
    """
    return asyncio.run(_load(port, kind, concurrency, batch, start_at, seconds, texts))


def _caller(channel: Any, kind: str, batch: int, texts: list[str]) -> Callable[[int], Awaitable[int]]:
    """The i-th call of a line's kind (predict, batch, health, getmodel); it returns the texts it scored."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos import predict_pb2, predict_pb2_grpc

    stub = predict_pb2_grpc.PredictServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    batches = [texts[i : i + batch] for i in range(0, len(texts) - batch, batch)] if batch > 1 else []

    async def call(i: int) -> int:
        if kind == "predict":
            await stub.Predict(predict_pb2.PredictRequest(text=texts[i % len(texts)]), timeout=30)
            return 1
        if kind == "batch":
            chunk = batches[i % len(batches)]
            await stub.PredictBatch(predict_pb2.PredictBatchRequest(texts=chunk), timeout=30)
            return len(chunk)
        if kind == "health":
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            return 1
        await stub.GetModel(predict_pb2.GetModelRequest(), timeout=30)
        return 1

    return call


async def _load(
    port: int, kind: str, concurrency: int, batch: int, start_at: float, seconds: float, texts: list[str]
) -> tuple[int, list[float], int, bool]:
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = _caller(channel, kind, batch, texts)
    latencies: list[float] = []
    items = errors = 0
    end_at = start_at + seconds
    late = time.time() > start_at

    async def loop(worker: int) -> None:
        nonlocal items, errors
        i = worker * 7919
        while time.time() < start_at:  # warm the connection until every process starts together
            await call(i)
            i += 1
        while True:
            t0 = time.perf_counter()
            try:
                n = await call(i)
            except grpc.aio.AioRpcError:
                errors += 1
                n = 0
            if time.time() > end_at:
                return
            latencies.append(time.perf_counter() - t0)
            items += n
            i += 1

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    await channel.close()
    return items, latencies, errors, late


def grpc_line(
    pool: ProcessPoolExecutor,
    port: int,
    batch_stats: Callable[[], tuple[float, float, float]],
    line: tuple[str, str, int, int],
    seconds: float,
    texts: list[str],
    procs: int,
) -> dict[str, Any]:
    """One line (name, kind, concurrency, batch) against the server on `port`; `batch_stats` reads its
    (texts, batches, inference seconds) counters, so the line also reports the mean batch and how busy
    inference was."""
    name, kind, concurrency, batch = line
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start_at = time.time() + START_DELAY_S
    before = batch_stats()
    futures = [
        pool.submit(load_worker, port, kind, share, batch, start_at, seconds, texts) for share in shares
    ]
    results = [f.result() for f in futures]
    after = batch_stats()
    items = sum(r[0] for r in results)
    latencies = [x for r in results for x in r[1]]
    errors = sum(r[2] for r in results)
    if any(r[3] for r in results):
        print(f"  warning: a load process started after the window opened; {name} reads low", flush=True)
    texts_done, batches, infer_s = (a - b for a, b in zip(after, before, strict=True))
    extra: dict[str, Any] = {"errors": errors}
    if batches:
        extra["mean_batch"] = round(texts_done / batches, 1)
        extra["inference_busy"] = round(infer_s / seconds, 2)
    return row(name, items, seconds, latencies, **extra)


class Server:
    """`python -m model_svc` in its own process, with metrics on a free port to read batch statistics."""

    def __init__(self, store: Path, log_path: Path) -> None:
        self.metrics_port = free_port()
        self.program = start_model_svc(store, log_path, METRICS_PORT=str(self.metrics_port))

    @property
    def port(self) -> int:
        return self.program.port

    async def wait_serving(self) -> float:
        """Seconds from the process start to SERVING."""
        return await self.program.wait_serving("sentiment.v1.PredictService", timeout_s=180)

    def memory_mib(self) -> dict[str, float]:
        return memory_mib(self.program.pid)

    def batch_stats(self) -> tuple[float, float, float]:
        """(texts, batches, inference seconds) so far, from the metrics endpoint."""
        page = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )

        def value(name: str) -> float:
            match = re.search(rf"^{name} ([0-9.e+-]+)$", page, re.MULTILINE)
            return float(match.group(1)) if match else 0.0

        return (
            value("model_svc_batch_texts_sum"),
            value("model_svc_batch_texts_count"),
            value("model_svc_batch_seconds_sum"),
        )

    def stop(self) -> int:
        return self.program.stop(grace_s=60)


def bench_store(bundle_dir: Path) -> Path:
    """A fresh local store whose CURRENT version is the bundle (as `bench`)."""
    store = Path(tempfile.mkdtemp(prefix="bench-predict-")) / "store"
    shutil.copytree(bundle_dir, store / "models" / "bench")
    (store / "models" / "CURRENT").write_text("bench")
    return store


async def grpc_lines(server: Server, texts: list[str], seconds: float, procs: int) -> list[dict[str, Any]]:
    """Every GRPC_LINES line, from a pool of `procs` spawned load processes (warmed before the first)."""
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=procs, mp_context=context) as pool:
        for future in [pool.submit(warm_worker) for _ in range(procs)]:
            future.result()
        for line in GRPC_LINES:
            rows.append(
                await asyncio.to_thread(
                    grpc_line, pool, server.port, server.batch_stats, line, seconds, texts, procs
                )
            )
            print(f"  {line[0]}: {rows[-1]['tweets_per_s']:.0f}/s", flush=True)
    return rows


async def serve_lines(bundle_dir: Path, texts: list[str], seconds: float, procs: int) -> dict[str, Any]:
    store = bench_store(bundle_dir)
    server = Server(store, store.parent / "model_svc.log")
    try:
        start_to_serving = await server.wait_serving()
        memory_idle = server.memory_mib()
        rows = await grpc_lines(server, texts, seconds, procs)
        memory_loaded = server.memory_mib()
    finally:
        exit_code = server.stop()
    return {
        "rows": rows,
        "start_to_serving_s": round(start_to_serving, 2),
        "memory_after_load_mib": memory_idle,
        "memory_after_benchmark_mib": memory_loaded,
        "sigterm_exit_code": exit_code,
    }
