"""bench_predict's ratios and tables: the issue's goals, each as a ratio within the run, and the printed report."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from typing import Any

SVC, SVC_2W, SVC_1W2T = "model_svc", "model_svc 2 workers", "model_svc 1 worker, 2 TF threads"
PAIR = "2 x model_svc, 1 core each"  # two one-core servers side by side, h2load's callers split evenly
BATCH_LINES = ["PredictBatch 64 c=4", "PredictBatch 256 c=4"]


def in_process_batches(
    in_process: dict[str, dict[str, Any]], prefix: str = "in-process batch"
) -> dict[int, Any]:
    """The in-process rows named `<prefix> <batch>`, by batch size."""
    return {int(name.rsplit(" ", 1)[1]): r for name, r in in_process.items() if name.startswith(prefix)}


def in_process_at(in_process: dict[str, dict[str, Any]], batch: float) -> float:
    """In-process texts/s at `batch` texts a call, interpolated between the measured sizes (log scale)."""
    points = sorted((b, r["tweets_per_s"]) for b, r in in_process_batches(in_process).items())
    batch = min(max(batch, points[0][0]), points[-1][0])
    for (b0, t0), (b1, t1) in itertools.pairwise(points):
        if b0 <= batch <= b1:
            w = (math.log(batch) - math.log(b0)) / (math.log(b1) - math.log(b0)) if b1 > b0 else 0.0
            return float(t0 + w * (t1 - t0))
    return float(points[-1][1])


def best_mlserver(rows: dict[str, Any], result: dict[str, Any], line: str, cores: int) -> tuple[str, float]:
    """The MLServer config with the most texts/s on `line` among those on `cores` cores, in `rows`."""
    found = [
        (rows[name][line]["tweets_per_s"], name)
        for name in result["mlserver"]
        if result["cores"][name] == cores and line in rows[name]
    ]
    rate, name = max(found)
    return name, rate


def paired(result: dict[str, Any], ratio: Callable[[dict[str, Any], dict[str, Any]], float]) -> float:
    """The median over the passes of `ratio(pass rows, pass in-process rows)`: both sides of each ratio
    measured in the same pass, back to back, so slow drifts in the machine's load cancel."""
    pairs = zip(result["passes"], result["in_process_passes"], strict=True)
    return float(statistics.median(ratio(rows, local) for rows, local in pairs))


def _goal(goal: str, value: float, target: float, higher: bool = True, detail: str = "") -> dict[str, Any]:
    met = value >= target if higher else value <= target
    return {"goal": goal, "value": round(value, 3), "target": target, "met": met, "detail": detail}


def _rate(rows: dict[str, Any], config: str, line: str) -> float:
    return float(rows[config][line]["tweets_per_s"])


Ratio = Callable[[dict[str, Any], dict[str, Any]], float]


def _vs_mlserver(result: dict[str, Any], line: str) -> Ratio:
    return lambda rows, local: _rate(rows, SVC, line) / best_mlserver(rows, result, line, 1)[1]


def _vs_in_process(line: str) -> Ratio:
    return lambda rows, local: (
        _rate(rows, SVC, line) / in_process_at(local, rows[SVC][line].get("mean_batch", 1))
    )


