"""model_svc over real gRPC: grpcurl and stub calls, labels, bad input, batching under concurrent load."""

from __future__ import annotations

import asyncio
import json
import random

import grpc
import numpy as np
import pytest

from model_svc.model import group_by_length
from model_svc.server import ModelServer
from protos import predict_pb2, predict_pb2_grpc
from sentiment.synthetic import CLEARLY_NEGATIVE, CLEARLY_POSITIVE, generate
from tests.fixtures_model import grpcurl

PREDICT = "sentiment.v1.PredictService/Predict"


def target(server: ModelServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
async def stub(shared_model_server: ModelServer):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(target(shared_model_server)) as channel:
        yield predict_pb2_grpc.PredictServiceStub(channel)


async def test_grpcurl_predict_and_reflection(shared_model_server: ModelServer) -> None:
    address = target(shared_model_server)
    thresholds = shared_model_server.inference.model.thresholds  # type: ignore[union-attr]
    for expected, texts in [("POSITIVE", CLEARLY_POSITIVE), ("NEGATIVE", CLEARLY_NEGATIVE)]:
        for text in texts:
            code, out, err = await grpcurl("-plaintext", "-d", json.dumps({"text": text}), address, PREDICT)
            assert code == 0, err
            reply = json.loads(out)
            assert reply.get("modelVersion", reply.get("model_version")) == "v1"
            assert reply["label"] == thresholds.label(reply["score"]) == expected, (text, reply)

    code, out, err = await grpcurl("-plaintext", address, "list")
    assert code == 0, err
    assert "sentiment.v1.PredictService" in out.split()
    assert "grpc.health.v1.Health" in out.split()


async def test_labels_scores_and_versions_through_the_stub(
    shared_model_server: ModelServer, stub: predict_pb2_grpc.PredictServiceStub
) -> None:
    texts = [*CLEARLY_POSITIVE, *CLEARLY_NEGATIVE, "the weather is ok I guess"]
    batch = await stub.PredictBatch(predict_pb2.PredictBatchRequest(texts=texts), timeout=10)
    scores = [p.score for p in batch.predictions]
    assert min(scores[:2]) >= 0.7 and max(scores[2:4]) <= 0.4, scores
    labels = [predict_pb2.Label.Name(p.label) for p in batch.predictions[:4]]
    assert labels == ["POSITIVE", "POSITIVE", "NEGATIVE", "NEGATIVE"]
    thresholds = shared_model_server.inference.model.thresholds  # type: ignore[union-attr]
    for prediction in batch.predictions:
        assert prediction.model_version == "v1"
        assert predict_pb2.Label.Name(prediction.label) == thresholds.label(prediction.score)
    single = await stub.Predict(predict_pb2.PredictRequest(text=texts[4]), timeout=10)
    assert single.score == pytest.approx(batch.predictions[4].score, abs=1e-5)

    info = await stub.GetModel(predict_pb2.GetModelRequest(), timeout=10)
    assert info.version == "v1" and info.current
    assert info.sequence_length == 30 and info.vocabulary_size > 2
    assert info.thresholds.negative_max == pytest.approx(0.4)
    assert info.thresholds.positive_min == pytest.approx(0.7)
    assert 0.5 < info.metrics.accuracy <= 1.0 and info.metrics.test_rows > 0


BAD_INPUT = [
    ("Predict", predict_pb2.PredictRequest(text=""), "text is empty"),
    ("Predict", predict_pb2.PredictRequest(text="  \n\t "), "text is empty"),
    ("Predict", predict_pb2.PredictRequest(text="a" * 1001), "1001 characters, more than the limit of 1000"),
    ("PredictBatch", predict_pb2.PredictBatchRequest(texts=[]), "texts is empty"),
    ("PredictBatch", predict_pb2.PredictBatchRequest(texts=["fine", "also", "   "]), "texts[2] is empty"),
    (
        "PredictBatch",
        predict_pb2.PredictBatchRequest(texts=["ok", "b" * 1200]),
        "texts[1] has 1200 characters",
    ),
    (
        "PredictBatch",
        predict_pb2.PredictBatchRequest(texts=["ok"] * 1025),
        "1025 texts, more than the limit of 1024",
    ),
]


@pytest.mark.parametrize(("method", "request_", "reason"), BAD_INPUT)
async def test_bad_input_is_invalid_argument_with_a_reason(
    shared_model_server: ModelServer,
    stub: predict_pb2_grpc.PredictServiceStub,
    method: str,
    request_: object,
    reason: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (caught.value.details() or "")
    # The server counts a call once its handler has returned, which can be just after the caller has the answer.
    labels = {"rpc": method, "code": "INVALID_ARGUMENT"}
    for _ in range(200):
        if shared_model_server.metrics.sample("model_svc_requests_total", labels) >= 1:
            break
        await asyncio.sleep(0.005)
    assert shared_model_server.metrics.sample("model_svc_requests_total", labels) >= 1, "counted by status"


async def test_concurrent_callers_get_the_unbatched_models_scores(shared_model_server: ModelServer) -> None:
    """Many clients, Predict and PredictBatch mixed: batched, length-grouped results equal Keras predict."""
    texts = [t.text for t in generate(120, seed=11)] + ["@someone http://t.co/x", "#love", "ok"]
    model = shared_model_server.inference.model
    assert model is not None
    # Each text alone, padded to the full sequence length; and Keras predict on the same rows.
    reference, keras_scores = model.reference_scores(texts)
    np.testing.assert_allclose(reference, keras_scores, atol=1e-5)
    batches_before = shared_model_server.inference.batches_run
    rng = random.Random(3)
    got: dict[int, tuple[float, str]] = {}

    async def client(worker: int, indices: list[int]) -> None:
        async with grpc.aio.insecure_channel(target(shared_model_server)) as channel:
            stub = predict_pb2_grpc.PredictServiceStub(channel)

            async def one(i: int) -> None:
                reply = await stub.Predict(predict_pb2.PredictRequest(text=texts[i]), timeout=30)
                got[i] = (reply.score, reply.model_version)

            async def some(chunk: list[int]) -> None:
                reply = await stub.PredictBatch(
                    predict_pb2.PredictBatchRequest(texts=[texts[i] for i in chunk]), timeout=30
                )
                for i, prediction in zip(chunk, reply.predictions, strict=True):
                    got[i] = (prediction.score, prediction.model_version)

            calls = [one(i) for i in indices[: len(indices) // 2]]
            rest = indices[len(indices) // 2 :]
            calls += [some(rest[k : k + 5]) for k in range(0, len(rest), 5)]
            rng.shuffle(calls)
            await asyncio.gather(*calls)

    order = list(range(len(texts)))
    rng.shuffle(order)
    await asyncio.gather(*(client(w, order[w::8]) for w in range(8)))

    assert sorted(got) == list(range(len(texts)))
    scores = np.array([got[i][0] for i in range(len(texts))])
    np.testing.assert_allclose(scores, reference, atol=1e-5)
    assert {version for _, version in got.values()} == {"v1"}
    runs = shared_model_server.inference.batches_run - batches_before
    assert runs < len(texts) / 2, f"{runs} model calls for {len(texts)} texts: callers were not batched"


def test_grouping_by_length_covers_every_text_once() -> None:
    lengths = [1, 30, 2, 2, 29, 0, 15, 30, 1, 3] * 20
    groups = group_by_length(lengths)
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert len(groups) > 1, "short and long texts are not padded to one width"
    widths = [max(lengths[i] for i in g) for g in groups]
    assert widths == sorted(widths)
    assert group_by_length([7] * 5)[0].tolist() == [0, 1, 2, 3, 4]


def test_grouping_by_length_is_the_cheapest_split() -> None:
    """Against every way of cutting the sorted distinct lengths (exhaustive: at most 2^7 splits)."""

    def cost(groups: list[list[int]], call: float, step: float) -> float:
        return sum(call + max(max(g), 1) * (step + len(g)) for g in groups)

    rng = np.random.default_rng(3)
    for _ in range(200):
        lengths = rng.choice(
            rng.choice(41, size=int(rng.integers(1, 9)), replace=False), size=int(rng.integers(1, 60))
        )
        call, step = float(rng.choice([1.0, 40.0, 400.0])), float(rng.choice([0.5, 8.0, 40.0]))
        got = cost(
            [[int(lengths[i]) for i in g] for g in group_by_length(lengths.tolist(), call, step)], call, step
        )
        distinct = sorted(set(lengths.tolist()))
        best = np.inf
        for mask in range(1 << (len(distinct) - 1)):  # bit k set: a cut after distinct[k]
            groups, current = [], []
            for k, width in enumerate(distinct):
                current += [int(x) for x in lengths if x == width]
                if k == len(distinct) - 1 or mask >> k & 1:
                    groups.append(current)
                    current = []
            best = min(best, cost(groups, call, step))
        assert got == pytest.approx(best)
