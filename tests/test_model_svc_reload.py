"""Hot reload under a steady stream of requests: no failure, one switch, a bad bundle never replaces a good one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from protos import predict_pb2, predict_pb2_grpc
from sentiment.synthetic import generate
from tests.fixtures_model import add_version, corrupt_checksum, health_status


async def test_hot_reload_during_a_steady_stream(
    model_store: Path, tiny_bundle_dir: Path, start_model_server: Callable[..., Any]
) -> None:
    server = await start_model_server(model_store, reload_interval_s=0.05)
    texts = [t.text for t in generate(40, seed=5)]
    versions: list[list[str]] = [[] for _ in range(4)]
    failures: list[BaseException] = []
    stop = asyncio.Event()
    seen: dict[str, asyncio.Event] = {"v2": asyncio.Event()}

    async def stream(worker: int, stub: predict_pb2_grpc.PredictServiceStub) -> None:
        i = worker
        while not stop.is_set():
            try:
                if i % 3:
                    reply = await stub.Predict(predict_pb2.PredictRequest(text=texts[i % 40]), timeout=10)
                    got = [reply.model_version]
                else:
                    batch = await stub.PredictBatch(
                        predict_pb2.PredictBatchRequest(texts=texts[: 1 + i % 8]), timeout=10
                    )
                    got = [p.model_version for p in batch.predictions]
                    assert len(set(got)) == 1, "one batch is computed by one model"
            except (grpc.aio.AioRpcError, AssertionError) as exc:
                failures.append(exc)
                return
            versions[worker].extend(got)
            if got[0] in seen:
                seen[got[0]].set()
            i += 4

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        streams = [asyncio.ensure_future(stream(w, stub)) for w in range(4)]

        add_version(model_store, tiny_bundle_dir, "v2")
        await asyncio.wait_for(seen["v2"].wait(), 30)
        mark = [len(v) for v in versions]

        bad = add_version(model_store, tiny_bundle_dir, "v3", promote=False)
        corrupt_checksum(bad)
        (model_store / "models" / "CURRENT").write_text("v3")
        await asyncio.wait_for(server.reloader.wait_for_attempt("v3"), 30)
        for _ in range(3):  # later polls do not try the refused bundle again
            await server.reloader.check()
        while min(len(v) - m for v, m in zip(versions, mark, strict=True)) < 5 and not failures:
            await asyncio.wait(streams, timeout=0.05)  # let every stream make progress on v2
        stop.set()
        await asyncio.gather(*streams)

    assert not failures, failures
    for stream_versions in versions:
        switches = sum(a != b for a, b in itertools.pairwise(stream_versions))
        assert stream_versions[0] == "v1" and stream_versions[-1] == "v2" and switches == 1, stream_versions
    assert server.inference.version == "v2"
    assert server.reloader.failures["v3"].attempts == 1
    assert server.reloader.failures["v3"].retry_at is None
    assert "checksum" in server.reloader.failures["v3"].reason
    assert await health_status(f"127.0.0.1:{server.port}") == "SERVING"
