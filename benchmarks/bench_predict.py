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
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT, machine, train_bundle, utc_now, write_results
from benchmarks.predict_grpc import row, serve_lines

DATASET = ROOT.parent / "shared" / "data" / "sentiment140_sample.csv.gz"
CACHE = ROOT / "var" / "bench" / "predict"
RESULTS = RESULTS_DIR / "predict.json"

# Modest: trains in about a minute on two cores, a realistic size for serving figures.
BENCH_PARAMS = {
    "max_rows": 40000,
    "epochs": 2,
    "batch_size": 512,
    "sequence_length": 40,
    "embedding_dim": 100,
    "w2v_epochs": 3,
    "w2v_min_count": 3,
    "lstm_units": 64,
}


def ensure_bundle(bundle: Path | None) -> Path:
    """`bundle` if given, else the cached bench bundle, (re)trained when missing or older than the recipe."""
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
    tmp = CACHE / "bundle.tmp"
    train_bundle(DATASET, tmp, BENCH_PARAMS)
    tmp.rename(cached)
    print(f"  trained in {time.monotonic() - started:.0f}s", flush=True)
    return cached


def read_texts(n: int) -> list[str]:
    from sentiment.dataset import load_sample

    texts, _ = load_sample(DATASET, max_rows=n, seed=1)
    return [t for t in texts if t.strip()]


# --- 1 and 2: in process ---------------------------------------------------------------------------


def naive_line(model: Any, texts: list[str], seconds: float) -> dict[str, Any]:
    """1: Keras `model.predict` per tweet, as the original REST API did (at most 200 calls)."""
    from sentiment.text import encode, tokenize

    preprocessing = model.bundle.preprocessing
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
    return row("1. in-process model.predict per tweet", naive_n, time.perf_counter() - started, latencies)


def batched_line(model: Any, texts: list[str], seconds: float, batch: int) -> dict[str, Any]:
    """2: the server's own path (tokenize, group by length, compiled tf.function) on batches of `batch`."""
    latencies, done, offset = [], 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = texts[offset : offset + batch]
        offset = (offset + batch) % (len(texts) - batch)
        t0 = time.perf_counter()
        model.predict_texts(chunk)
        latencies.append(time.perf_counter() - t0)
        done += len(chunk)
    return row(f"2. in-process tf.function, batch {batch}", done, time.perf_counter() - started, latencies)


def in_process(bundle_dir: Path, texts: list[str], seconds: float) -> list[dict[str, Any]]:
    from model_svc.model import LoadedModel
    from sentiment.bundle import read_local_bundle

    model = LoadedModel(read_local_bundle(bundle_dir, "bench"))
    model.warm()
    return [
        naive_line(model, texts, seconds),
        *(batched_line(model, texts, seconds, b) for b in (1, 64, 512)),
    ]


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
        "when": utc_now(),
        "machine": machine("cpus", "python", "platform"),
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
    write_results(RESULTS, result)
    print_table(result)
    print(f"wrote {RESULTS} in {result['total_s']} s")


if __name__ == "__main__":
    main()
