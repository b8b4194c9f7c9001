"""bench_predict's load generator: spawned processes (no TensorFlow in them) that call one server for one window.

A line is (name, kind, concurrency, texts per call); kind `predict` (one text a call), `batch` (many) or
`noop` (health Check on model_svc, ServerLive on MLServer: the RPC floor of the same server). Each line
spreads its concurrency over the pool's processes; each process opens CHANNELS connections of its own
(worker processes behind one SO_REUSEPORT port are chosen per connection) and every call takes the next
one. Requests are built before the window opens, so both protocols cost the client the same: serialising.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.common import percentile
from benchmarks.peers import MODEL_NAME, Target, tree_cpu_s

# Spawned processes need time to connect and warm up before the window opens.
START_DELAY_S = 2.0
CHANNELS = int(os.environ.get("BENCH_CHANNELS", "32"))  # connections per load process
CALL_TIMEOUT_S = 60.0
# The lines every server runs: (name, kind, concurrency, texts per call).
LINES = [
    ("Predict c=1", "predict", 1, 1),
    ("Predict c=16", "predict", 16, 1),
    ("Predict c=64", "predict", 64, 1),
    ("PredictBatch 64 c=4", "batch", 4, 64),
    ("PredictBatch 256 c=4", "batch", 4, 256),
    ("no-op c=64", "noop", 64, 1),
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
    from google.protobuf import message_factory  # noqa: F401
    from grpc_health.v1 import health_pb2_grpc  # noqa: F401

    from protos import predict_pb2_grpc  # noqa: F401

    return os.getpid()


@functools.lru_cache(maxsize=2)
def v2_messages(descriptor: bytes) -> dict[str, Any]:
    """The V2 protocol's message classes, built with this process's protobuf runtime."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor)
    names = ("ModelInferRequest", "ModelInferResponse", "ServerLiveRequest", "ServerLiveResponse")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}")) for n in names}


def _open(target: Target, n: int) -> list[Any]:
    import grpc

    # A local subchannel pool: each channel its own connection, not one shared by identical channels.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    return [grpc.aio.insecure_channel(f"127.0.0.1:{target.port}", options=options) for _ in range(n)]


def _requests(target: Target, kind: str, batch: int, texts: list[str]) -> list[Any]:
    from protos import predict_pb2

    chunks = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    if target.kind == "model_svc":
        if kind == "batch":
            return [predict_pb2.PredictBatchRequest(texts=chunk) for chunk in chunks]
        return [predict_pb2.PredictRequest(text=chunk[0]) for chunk in chunks]
    infer = v2_messages(target.descriptor)["ModelInferRequest"]
    return [
        infer(
            model_name=MODEL_NAME,
            inputs=[
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(chunk)],
                    "contents": {"bytes_contents": [t.encode() for t in chunk]},
                }
            ],
        )
        for chunk in chunks
    ]


def _methods(target: Target, channel: Any, kind: str) -> Callable[[Any], Awaitable[Any]]:
    """The RPC a call of `kind` makes on `channel`."""
    if target.kind == "model_svc":
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from protos import predict_pb2_grpc

        if kind == "noop":
            check = health_pb2_grpc.HealthStub(channel).Check
            empty = health_pb2.HealthCheckRequest(service="")
            return lambda request: check(empty, timeout=CALL_TIMEOUT_S)
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        method = stub.PredictBatch if kind == "batch" else stub.Predict
        return lambda request: method(request, timeout=CALL_TIMEOUT_S)
    messages = v2_messages(target.descriptor)
    name = "ServerLive" if kind == "noop" else "ModelInfer"
    rpc = channel.unary_unary(
        f"/inference.GRPCInferenceService/{name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=messages[f"{name}Response"].FromString,
    )
    if kind == "noop":
        live = messages["ServerLiveRequest"]()
        return lambda request: rpc(live, timeout=CALL_TIMEOUT_S)
    return lambda request: rpc(request, timeout=CALL_TIMEOUT_S)


def load_worker(
    target: Target,
    line: tuple[str, str, int, int],
    concurrency: int,
    start_at: float,
    seconds: float,
    texts: list[str],
    cpus: set[int],
) -> tuple[int, list[float], int, bool]:
    """In a spawned process on `cpus`: `concurrency` call loops over CHANNELS connections, from `start_at`
    for `seconds`. Returns (texts done, latencies, errors, whether this process began after the window)."""
    os.sched_setaffinity(0, cpus)
    return asyncio.run(_load(target, line, concurrency, start_at, seconds, texts))


