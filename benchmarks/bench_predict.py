"""Predict benchmark: model_svc beside MLServer 1.7.1 on the same bundle and tweets, and on 1 and 2 cores.

One run, everything but the server held fixed: the default model trained on
../shared/data/sentiment140_sample.csv.gz (trained once, ~5 min, cached under var/bench/predict/; or
`--bundle DIR`), the same 20,000 real tweet texts, the same load generator (spawned processes, no
TensorFlow, their own connections), and MLServer serving that bundle through a runtime that calls
model_svc's own `LoadedModel.predict_texts` (benchmarks/mlserver_runtime.py), adaptive batching off and on.

Servers on one core run on CPU 0 with the load generator on CPU 1; on two cores they have both, and the load
generator shares them (this machine has two). Every server and line is measured once per pass, passes
interleaved (the servers' order rotates), and each figure is the median of the passes; the spread is printed.
In-process lines run in a process of their own on CPU 0. At the end every server's scores for the same
texts are compared with the in-process ones, and the scaling lines are sent again to the model_svc configs
by h2load (`predict_h2load`: a C load generator that needs a few percent of a core, so a server on two
cores keeps them), and to two one-core servers side by side (CPU 0 and CPU 1, half the connections each):
what this machine gives two cores when each process gets exactly half the callers. Writes
benchmarks/results/predict.json.

`python -m benchmarks.bench_predict [--bundle DIR] [--duration 4] [--passes 3] [--h2load-passes 5]`
(= `make bench-predict`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import predict_h2load, predict_local, predict_report
from benchmarks.common import RESULTS_DIR, ROOT, machine, train_bundle, utc_now, write_results
from benchmarks.peers import MLServerPeer, ModelSvcPeer, tree_memory_mib
from benchmarks.predict_grpc import LINES, grpc_line, served_scores, warm_worker

DATASET = ROOT.parent / "shared" / "data" / "sentiment140_sample.csv.gz"
CACHE = ROOT / "var" / "bench" / "predict"
RESULTS = RESULTS_DIR / "predict.json"
ONE, OTHER, BOTH = {0}, {1}, {0, 1}
IN_PROCESS_BATCHES = [1, 4, 16, 64, 128, 256, 512, 1024]
# The PredictBatch lines' (texts a call, callers) run on the server's path without gRPC, in process.
INFERENCE_LINES = [(64, 4), (256, 4)]
SCALING_LINES = ["Predict c=64", "PredictBatch 64 c=4", "PredictBatch 256 c=4", "no-op c=64"]
CHECK_TEXTS = 512
# MLServer's adaptive batching: up to 64 requests (c=64 unary; 4 x 256 texts at c=4) or 2 ms, as
# model_svc's own INFERENCE_BATCH_MAX_WAIT_S... was before this benchmark; 10 ms is the other setting tried.
ADAPTIVE = {"max_batch_size": 64, "max_batch_time": 0.002}
ADAPTIVE_10MS = {"max_batch_size": 64, "max_batch_time": 0.01}
ONE_CORE_ENV = {"WORKERS": "1", "TF_INTRA_OP_THREADS": "1", "TF_INTER_OP_THREADS": "1"}


@dataclass
class Config:
    """One server setting: how to start it, the CPUs it and the load generator get, the lines it runs."""

    name: str
    start: Callable[[], Any]
    cores: int
    load_cpus: set[int]
    lines: list[str]
    mlserver: bool = False


def configs(store: Path, bundle: Path) -> list[Config]:
    everything = [line[0] for line in LINES]

    def svc(name: str, cpus: set[int], env: dict[str, str]) -> Callable[[], Any]:
        return lambda: ModelSvcPeer(name, store, cpus, env)

    def mls(name: str, cpus: set[int], adaptive: dict[str, float] | None, workers: int) -> Callable[[], Any]:
        return lambda: MLServerPeer(name, bundle, cpus, adaptive, workers)

    return [
        Config("model_svc", svc("model_svc", ONE, ONE_CORE_ENV), 1, OTHER, everything),
        Config("MLServer", mls("MLServer", ONE, None, 1), 1, OTHER, everything, True),
        Config("MLServer adaptive 2ms", mls("MLServer a2", ONE, ADAPTIVE, 1), 1, OTHER, everything, True),
        Config(
            "MLServer adaptive 10ms", mls("MLServer a10", ONE, ADAPTIVE_10MS, 1), 1, OTHER, everything, True
        ),
        # Only for h2load's pair of one-core servers (predict_report.PAIR): no line of its own.
        Config("model_svc, CPU 1", svc("model_svc cpu1", OTHER, ONE_CORE_ENV), 1, ONE, []),
        Config(
            "model_svc 2 workers",
            svc("model_svc w2", BOTH, {**ONE_CORE_ENV, "WORKERS": "2"}),
            2,
            BOTH,
            SCALING_LINES,
        ),
        Config(
            "model_svc 1 worker, 2 TF threads",
            svc("model_svc w1t2", BOTH, {**ONE_CORE_ENV, "TF_INTRA_OP_THREADS": "2"}),
            2,
            BOTH,
            SCALING_LINES,
        ),
        Config(
            "MLServer adaptive 2ms, 2 workers",
            mls("MLServer a2 w2", BOTH, ADAPTIVE, 2),
            2,
            BOTH,
            SCALING_LINES,
            True,
        ),
    ]


def ensure_bundle(bundle: Path | None) -> Path:
    """`bundle` if given, else the default model trained on the sample (cached; retrained when the recipe or
    the default parameters changed)."""
    if bundle is not None:
        return bundle
    from train_svc.params import DEFAULT_RECIPE, TrainParams

    cached = CACHE / "default"
    if (cached / "manifest.json").is_file():
        manifest = json.loads((cached / "manifest.json").read_text())
        wanted = (DEFAULT_RECIPE.to_dict(), TrainParams().to_dict())
        if (manifest.get("recipe"), manifest.get("params")) == wanted:
            return cached
        print("the cached benchmark bundle predates the default recipe: retraining", flush=True)
        shutil.rmtree(cached)
    if not DATASET.is_file():
        raise SystemExit(f"{DATASET} is missing: pass --bundle DIR")
    print(f"training the default model on {DATASET.name} (~5 min, cached in {cached}) ...", flush=True)
    tmp = CACHE / "default.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    train_bundle(DATASET, tmp, {})
    tmp.rename(cached)
    return cached


def read_texts(n: int) -> list[str]:
    from sentiment.dataset import load_sample

    texts, _ = load_sample(DATASET, max_rows=n, seed=1)
    return [t for t in texts if t.strip()]


def bench_store(bundle_dir: Path) -> Path:
    """A fresh local store whose CURRENT version is the bundle (as `bench`)."""
    import tempfile

    store = Path(tempfile.mkdtemp(prefix="bench-predict-")) / "store"
    shutil.copytree(bundle_dir, store / "models" / "bench")
    (store / "models" / "CURRENT").write_text("bench")
    return store


async def start_all(plan: list[Config]) -> dict[str, Any]:
    peers: dict[str, Any] = {}
    for config in plan:
        peers[config.name] = config.start()
    for name, peer in peers.items():
        seconds = await peer.wait_ready()
        print(f"  {name}: ready in {seconds:.1f}s", flush=True)
    return peers


async def one_pass(
    index: int,
    plan: list[Config],
    peers: dict[str, Any],
    pool: ProcessPoolExecutor,
    texts: list[str],
    args: Any,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every line once on every config that runs it: line by line, so the figures a ratio compares are
    measured back to back, in an order of configs rotated by `index`."""
    out: dict[str, dict[str, dict[str, Any]]] = {config.name: {} for config in plan}
    order = plan[index % len(plan) :] + plan[: index % len(plan)]
    for line in LINES:
        for config in (c for c in order if line[0] in c.lines):
            result = await asyncio.to_thread(
                grpc_line,
                pool,
                peers[config.name],
                line,
                args.duration,
                texts,
                args.load_procs,
                config.load_cpus,
            )
            out[config.name][line[0]] = result
            print(
                f"  pass {index + 1} {line[0]:22} {config.name:34} {result['tweets_per_s']:>9.0f}/s "
                f"p50 {result['p50_ms']:7.2f} ms  batch {result.get('mean_batch', '-')}",
                flush=True,
            )
    return out