def _vs(config: str, line: str, other: str, other_line: str) -> Ratio:
    return lambda rows, local: _rate(rows, config, line) / _rate(rows, other, other_line)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each a ratio within the run (paired per pass, then the median of the passes)."""
    rows, out = result["rows"], []
    svc, c64 = rows[SVC], "Predict c=64"
    for line in BATCH_LINES:
        best = best_mlserver(rows, result, line, 1)[0]
        out.append(
            _goal(f"{line} vs MLServer's best", paired(result, _vs_mlserver(result, line)), 1.15, detail=best)
        )
        detail = f"at the batch it ran, {svc[line].get('mean_batch', 1):.0f} texts"
        out.append(_goal(f"{line} vs in-process", paired(result, _vs_in_process(line)), 0.95, detail=detail))
    best = best_mlserver(rows, result, c64, 1)[0]
    out.append(
        _goal(f"{c64} vs MLServer's best", paired(result, _vs_mlserver(result, c64)), 3.0, detail=best)
    )
    out.append(_goal(f"{c64} vs no-op c=64", paired(result, _vs(SVC, c64, SVC, "no-op c=64")), 0.65))
    out.append(_goal("Predict c=1 p50 ms", svc["Predict c=1"]["p50_ms"], 2.0, higher=False))
    naive = result["in_process"]["model.predict per tweet"]["tweets_per_s"]
    for line in ("Predict c=1", "Predict c=16", c64):
        out.append(_goal(f"{line} vs model.predict per tweet", svc[line]["tweets_per_s"] / naive, 100.0))
    for line in (c64, *BATCH_LINES):
        out.append(
            _goal(f"{line}: 2 cores vs 1", paired(result, _vs(SVC_2W, line, SVC, line)), 1.8, detail=SVC_2W)
        )
    pair = h2load_pair_ratios(result)
    for line, ratio in h2load_scaling_ratios(result).items():
        if "1 connection" not in line:  # shown, not a goal: one connection reaches one worker
            detail = SVC_2W
            if line in pair:
                detail += f"; two one-core servers side by side: {pair[line][0]:.2f}x"
            out.append(_goal(f"{line}: 2 cores vs 1, sent by h2load", ratio, 1.8, detail=detail))
    out.append(_goal(f"{c64} p99 / p50", svc[c64]["p99_ms"] / svc[c64]["p50_ms"], 2.0, higher=False))
    for name, diff in result["score_max_abs_diff"].items():
        out.append(_goal(f"{name}: max |score - in-process|", diff, 1e-5, higher=False))
    return out


def _vs_no_grpc(line: str) -> Ratio:
    name = f"in-process Inference, {line}"
    return lambda rows, local: _rate(rows, SVC, line) / float(local[name]["tweets_per_s"])


def vs_no_grpc(result: dict[str, Any]) -> dict[str, float]:
    """model_svc's PredictBatch lines over the same path without gRPC in process (paired per pass): what
    the gRPC layer leaves of what the batcher and the model can do."""
    return {
        line: round(paired(result, _vs_no_grpc(line)), 3)
        for line in BATCH_LINES
        if all(f"in-process Inference, {line}" in local for local in result["in_process_passes"])
    }


def xla_vs_graph(result: dict[str, Any]) -> dict[int, float]:
    """In process, per batch size: `predict_texts` as served (XLA programs, a large group in chunks) over the
    same on the graph alone, the median of the passes' ratios (measured back to back in each pass)."""
    ratios: dict[int, list[float]] = {}
    for local in result["in_process_passes"]:
        graph = in_process_batches(local, "in-process graph only, batch")
        for batch, r in in_process_batches(local).items():
            ratios.setdefault(batch, []).append(r["tweets_per_s"] / graph[batch]["tweets_per_s"])
    return {batch: round(statistics.median(values), 3) for batch, values in sorted(ratios.items())}


def _h2load_passes(result: dict[str, Any]) -> dict[str, list[tuple[float, list[int]]]]:
    """Per line sent by h2load: (`WORKERS=2` on two cores / one worker on one core, the kernel's split of
    the connections) in each pass; empty when the h2load lines did not run."""
    scaling = result.get("scaling_h2load")
    if not scaling:
        return {}
    return {
        line: [
            (p[SVC_2W][line]["tweets_per_s"] / p[SVC][line]["tweets_per_s"], p[SVC_2W][line]["connections"])
            for p in scaling["passes"]
        ]
        for line in scaling["rows"][SVC]
    }


def h2load_scaling_ratios(result: dict[str, Any]) -> dict[str, float]:
    """The median of the per-pass ratios, per line sent by h2load."""
    return {
        line: round(statistics.median(ratio for ratio, _ in runs), 3)
        for line, runs in _h2load_passes(result).items()
    }


def h2load_even_split_ratios(result: dict[str, Any]) -> dict[str, tuple[float, int, int]]:
    """Per line of several connections: the median ratio over the passes where the kernel split h2load's
    connections evenly between the two workers, with how many passes did (of how many)."""
    out = {}
    for line, runs in _h2load_passes(result).items():
        even = [ratio for ratio, split in runs if len(split) == 2 and split[0] == split[1]]
        if even:
            out[line] = (round(statistics.median(even), 3), len(even), len(runs))
    return out


