"""bench_stream's measured paths, each on its own fresh table on the local DynamoDB endpoint: (1) the sink's
ceiling (raw concurrent BatchWriteItem), (2) the original per-tweet design, (3) stream_svc's Pipeline end to end."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aioboto3

from benchmarks.common import cpu_s, percentile, rss_mib
from sentiment.predict_client import PredictClient
from sentiment.prediction import Prediction
from sentiment.synthetic import SyntheticTweet, generate, write_jsonl
from stream_svc.deadletter import DeadLetterFile
from stream_svc.dynamodb import client_config, create_table, to_dynamodb
from stream_svc.items import make_item, utc_timestamp
from stream_svc.pipeline import Pipeline
from stream_svc.replay import ReplaySource
from stream_svc.sink import DynamoSink
from stream_svc.tweets import Tweet, clean_text

BATCH_SIZE = 128
PREDICT_CONCURRENCY = 4
WRITE_CONCURRENCY = 8


def as_tweet(t: SyntheticTweet) -> Tweet:
    return Tweet(t.id, t.user, t.text, t.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"))


def synthetic_items(n: int, seed: int) -> list[dict[str, Any]]:
    now = utc_timestamp()
    return [
        make_item(
            as_tweet(t),
            clean_text(t.text),
            Prediction("POSITIVE" if t.label else "NEGATIVE", 0.873214 if t.label else 0.102938, "v1"),
            now,
        )
        for t in generate(n, seed=seed)
    ]


async def fresh_table(kind: str) -> str:
    table = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    await create_table(table)
    return table


async def sink_ceiling(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Raw BatchWriteItem, 25 items a request, WRITE_CONCURRENCY in flight; no pipeline around it."""
    table = await fresh_table("ceiling")
    chunks = [items[i : i + 25] for i in range(0, len(items), 25)]
    slots = asyncio.Semaphore(WRITE_CONCURRENCY)
    unprocessed = 0
    async with aioboto3.Session().client("dynamodb", config=client_config(WRITE_CONCURRENCY * 2)) as client:

        async def send(chunk: list[dict[str, Any]]) -> None:
            nonlocal unprocessed
            request = [{"PutRequest": {"Item": to_dynamodb(item)}} for item in chunk]
            async with slots:
                response = await client.batch_write_item(RequestItems={table: request})
            unprocessed += len(response.get("UnprocessedItems", {}).get(table, []))

        started, cpu = time.perf_counter(), cpu_s()
        await asyncio.gather(*(send(c) for c in chunks))
        elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu
        await client.delete_table(TableName=table)  # moto keeps every item in memory
    return {
        "tweets": len(items),
        "seconds": elapsed,
        "tweets_per_s": len(items) / elapsed,
        "unprocessed": unprocessed,
        "client_cpu_ms_per_tweet": cpu * 1000 / len(items),
    }


async def original_design(port: int, n: int) -> dict[str, Any]:
    """Per tweet, in sequence: Predict, then put_item (the original consumer's shape)."""
    table = await fresh_table("original")
    tweets = list(generate(n, seed=31))
    latencies: list[float] = []
    async with (
        PredictClient(f"127.0.0.1:{port}") as predictor,
        aioboto3.Session().client("dynamodb", config=client_config()) as client,
    ):
        await predictor.predict("warm up")
        started = time.perf_counter()
        for tweet in tweets:
            t0 = time.perf_counter()
            clean = clean_text(tweet.text)
            prediction = await predictor.predict(clean)
            item = make_item(as_tweet(tweet), clean, prediction, utc_timestamp())
            await client.put_item(TableName=table, Item=to_dynamodb(item))
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    return {
        "tweets": n,
        "seconds": elapsed,
        "tweets_per_s": n / elapsed,
        "p50_latency_ms": percentile(latencies, 0.5) * 1000,
        "p99_latency_ms": percentile(latencies, 0.99) * 1000,
    }


@asynccontextmanager
async def peak_rss() -> AsyncIterator[dict[str, float]]:
    """This process's RSS before (`before`) and its peak while the block runs (`peak`, sampled every 50 ms)."""
    memory = {"before": rss_mib(), "peak": rss_mib()}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            memory["peak"] = max(memory["peak"], rss_mib())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        yield memory
    finally:
        done.set()
        await sampler


async def count_and_drop(table: str) -> int:
    """The items in the table; then the table is deleted (moto keeps every item in memory)."""
    count = 0
    async with aioboto3.Session().client("dynamodb") as client:
        async for page in client.get_paginator("scan").paginate(TableName=table, Select="COUNT"):
            count += page["Count"]
        await client.delete_table(TableName=table)
    return count


async def run_pipeline(
    port: int, table: str, replay: Path, rate: float, work: Path, model_pid: int | None
) -> dict[str, Any]:
    """stream_svc's Pipeline on the replay, timed, with its CPU and model_svc's; latencies per written tweet."""
    latencies: list[float] = []
    async with PredictClient(f"127.0.0.1:{port}") as predictor:
        await predictor.predict("warm up")
        sink = await DynamoSink.open(table, concurrency=WRITE_CONCURRENCY)
        pipeline = Pipeline(
            ReplaySource(replay, rate=rate),
            predictor,
            sink,
            DeadLetterFile(work / "dead-letter.jsonl"),
            batch_size=BATCH_SIZE,
            batch_max_wait_s=0.02,
            predict_concurrency=PREDICT_CONCURRENCY,
            write_concurrency=WRITE_CONCURRENCY,
            latency_samples=latencies,
        )
        started, cpu = time.perf_counter(), cpu_s()
        model_cpu = cpu_s(model_pid) if model_pid else 0.0
        counters = await pipeline.run()
        elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu
        model_cpu = cpu_s(model_pid) - model_cpu if model_pid else 0.0
        await sink.aclose()
    return {
        "counters": counters,
        "seconds": elapsed,
        "cpu_s": cpu,
        "model_cpu_s": model_cpu,
        "latencies": latencies,
        "requests": sink.requests,
    }


async def stream_end_to_end(
    port: int, n: int, work: Path, rate: float = 0.0, model_pid: int | None = None
) -> dict[str, Any]:
    """The pipeline on a replay of `n` tweets; `rate` 0 = a backlog (as fast as it goes), else paced."""
    table = await fresh_table("stream")
    replay = write_jsonl(work / f"replay-{n}.jsonl", n, seed=32)
    async with peak_rss() as memory:
        run = await run_pipeline(port, table, replay, rate, work, model_pid)
    counters, elapsed, latencies = run["counters"], run["seconds"], run["latencies"]
    return {
        "tweets": n,
        "replay_rate": rate,
        "seconds": elapsed,
        "tweets_per_s": counters.written / elapsed,
        "p50_latency_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_latency_ms": percentile(latencies, 0.99) * 1000,
        "peak_rss_mib": memory["peak"],
        "rss_before_mib": memory["before"],
        "written": counters.written,
        "dead_lettered": counters.dead_lettered,
        "in_table": await count_and_drop(table),
        "pipeline_cpu_ms_per_tweet": run["cpu_s"] * 1000 / n,
        "model_svc_cpu_ms_per_tweet": run["model_cpu_s"] * 1000 / n,
        "write_requests": run["requests"],
        "write_retries": counters.write_retries,
        "predict_retries": counters.predict_retries,
        "balanced": counters.balanced(),
        "batch_size": BATCH_SIZE,
        "predict_concurrency": PREDICT_CONCURRENCY,
        "write_concurrency": WRITE_CONCURRENCY,
    }
