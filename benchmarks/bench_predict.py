"""Predict benchmark: what model_svc serves against the model's own in-process speed and the RPC ceiling.

One run, one bundle trained on ../shared/data/sentiment140_sample.csv.gz (modest params, cached under
var/bench/predict/; or `--bundle DIR`), real tweet texts from that file:

1. naive in-process Keras `model.predict` per tweet (what the original REST API did);
2. in-process compiled tf.function (the server's own path: tokenize, group by length, score) at batch
   1, 64 and 512;
3. gRPC Predict from async clients at concurrency 1, 16, 64;
4. gRPC PredictBatch of 64 and 256 texts at concurrency 4;
5. a no-op RPC on the same server (health Check; GetModel through the PredictService servicer) at
   concurrency 64.

The server is `python -m model_svc` in its own process and the load generators run in their own
processes (spawned, no TensorFlow in them). Prints a table and the target ratios and writes
benchmarks/results/predict.json. `python -m benchmarks.bench_predict [--bundle DIR] [--duration 4]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "data" / "sentiment140_sample.csv.gz"
CACHE = ROOT / "var" / "bench" / "predict"
RESULTS = Path(__file__).resolve().parent / "results" / "predict.json"

# Modest: trains in about a minute on two cores, a realistic size for serving figures.
TRAIN_SCRIPT = """
import sys
from pathlib import Path
from train_svc.params import TrainParams
from train_svc.trainer import train
params = TrainParams(max_rows=40000, epochs=2, batch_size=512, sequence_length=40, embedding_dim=100,
                     w2v_epochs=3, w2v_min_count=3, lstm_units=64)