async def check_scores(
    plan: list[Config], peers: dict[str, Any], local: ProcessPoolExecutor, texts: list[str]
) -> dict[str, float]:
    """max |served - in-process| over the same texts, for every server."""
    reference = local.submit(predict_local.scores, texts).result()
    out = {}
    for config in plan:
        served = await served_scores(peers[config.name].target, texts)
        assert len(served) == len(reference), f"{config.name}: {len(served)} scores for {len(texts)} texts"
        out[config.name] = max(abs(a - b) for a, b in zip(served, reference, strict=True))
    return out


def median_rows(passes: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per config and line: the median of each figure over the passes, and the throughput's spread."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for config, lines in passes[0].items():
        out[config] = {}
        for line in lines:
            runs = [p[config][line] for p in passes]
            merged = {
                k: statistics.median(r[k] for r in runs)
                for k, v in runs[0].items()
                if isinstance(v, int | float)
            }
            rates = [r["tweets_per_s"] for r in runs]
            merged["spread"] = round((max(rates) - min(rates)) / max(statistics.median(rates), 1e-9), 3)
            out[config][line] = {"name": line, **merged}
    return out


# What h2load measures: a config's servers (the line shared evenly among them) and the CPUs h2load gets.
# Two one-core servers side by side (predict_report.PAIR) are what two one-core pods serve: what this
# machine gives two cores when each process gets exactly half the callers.
H2LOAD_CONFIGS = {
    "model_svc": (["model_svc"], "1"),
    "model_svc 2 workers": (["model_svc 2 workers"], "0,1"),
    predict_report.PAIR: (["model_svc", "model_svc, CPU 1"], "0,1"),
}


def h2load_scaling(peers: dict[str, Any], texts: list[str], seconds: float, passes: int) -> dict[str, Any]:
    """The scaling lines sent by h2load to the model_svc configs, interleaved in `passes` passes (the pair
    of one-core servers only on the lines of several connections)."""
    predict_h2load.ensure_h2load()
    runs: list[dict[str, dict[str, dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory() as folder:
        bodies = predict_h2load.write_bodies(texts, Path(folder))
        for index in range(passes):
            runs.append({config: {} for config in H2LOAD_CONFIGS})
            for line, _, _, conns, _ in predict_h2load.LINES:
                for config, (names, cpus) in H2LOAD_CONFIGS.items():
                    if conns % len(names):  # the pair skips the lines of one connection
                        continue
                    servers = [peers[name] for name in names]
                    row = predict_h2load.line_row(servers, line, bodies[line], seconds, cpus)
                    runs[-1][config][line] = row
                    print(
                        f"  h2load pass {index + 1} {line:22} {config:34} {row['tweets_per_s']:>8.0f}/s"
                        f"  mean {row['mean_ms']:7.2f} ms  h2load {row['load_generator_cores']:.2f} cores"
                        f"  connections {row['connections']} texts {row['busiest_worker_texts']:.2f}",
                        flush=True,
                    )
    return {
        "rows": median_rows(runs),
        "passes": runs,
        "load_cpus": {c: cpus for c, (_, cpus) in H2LOAD_CONFIGS.items()},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle = ensure_bundle(args.bundle)
    texts = read_texts(args.texts)
    print(f"{len(texts)} tweets from {DATASET.name}; bundle {bundle}", flush=True)
    store = bench_store(bundle)
    plan = configs(store, bundle)
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(max_workers=1, mp_context=context) as local,
        ProcessPoolExecutor(max_workers=args.load_procs, mp_context=context) as pool,
    ):
        fused = local.submit(predict_local.init, bundle, ONE).result()
        for future in [pool.submit(warm_worker) for _ in range(args.load_procs)]:
            future.result()
        peers = await start_all(plan)
        memory = {name: tree_memory_mib(peer.pids()) for name, peer in peers.items()}
        try:
            passes, local_passes = [], []
            naive = local.submit(predict_local.naive_row, texts, args.duration).result()
            for index in range(args.passes):
                rows = local.submit(
                    predict_local.batch_rows, texts, args.duration / 2, IN_PROCESS_BATCHES
                ).result()
                rows += local.submit(
                    predict_local.inference_rows, texts, args.duration / 2, INFERENCE_LINES
                ).result()
                local_passes.append({r["name"]: r for r in rows})
                passes.append(await one_pass(index, plan, peers, pool, texts, args))
            diffs = await check_scores(plan, peers, local, texts[:CHECK_TEXTS])
            try:
                scaling = await asyncio.to_thread(
                    h2load_scaling, peers, texts, args.duration * 1.5, args.h2load_passes
                )
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:  # the rest still counts
                print(f"h2load scaling lines failed: {exc}", flush=True)
                scaling = {}
        finally:
            exits = {name: peer.stop() for name, peer in peers.items()}
    in_process = median_rows([{"in-process": p} for p in local_passes])["in-process"]
    return {
        "rows": median_rows(passes),
        "passes": passes,
        "in_process": {"model.predict per tweet": naive, **in_process},
        "in_process_passes": local_passes,
        "fused_graph": fused,
        "score_max_abs_diff": diffs,
        "scaling_h2load": scaling,
        "memory_rss_mib": memory,
        "sigterm_exit_codes": exits,
        "cores": {c.name: c.cores for c in plan},
        "mlserver": [c.name for c in plan if c.mlserver],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: the default model, cached)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per line and pass")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes (figures are medians)")
    parser.add_argument(
        "--h2load-passes", type=int, default=5, help="passes of the h2load lines (each splits anew)"
    )
    parser.add_argument("--texts", type=int, default=20000, help="real tweets to send")
    parser.add_argument("--load-procs", type=int, default=2, help="load generator processes")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    measured = asyncio.run(run(args))
    result = {
        "when": utc_now(),
        "machine": machine("cpus", "python", "platform"),
        "duration_s_per_line": args.duration,
        "passes": args.passes,
        **measured,
    }
    result["goals"] = predict_report.goals(result)
    result["vs_no_grpc"] = predict_report.vs_no_grpc(result)
    result["xla_vs_graph"] = predict_report.xla_vs_graph(result)
    result["h2load_even_split"] = predict_report.h2load_even_split_ratios(result)
    result["h2load_pair"] = predict_report.h2load_pair_ratios(result)
    result["total_s"] = round(time.monotonic() - started, 1)
    write_results(RESULTS, result)
    predict_report.print_report(result)
    print(f"wrote {RESULTS} in {result['total_s']} s")


if __name__ == "__main__":
    main()
