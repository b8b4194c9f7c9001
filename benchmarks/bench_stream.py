"""Stream benchmark: what the pipeline achieves against the sink's ceiling and the original per-tweet design.

One run, all local: moto in server mode (DynamoDB), a real model_svc (subprocess) serving a tiny model
trained here on generated tweets (the figures are about the pipeline, not the model), and:

1. sink ceiling: raw concurrent BatchWriteItem of the same items (WRITE_CONCURRENCY requests in flight);
2. the original design: one Predict call and one put_item per tweet, in sequence (on fewer tweets);
3. stream_svc end to end: a replay source of 20,000 tweets -> clean -> PredictBatch -> BatchWriteItem.

(1) and (3) alternate `--rounds` times (default 2) and the best round of each is compared: the machine
is shared, and alternating gives both the same chances. Targets: (3) >= 0.7 x (1) and >= 20 x (2). Prints a table and writes benchmarks/results/stream.json.
`python -m benchmarks.bench_stream [--tweets 20000] [--baseline-tweets 500]`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    machine,
    start_model_svc,
    train_bundle,
    utc_now,
    write_results,
)
from benchmarks.stream_paths import original_design, sink_ceiling, stream_end_to_end, synthetic_items
from scripts.local_aws import LocalAws
from scripts.programs import Program
from sentiment.synthetic import write_sentiment140

RESULTS = RESULTS_DIR / "stream.json"
TINY_PARAMS = {
    "epochs": 4,
    "batch_size": 64,
    "sequence_length": 30,
    "embedding_dim": 32,
    "w2v_epochs": 5,
    "lstm_units": 16,
}


def train_tiny_model(work: Path) -> Path:
    """A store whose CURRENT is a tiny model trained on generated tweets (the figures are about the pipeline)."""
    dataset = write_sentiment140(work / "train.csv.gz", 4000, seed=7)
    store = work / "store"
    train_bundle(dataset, store / "models" / "v1", TINY_PARAMS)
    (store / "models" / "CURRENT").write_text("v1")
    return store


def start_model_server(store: Path, work: Path) -> Program:
    # One inference thread: on a small machine model_svc shares the CPUs with moto and the pipeline,
    # and TensorFlow's spinning pool threads would take CPU time the table needs.
    threads = os.environ.get("BENCH_TF_THREADS", "1")
    return start_model_svc(
        store,
        work / "model_svc.log",
        METRICS_PORT="0",
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_INTRA_OP_THREADS=threads,
        TF_INTER_OP_THREADS=threads,
    )


async def measure(
    model: Program, work: Path, tweets: int, baseline_tweets: int, rounds: int
) -> dict[str, Any]:
    """(2), then (1) and (3) alternating `rounds` times, then (3b) paced at 0.4 x the best (3)."""
    print("(2) original design ...", flush=True)
    original = await original_design(model.port, baseline_tweets)
    # (1) and (3) alternate, `rounds` times, and the best of each counts: on a shared machine
    # other work comes and goes, and alternating gives both the same chances.
    ceilings, streams = [], []
    for round_no in range(1, rounds + 1):
        print(f"(1) sink ceiling, round {round_no} ...", flush=True)
        ceilings.append(await sink_ceiling(synthetic_items(tweets, seed=32)))
        print(f"(3) stream_svc end to end, round {round_no} ...", flush=True)
        streams.append(await stream_end_to_end(model.port, tweets, work, model_pid=model.pid))
    stream = max(streams, key=lambda r: r["tweets_per_s"])
    paced_rate = round(stream["tweets_per_s"] * 0.4, -1)
    print(f"(3b) stream_svc paced at {paced_rate:.0f} tweets/s (latency below saturation) ...", flush=True)
    paced = await stream_end_to_end(
        model.port, max(1000, int(paced_rate * 8)), work, rate=paced_rate, model_pid=model.pid
    )
    return {"original": original, "ceilings": ceilings, "streams": streams, "paced": paced}


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    ceilings, streams, original = measured["ceilings"], measured["streams"], measured["original"]
    ceiling = max(ceilings, key=lambda r: r["tweets_per_s"])
    stream = max(streams, key=lambda r: r["tweets_per_s"])
    return {
        "when": utc_now(),
        "machine": machine("cpus", "python"),
        "sink_ceiling": ceiling,
        "original_design": original,
        "stream_svc": stream,
        "stream_svc_paced": measured["paced"],
        "rounds": {
            "sink_ceiling_tweets_per_s": [r["tweets_per_s"] for r in ceilings],
            "stream_svc_tweets_per_s": [r["tweets_per_s"] for r in streams],
        },
        "stream_vs_ceiling": stream["tweets_per_s"] / ceiling["tweets_per_s"],
        "stream_vs_original": stream["tweets_per_s"] / original["tweets_per_s"],
        "targets": {"stream_vs_ceiling": 0.7, "stream_vs_original": 20},
    }


async def main(tweets: int, baseline_tweets: int, rounds: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp,
        LocalAws(log_path=Path(tmp) / "moto.log") as aws,
    ):
        work = Path(tmp)
        os.environ.update(aws.env)
        print("training a tiny model on generated tweets ...", flush=True)
        store = train_tiny_model(work)
        with start_model_server(store, work) as model:
            await model.wait_serving(timeout_s=120)
            measured = await measure(model, work, tweets, baseline_tweets, rounds)
    return summarise(measured)


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("(1) sink ceiling: raw BatchWriteItem", result["sink_ceiling"]),
        ("(2) original: Predict + put_item per tweet", result["original_design"]),
        ("(3) stream_svc end to end (backlog)", result["stream_svc"]),
        (
            f"(3b) stream_svc paced at {result['stream_svc_paced']['replay_rate']:.0f}/s",
            result["stream_svc_paced"],
        ),
    ]
    print(f"\n{'path':<44} {'tweets':>7} {'seconds':>8} {'tweets/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in rows:
        p50 = f"{row['p50_latency_ms']:.1f}" if "p50_latency_ms" in row else "-"
        p99 = f"{row['p99_latency_ms']:.1f}" if "p99_latency_ms" in row else "-"
        print(
            f"{name:<44} {row['tweets']:>7} {row['seconds']:>8.2f} {row['tweets_per_s']:>9.0f} {p50:>8} {p99:>8}"
        )
    stream = result["stream_svc"]
    print(
        f"\nstream_svc: {stream['in_table']} in the table, {stream['dead_lettered']} dead-lettered, "
        f"peak RSS {stream['peak_rss_mib']:.0f} MiB (before the run {stream['rss_before_mib']:.0f} MiB)"
    )
    print(
        f"CPU per tweet: pipeline {stream['pipeline_cpu_ms_per_tweet']:.2f} ms, model_svc "
        f"{stream['model_svc_cpu_ms_per_tweet']:.2f} ms; the raw writer of (1) "
        f"{result['sink_ceiling']['client_cpu_ms_per_tweet']:.2f} ms"
    )
    rounds = result["rounds"]
    print(
        "rounds (tweets/s): (1) "
        + ", ".join(f"{r:.0f}" for r in rounds["sink_ceiling_tweets_per_s"])
        + "; (3) "
        + ", ".join(f"{r:.0f}" for r in rounds["stream_svc_tweets_per_s"])
    )
    print(
        "(latency of a backlog replay is mostly time queued behind the tweets read before it; (3b) is below saturation)"
    )
    ok_ceiling = result["stream_vs_ceiling"] >= 0.7
    ok_original = result["stream_vs_original"] >= 20
    print(
        f"(3)/(1) = {result['stream_vs_ceiling']:.2f} (target >= 0.7: {'met' if ok_ceiling else 'NOT met'})"
    )
    print(
        f"(3)/(2) = {result['stream_vs_original']:.1f} (target >= 20: {'met' if ok_original else 'NOT met'})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tweets", type=int, default=20_000)
    parser.add_argument("--baseline-tweets", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    outcome = asyncio.run(main(args.tweets, args.baseline_tweets, args.rounds))
    print_table(outcome)
    write_results(RESULTS, outcome)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