async def _load(
    target: Target,
    line: tuple[str, str, int, int],
    concurrency: int,
    start_at: float,
    seconds: float,
    texts: list[str],
) -> tuple[int, list[float], int, bool]:
    import grpc

    _, kind, _, batch = line
    channels = _open(target, CHANNELS)
    calls = [_methods(target, channel, kind) for channel in channels]
    requests = _requests(target, kind, batch, texts)
    latencies: list[float] = []
    items = errors = 0
    end_at = start_at + seconds
    late = time.time() > start_at
    turn = 0

    async def loop(worker: int) -> None:
        nonlocal items, errors, turn
        i = worker * 7919
        while True:
            turn += 1
            call = calls[turn % len(calls)]
            t0 = time.perf_counter()
            try:
                await call(requests[i % len(requests)])
                ok = True
            except grpc.aio.AioRpcError:
                ok = False
            now = time.time()
            if now > end_at:
                return
            if now > start_at:  # before it: warming every connection up
                latencies.append(time.perf_counter() - t0)
                items += batch if ok else 0
                errors += 0 if ok else 1
            i += 1

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    for channel in channels:
        await channel.close()
    return items, latencies, errors, late


def grpc_line(
    pool: ProcessPoolExecutor,
    peer: Any,
    line: tuple[str, str, int, int],
    seconds: float,
    texts: list[str],
    procs: int,
    cpus: set[int],
) -> dict[str, Any]:
    """One line against `peer` (a benchmarks.peers server) from `procs` load processes on `cpus`; with the
    server's mean batch (model_svc) and the CPU its processes used (cores, averaged over the window)."""
    name, _, concurrency, _ = line
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start_at = time.time() + START_DELAY_S
    target, pids = peer.target, peer.pids()
    futures = [
        pool.submit(load_worker, target, line, share, start_at, seconds, texts, cpus) for share in shares
    ]
    while time.time() < start_at:
        time.sleep(0.01)
    before, cpu_before = peer.batch_stats(), tree_cpu_s(pids)
    results = [f.result() for f in futures]
    after, cpu_after = peer.batch_stats(), tree_cpu_s(pids)
    latencies = [x for r in results for x in r[1]]
    if any(r[3] for r in results):
        print(f"  warning: a load process started after the window opened; {name} reads low", flush=True)
    texts_done, batches = (a - b for a, b in zip(after, before, strict=True))
    extra: dict[str, Any] = {"errors": sum(r[2] for r in results)}
    extra["server_cores"] = round((cpu_after - cpu_before) / seconds, 2)
    if batches:
        extra["mean_batch"] = round(texts_done / batches, 1)
    return row(name, sum(r[0] for r in results), seconds, latencies, **extra)


async def served_scores(target: Target, texts: Sequence[str], per_call: int = 64) -> list[float]:
    """The scores a server returns for `texts`, in calls of `per_call` spread over several connections."""
    chunks = [list(texts[i : i + per_call]) for i in range(0, len(texts), per_call)]
    channels = _open(target, len(chunks))
    try:
        if target.kind == "model_svc":
            from protos import predict_pb2, predict_pb2_grpc

            replies = await asyncio.gather(
                *(
                    predict_pb2_grpc.PredictServiceStub(ch).PredictBatch(
                        predict_pb2.PredictBatchRequest(texts=chunk), timeout=CALL_TIMEOUT_S
                    )
                    for ch, chunk in zip(channels, chunks, strict=True)
                )
            )
            return [p.score for reply in replies for p in reply.predictions]
        requests = _requests(target, "batch", per_call, list(texts))
        calls = [_methods(target, ch, "batch") for ch in channels]
        replies = await asyncio.gather(*(c(r) for c, r in zip(calls, requests, strict=False)))
        out: list[float] = []
        for reply in replies:
            (score,) = [o for o in reply.outputs if o.name == "score"]
            out.extend(score.contents.fp32_contents)
        return out
    finally:
        for channel in channels:
            await channel.close()