def h2load_pair_ratios(result: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per line the pair of one-core servers ran, medians of per-pass ratios: (the pair / one core: what
    this machine gives two cores when each process gets exactly half the callers, no kernel split
    deciding it; `WORKERS=2` / the pair: how near a two-core pod comes to that)."""
    scaling = result.get("scaling_h2load")
    if not scaling or PAIR not in scaling["rows"]:
        return {}
    passes = scaling["passes"]

    def ratio(line: str, top: str, bottom: str) -> float:
        per_pass = (p[top][line]["tweets_per_s"] / p[bottom][line]["tweets_per_s"] for p in passes)
        return round(float(statistics.median(per_pass)), 3)

    return {line: (ratio(line, PAIR, SVC), ratio(line, SVC_2W, PAIR)) for line in scaling["rows"][PAIR]}


def _print_h2load(result: dict[str, Any]) -> None:
    scaling = result.get("scaling_h2load")
    if not scaling:
        return
    rows = scaling["rows"]
    configs = list(rows)
    print("\nScaling, sent by h2load (C, a few % of a core): texts/s (mean ms; h2load's cores), medians")
    print(
        "| line | "
        + " | ".join(configs)
        + " | 2 workers / 1 core | 2 x 1 core / 1 core | 2 workers / 2 x 1 core |"
    )
    print("|---|" + "---|" * (len(configs) + 3))
    ratios, pair = h2load_scaling_ratios(result), h2load_pair_ratios(result)
    for line in rows[SVC]:
        cells = [
            f"{rows[c][line]['tweets_per_s']:,.0f} ({rows[c][line]['mean_ms']:.1f}; "
            f"{rows[c][line]['load_generator_cores']:.2f})"
            if line in rows[c]
            else ""
            for c in configs
        ]
        cells.append(f"{ratios[line]:.2f}x")
        cells += [f"{r:.2f}x" for r in pair[line]] if line in pair else ["", ""]
        print(f"| {line} | " + " | ".join(cells) + " |")
    even = h2load_even_split_ratios(result)
    print(
        f"\n{SVC_2W}, pass by pass: h2load's connections a worker (the kernel's split): the busiest"
        " worker's share of the texts computed (0.50: even)"
    )
    for line in rows[SVC]:
        runs = [p[SVC_2W][line] for p in scaling["passes"]]
        text = ", ".join(
            f"{'+'.join(map(str, r['connections'])) or '?'}: {r['busiest_worker_texts']:.2f}" for r in runs
        )
        ratio = even.get(line)
        tail = f"; passes split evenly ({ratio[1]} of {ratio[2]}): {ratio[0]:.2f}x 1 core" if ratio else ""
        print(f"  {line}: {text}{tail}")


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    return f"{row['tweets_per_s']:,.0f} ({row['p50_ms']:.1f} / {row['p99_ms']:.1f})"


def _table(title: str, columns: list[str], lines: list[str], result: dict[str, Any], ratio: Any) -> None:
    rows = result["rows"]
    print(f"\n{title}: texts/s (p50 / p99 ms), medians of {len(result['passes'])} passes")
    print("| line | " + " | ".join(columns) + " | ratio |")
    print("|---|" + "---|" * (len(columns) + 1))
    for line in lines:
        cells = [_cell(rows[c].get(line)) for c in columns]
        print(f"| {line} | " + " | ".join(cells) + f" | {ratio(line)} |")


def print_report(result: dict[str, Any]) -> None:
    rows = result["rows"]
    one = [n for n in result["mlserver"] if result["cores"][n] == 1]
    lines = list(rows[SVC])

    def vs_mlserver(line: str) -> str:
        _, rate = best_mlserver(rows, result, line, 1)
        return f"{rows[SVC][line]['tweets_per_s'] / rate:.2f}x"

    _table("Peers on 1 core (load generator on the other)", [SVC, *one], lines, result, vs_mlserver)
    two = [n for n in result["mlserver"] if result["cores"][n] == 2]
    scaling = [SVC, SVC_2W, SVC_1W2T, *two]

    def vs_one_core(line: str) -> str:
        return f"{rows[SVC_2W][line]['tweets_per_s'] / rows[SVC][line]['tweets_per_s']:.2f}x"

    _table(
        "Scaling (2 cores shared with the load generator)", scaling, list(rows[SVC_2W]), result, vs_one_core
    )
    print("\nserver CPU used, cores (texts per server CPU-second), same lines:")
    for line in rows[SVC_2W]:
        cells = []
        for c in scaling:
            cores = rows[c][line].get("server_cores", 0.0)
            per_core = rows[c][line]["tweets_per_s"] / cores if cores else 0.0
            cells.append(f"{c}: {cores:.2f} ({per_core:,.0f})")
        print(f"  {line:22} " + "  ".join(cells))
    _print_h2load(result)
    print("\nin process (CPU 0):")
    for name, r in result["in_process"].items():
        print(f"  {name:34} {r['tweets_per_s']:>9,.0f}/s  p50 {r['p50_ms']:.2f} ms")
    print(f"  (fused serving graph: {result['fused_graph']})")
    ratios = ", ".join(f"{batch}: {ratio:.2f}x" for batch, ratio in result.get("xla_vs_graph", {}).items())
    print(f"  as served (XLA programs, a large group in chunks) / the graph alone, by batch: {ratios}")
    for line, ratio in result.get("vs_no_grpc", {}).items():
        print(f"  model_svc {line} / the same path without gRPC: {ratio:.2f}")
    print("\nmean batch the servers ran (model_svc):")
    for config in (SVC, SVC_2W, SVC_1W2T):
        print(
            f"  {config:34} " + ", ".join(f"{k}: {v.get('mean_batch', '-')}" for k, v in rows[config].items())
        )
    print()
    for goal in result["goals"]:
        mark = "MET " if goal["met"] else "MISS"
        detail = f"  ({goal['detail']})" if goal["detail"] else ""
        print(f"{mark} {goal['goal']}: {goal['value']:g} (target {goal['target']:g}){detail}")
    spreads = [r["spread"] for config in rows.values() for r in config.values()]
    print(
        f"\nnoise: the passes' throughput spread (max - min) / median: median {statistics.median(spreads):.1%}, "
        f"worst {max(spreads):.1%}"
    )
    print(f"memory (RSS of each server's processes, MiB): {result['memory_rss_mib']}")
    print(f"SIGTERM exit codes: {result['sigterm_exit_codes']}")
