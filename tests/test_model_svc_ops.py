"""model_svc operations: overload, deadlines, refused bundles, a server up before its model, S3 store."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from model_svc.server import ModelServer, start_server
from protos import predict_pb2, predict_pb2_grpc
from sentiment import bundle
from sentiment.store import open_store
from sentiment.synthetic import CLEARLY_POSITIVE
from tests.fixtures_model import (
    add_version,
    corrupt_checksum,
    health_status,
    model_config,
    set_format_version,
)


def stub_for(server: ModelServer) -> tuple[grpc.aio.Channel, predict_pb2_grpc.PredictServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, predict_pb2_grpc.PredictServiceStub(channel)


def hold_inference_thread(server: ModelServer) -> threading.Event:
    """Occupy the server's single inference thread until the returned event is set."""
    gate = threading.Event()
    server.inference.batcher.executor.submit(gate.wait, 30)
    return gate


async def test_overload_is_resource_exhausted_at_once(
    model_store: Path, start_model_server: Callable[..., Any]
) -> None:
    server = await start_model_server(
        model_store, queue_max_texts=4, predict_batch_max_texts=4, inference_batch_max_texts=4
    )
    channel, stub = stub_for(server)
    gate = hold_inference_thread(server)
    try:
        calls = [
            asyncio.ensure_future(
                stub.PredictBatch(predict_pb2.PredictBatchRequest(texts=["good day"] * 4), timeout=30)
            )
            for _ in range(3)
        ]
        # Two of the three are refused while the inference thread is still held: no waiting in line.
        refused: list[grpc.aio.AioRpcError] = []
        while len(refused) < 2:
            done, _ = await asyncio.wait(calls, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert done, "an overloaded server must answer at once, not hang"
            for call in done:
                calls.remove(call)
                exc = call.exception()
                assert isinstance(exc, grpc.aio.AioRpcError)
                refused.append(exc)
        assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert "overloaded" in (refused[0].details() or "")
    finally:
        gate.set()
    (admitted,) = calls
    assert len((await admitted).predictions) == 4
    await channel.close()


async def test_a_request_past_its_deadline_is_not_computed(
    model_store: Path, start_model_server: Callable[..., Any]
) -> None:
    server = await start_model_server(model_store)
    channel, stub = stub_for(server)
    computed_before = server.inference.texts_computed
    gate = hold_inference_thread(server)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PredictBatch(
                predict_pb2.PredictBatchRequest(texts=["too late", "also late"]), timeout=0.3
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        gate.set()
    reply = await stub.Predict(predict_pb2.PredictRequest(text="right on time"), timeout=10)
    assert reply.model_version == "v1"
    assert server.inference.texts_computed - computed_before == 1, "the expired texts were not computed"
    await channel.close()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (corrupt_checksum, "checksum of vocab.json does not match"),
        (lambda d: set_format_version(d, 99), "format version 99 is not supported"),
    ],
)
async def test_a_bad_bundle_is_refused_at_start_and_a_good_one_loads_later(
    model_store: Path,
    tiny_bundle_dir: Path,
    start_model_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    damage(model_store / "models" / "v1")
    with caplog.at_level(logging.ERROR, logger="model_svc.reload"):
        server = await start_model_server(model_store)
    assert any("model v1 refused" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    target = f"127.0.0.1:{server.port}"
    assert await health_status(target) == "NOT_SERVING"
    channel, stub = stub_for(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Predict(predict_pb2.PredictRequest(text="hello"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "no model loaded"

    await server.reloader.check()
    assert server.reloader.failures["v1"].attempts == 1, "a refused bundle is not retried"

    add_version(model_store, tiny_bundle_dir, "v2")
    await asyncio.wait_for(server.reloader.wait_for_attempt("v2"), 30)
    assert await health_status(target) == "SERVING"
    reply = await stub.Predict(predict_pb2.PredictRequest(text=CLEARLY_POSITIVE[0]), timeout=10)
    assert reply.model_version == "v2" and reply.score > 0.5
    await channel.close()


async def test_a_server_started_before_any_model_polls_for_one(
    tmp_path: Path, tiny_bundle_dir: Path, start_model_server: Callable[..., Any]
) -> None:
    store = tmp_path / "empty-store"
    server = await start_model_server(store)
    target = f"127.0.0.1:{server.port}"
    assert await health_status(target) == "NOT_SERVING"
    assert await health_status(target, "") == "NOT_SERVING"  # readiness: out of the endpoints
    assert await health_status(target, "liveness") == "SERVING"  # liveness: not restarted while it waits
    channel, stub = stub_for(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(predict_pb2.GetModelRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # What train_svc's job runner adds to a manifest (the manifest itself is not checksummed).
    bundle_dir = add_version(store, tiny_bundle_dir, "first", promote=False)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["metrics"]["train_seconds"] = 12.5
    manifest["dataset"] = {"uri": "s3://bucket/tweets.csv.gz", "sha256": "0" * 64}
    manifest["created_at"] = "2026-11-28T15:35:12.250000Z"
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    (store / "models" / "CURRENT").write_text("first")
    await asyncio.wait_for(server.reloader.wait_for_attempt("first"), 30)
    assert await health_status(target) == "SERVING"
    info = await stub.GetModel(predict_pb2.GetModelRequest(), timeout=10)
    assert (info.version, info.current, info.dataset_uri) == ("first", True, "s3://bucket/tweets.csv.gz")
    assert info.metrics.train_seconds == 12.5
    assert info.created_at.ToJsonString() == "2026-11-28T15:35:12.250Z"
    await channel.close()


async def test_loads_from_an_s3_store(
    bucket: str, tiny_bundle_dir: Path, start_model_server: Callable[..., Any]
) -> None:
    uri = f"s3://{bucket}/sentiment"
    store = await open_store(uri)
    await bundle.publish(store, tiny_bundle_dir, "s3v1")
    await bundle.set_current(store, "s3v1")
    await store.aclose()
    server = await start_model_server(uri)
    channel, stub = stub_for(server)
    reply = await stub.Predict(predict_pb2.PredictRequest(text=CLEARLY_POSITIVE[1]), timeout=10)
    assert reply.model_version == "s3v1" and reply.score > 0.5
    await channel.close()


async def test_a_failed_start_frees_its_port_and_its_temp_dir(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_model_server: Callable[..., Any]
) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    with socket.socket() as taken:  # the metrics port is in use: the start fails after gRPC listens
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        config = model_config(
            model_store, listen_addr=f"127.0.0.1:{grpc_port}", metrics_port=taken.getsockname()[1]
        )
        with pytest.raises(OSError):
            await start_server(config)
    assert list(temp_root.iterdir()) == [], "the model folder of a failed start is left behind"
    server = await start_model_server(model_store, listen_addr=f"127.0.0.1:{grpc_port}")
    assert server.port == grpc_port, "the gRPC port of a failed start is still taken"