train(Path(sys.argv[1]), params, Path(sys.argv[2]), progress=lambda event: None)
"""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, items: int, seconds: float, latencies_s: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tweets_per_s": round(items / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(latencies_s, 0.5) * 1000, 3),
        "p99_ms": round(percentile(latencies_s, 0.99) * 1000, 3),
        "calls": len(latencies_s),
        **extra,
    }


def ensure_bundle(bundle: Path | None) -> Path:
    if bundle is not None:
        return bundle
    from train_svc.params import DEFAULT_RECIPE

    cached = CACHE / "bundle"
    if (cached / "manifest.json").is_file():
        manifest = json.loads((cached / "manifest.json").read_text())
        if manifest.get("recipe") == DEFAULT_RECIPE.to_dict():
            return cached
        print("the cached benchmark bundle predates the current recipe: retraining", flush=True)
        shutil.rmtree(cached)
    if not DATASET.is_file():
        raise SystemExit(f"{DATASET} is missing: pass --bundle DIR")
    print(f"training a benchmark bundle on {DATASET.name} (cached in {cached}) ...", flush=True)
    started = time.monotonic()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    tmp = CACHE / "bundle.tmp"
    subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(DATASET), str(tmp)], check=True, cwd=ROOT, env=env
    )
    tmp.rename(cached)
    print(f"  trained in {time.monotonic() - started:.0f}s", flush=True)
    return cached


def read_texts(n: int) -> list[str]:
    from sentiment.dataset import load_sample

    texts, _ = load_sample(DATASET, max_rows=n, seed=1)
    return [t for t in texts if t.strip()]


# --- 1 and 2: in process ---------------------------------------------------------------------------


def in_process(bundle_dir: Path, texts: list[str], seconds: float) -> list[dict[str, Any]]:
    from model_svc.model import LoadedModel
    from sentiment.bundle import read_local_bundle
    from sentiment.text import encode, tokenize

    model = LoadedModel(read_local_bundle(bundle_dir, "bench"))
    model.warm()
    preprocessing = model.bundle.preprocessing
    rows = []

    latencies = []
    started = time.perf_counter()
    naive_n = 0
    while time.perf_counter() - started < seconds and naive_n < 200:
        text = texts[naive_n % len(texts)]
        t0 = time.perf_counter()
        ids = encode(
            [tokenize(text, preprocessing.text)], model.bundle.vocabulary, preprocessing.sequence_length
        )
        model.keras_model.predict(ids, verbose=0)
        latencies.append(time.perf_counter() - t0)
        naive_n += 1
    rows.append(
        row("1. in-process model.predict per tweet", naive_n, time.perf_counter() - started, latencies)
    )

    for batch in (1, 64, 512):
        latencies, done, offset = [], 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            chunk = texts[offset : offset + batch]
            offset = (offset + batch) % (len(texts) - batch)
            t0 = time.perf_counter()
            model.predict_texts(chunk)
            latencies.append(time.perf_counter() - t0)
            done += len(chunk)
        rows.append(
            row(f"2. in-process tf.function, batch {batch}", done, time.perf_counter() - started, latencies)
        )
    return rows


# --- 3, 4, 5: gRPC load from other processes ---------------------------------------------------------


def warm_worker() -> int:
    """Import what a load generator needs, so a process spawning late costs no measured time."""
    import grpc  # noqa: F401
    from grpc_health.v1 import health_pb2_grpc  # noqa: F401

    from protos import predict_pb2_grpc  # noqa: F401

    return os.getpid()


def load_worker(
    port: int, kind: str, concurrency: int, batch: int, start_at: float, seconds: float, texts: list[str]
) -> tuple[int, list[float], int, bool]:
    """In a spawned process: `concurrency` loops on one channel from `start_at` for `seconds`."""
    return asyncio.run(_load(port, kind, concurrency, batch, start_at, seconds, texts))


async def _load(
    port: int, kind: str, concurrency: int, batch: int, start_at: float, seconds: float, texts: list[str]
) -> tuple[int, list[float], int, bool]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos import predict_pb2, predict_pb2_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
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


class Server:
    """`python -m model_svc` in its own process, with metrics on a free port to read batch statistics."""

    def __init__(self, store: Path, log_path: Path) -> None:
        from scripts.local_aws import free_port

        self.port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "STORE_URI": str(store),
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": "WARNING",
        }
        self.started = time.monotonic()
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "model_svc"], env=env, cwd=ROOT, stdout=self.log, stderr=self.log
        )

    async def wait_serving(self) -> float:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="sentiment.v1.PredictService"),
                wait_for_ready=True,
                timeout=180,
            )
            async for reply in watch:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    break
        return time.monotonic() - self.started

    def memory_mib(self) -> dict[str, float]:
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
        return {"rss_mib": out.get("VmRSS", 0.0), "peak_rss_mib": out.get("VmHWM", 0.0)}

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
        self.proc.terminate()
        code = self.proc.wait(60)
        self.log.close()
        return code


def grpc_line(
    pool: ProcessPoolExecutor,
    server: Server,
    name: str,
    kind: str,
    concurrency: int,
    batch: int,
    seconds: float,
    texts: list[str],
    procs: int,
) -> dict[str, Any]:
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start_at = time.time() + 1.5  # time for spawned processes to connect and warm up
    before = server.batch_stats()
    futures = [
        pool.submit(load_worker, server.port, kind, share, batch, start_at, seconds, texts)
        for share in shares
    ]
    results = [f.result() for f in futures]
    after = server.batch_stats()
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


async def serve_lines(bundle_dir: Path, texts: list[str], seconds: float, procs: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    store = work / "store"
    shutil.copytree(bundle_dir, store / "models" / "bench")
    (store / "models" / "CURRENT").write_text("bench")
    server = Server(store, work / "model_svc.log")
    rows: list[dict[str, Any]] = []
    try:
        start_to_serving = await server.wait_serving()
        memory_idle = server.memory_mib()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=procs, mp_context=context) as pool:
            for future in [pool.submit(warm_worker) for _ in range(procs)]:
                future.result()
            lines = [
                ("3. gRPC Predict, concurrency 1", "predict", 1, 1),
                ("3. gRPC Predict, concurrency 16", "predict", 16, 1),
                ("3. gRPC Predict, concurrency 64", "predict", 64, 1),
                ("4. gRPC PredictBatch of 64, concurrency 4", "batch", 4, 64),
                ("4. gRPC PredictBatch of 256, concurrency 4", "batch", 4, 256),
                ("5. no-op health Check, concurrency 64", "health", 64, 1),
                ("5. no-op GetModel, concurrency 64", "getmodel", 64, 1),
            ]
            for name, kind, concurrency, batch in lines:
                rows.append(
                    await asyncio.to_thread(
                        grpc_line, pool, server, name, kind, concurrency, batch, seconds, texts, procs
                    )
                )
                print(f"  {name}: {rows[-1]['tweets_per_s']:.0f}/s", flush=True)
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


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["name"]: r for r in rows}
    line1 = by["1. in-process model.predict per tweet"]["tweets_per_s"]
    line2_512 = by["2. in-process tf.function, batch 512"]["tweets_per_s"]
    predict64 = by["3. gRPC Predict, concurrency 64"]["tweets_per_s"]
    best_batch = max(by[f"4. gRPC PredictBatch of {n}, concurrency 4"]["tweets_per_s"] for n in (64, 256))
    noop = by["5. no-op health Check, concurrency 64"]["tweets_per_s"]
    p50_c1 = by["3. gRPC Predict, concurrency 1"]["p50_ms"]
    checks = {
        "PredictBatch >= 0.8 x in-process batch 512": (best_batch / line2_512, 0.8),
        "Predict@64 >= 0.5 x no-op@64": (predict64 / noop, 0.5),
        "Predict@64 >= 100 x model.predict per tweet": (predict64 / line1, 100.0),
    }
    out: dict[str, Any] = {
        name: {"ratio": round(value, 2), "target": target, "met": value >= target}
        for name, (value, target) in checks.items()
    }
    out["Predict p50 @ concurrency 1 <= 5 ms"] = {"ms": p50_c1, "target": 5.0, "met": p50_c1 <= 5.0}
    return out


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"{'line':48} {'tweets/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'busy':>5}")
    for r in result["rows"]:
        print(
            f"{r['name']:48} {r['tweets_per_s']:>10.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r.get('mean_batch', ''):>6} {r.get('inference_busy', ''):>5}"
        )
    print()
    for name, check in result["ratios"].items():
        value = f"{check['ratio']}x" if "ratio" in check else f"{check['ms']} ms"
        print(f"{'MET ' if check['met'] else 'MISS'} {name}: {value}")
    print(
        f"process start -> SERVING {result['start_to_serving_s']} s; server RSS after load "
        f"{result['memory_after_load_mib']['rss_mib']} MiB, after the run "
        f"{result['memory_after_benchmark_mib']['rss_mib']} MiB (peak "
        f"{result['memory_after_benchmark_mib']['peak_rss_mib']} MiB); SIGTERM exit {result['sigterm_exit_code']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: train one, cached)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per line")
    parser.add_argument("--texts", type=int, default=4000, help="real tweets to send")
    parser.add_argument("--load-procs", type=int, default=2, help="load generator processes")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bundle_dir = ensure_bundle(args.bundle)
    texts = read_texts(args.texts)
    print(f"{len(texts)} tweets from {DATASET.name}; bundle {bundle_dir}", flush=True)
    served = asyncio.run(serve_lines(bundle_dir, texts, args.duration, args.load_procs))
    rows = in_process(bundle_dir, texts, args.duration) + served.pop("rows")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "bundle": {
            "path": str(bundle_dir),
            "params": manifest.get("params"),
            "accuracy": (manifest.get("metrics") or {}).get("accuracy"),
        },
        "duration_s_per_line": args.duration,
        "load_processes": args.load_procs,
        "rows": rows,
        **served,
    }
    result["ratios"] = ratios(rows)
    result["total_s"] = round(time.monotonic() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"wrote {RESULTS} in {result['total_s']} s")


if __name__ == "__main__":
    main()
