"""The manifest has one owner (`sentiment.bundle.Manifest`): bundles of the previous code still read, list
and serve with their thresholds; a manifest's fields are type-checked; thresholds come from
preprocessing.json only. Real train and model servers on port 0 over a local store."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import predict_pb2, predict_pb2_grpc, train_pb2
from sentiment import bundle
from sentiment.bundle import Manifest
from sentiment.errors import BundleError
from sentiment.store import LocalStore
from sentiment.synthetic import CLEARLY_NEGATIVE, CLEARLY_POSITIVE, generate
from tests.fixtures_train import TrainHarness

LEGACY_THRESHOLDS = {"negative_max": 0.3, "positive_min": 0.8}


def write_legacy_bundle(source: Path, target: Path) -> Path:
    """`source` rewritten as the previous code wrote bundles: thresholds in both manifest.json and
    preprocessing.json, the text settings in the manifest too, and no `notice`."""
    shutil.copytree(source, target)
    preprocessing = json.loads((target / bundle.PREPROCESSING_FILE).read_text())
    preprocessing["thresholds"] = LEGACY_THRESHOLDS
    (target / bundle.PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2))
    current = json.loads((target / bundle.MANIFEST_FILE).read_text())
    keep = ("metrics", "params", "recipe", "vocabulary_size", "epochs_run", "epoch_kept", "split", "timings")
    legacy = {
        "format_version": 1,
        **{key: current[key] for key in keep},
        "text": preprocessing["text"],
        "thresholds": LEGACY_THRESHOLDS,
        "dataset_rows": current["dataset_rows"],
        "job_id": "job-20261128-165149-8fa06013",
        "dataset": {"uri": "s3://bucket/tweets.csv.gz", "sha256": "0" * 64},
        "code_version": "0.1.0",
        "created_at": "2026-11-28T16:52:02.898802Z",
        "files": {
            name: hashlib.sha256((target / name).read_bytes()).hexdigest() for name in bundle.PAYLOAD_FILES
        },
    }
    (target / bundle.MANIFEST_FILE).write_text(json.dumps(legacy, indent=2, sort_keys=True))
    return target


async def test_a_bundle_of_the_previous_code_lists_and_serves_with_its_thresholds(
    tiny_bundle_dir: Path,
    tmp_path: Path,
    train_harness: TrainHarness,
    start_model_server: Callable[..., Any],
) -> None:
    store = tmp_path / "store"
    write_legacy_bundle(tiny_bundle_dir, store / "models" / "legacy")
    _, client = await train_harness.start(str(store))

    listed = await client.stub.ListModels(train_pb2.ListModelsRequest())
    [model] = listed.models
    assert (model.version, model.current) == ("legacy", False)
    assert (model.thresholds.negative_max, model.thresholds.positive_min) == pytest.approx((0.3, 0.8))
    assert model.dataset_uri == "s3://bucket/tweets.csv.gz" and model.vocabulary_size > 20
    assert model.created_at.ToJsonString() == "2026-11-28T16:52:02.898802Z"
    promoted = await client.stub.PromoteModel(train_pb2.PromoteModelRequest(version="legacy"))
    assert promoted.current and promoted.thresholds == model.thresholds

    server = await start_model_server(store)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        info = await stub.GetModel(predict_pb2.GetModelRequest(), timeout=10)
        assert (info.version, info.current) == ("legacy", True)
        assert info.thresholds == model.thresholds and info.dataset_uri == model.dataset_uri
        texts = [*CLEARLY_POSITIVE, *CLEARLY_NEGATIVE, *(t.text for t in generate(40, seed=11))]
        reply = await stub.PredictBatch(predict_pb2.PredictBatchRequest(texts=texts), timeout=10)
    legacy = bundle.Thresholds(**LEGACY_THRESHOLDS)
    for prediction in reply.predictions:
        assert predict_pb2.Label.Name(prediction.label) == legacy.label(prediction.score), prediction


def test_manifest_reads_what_the_previous_code_wrote_and_writes_it_back(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    legacy_dir = write_legacy_bundle(tiny_bundle_dir, tmp_path / "legacy")
    data = json.loads((legacy_dir / bundle.MANIFEST_FILE).read_text())
    manifest = Manifest.from_dict(data)
    assert manifest.notice == "" and manifest.dataset_sha256 == "0" * 64
    assert manifest.metrics == data["metrics"] and manifest.files == data["files"]
    written = manifest.to_dict()
    # The same format, less the copies: thresholds and text settings are preprocessing.json's.
    assert {k: v for k, v in data.items() if k not in ("text", "thresholds")} == {
        k: v for k, v in written.items() if k != "notice"
    }
    assert Manifest.from_dict(written) == manifest
    local = bundle.read_local_bundle(legacy_dir, "legacy")
    assert local.manifest == manifest
    assert local.preprocessing.thresholds == bundle.Thresholds(**LEGACY_THRESHOLDS)


BAD_MANIFESTS: list[tuple[dict[str, Any], str]] = [
    ({"format_version": 99}, "format version 99 is not supported"),
    ({"format_version": True}, "format version True is not supported"),
    ({"format_version": None}, "format version None is not supported"),
    ({"metrics": {"accuracy": "high"}}, "metrics.accuracy"),
    ({"metrics": {"loss": True}}, "metrics.loss"),
    ({"params": {"epochs": 1.5}}, "params.epochs"),
    ({"recipe": {"dropout": [0.5]}}, "recipe.dropout"),
    ({"vocabulary_size": "53"}, "vocabulary_size"),
    ({"epoch_kept": -1}, "epoch_kept"),
    ({"split": {"test": True}}, "split.test"),
    ({"notice": 7}, "notice"),
    ({"dataset": "s3://bucket/key"}, "dataset"),
    ({"dataset": {"uri": 3}}, "dataset.uri"),
    ({"created_at": "yesterday"}, "created_at"),
    ({"files": ["model.keras"]}, "files"),
    ({"files": {"vocab.json": None}}, "files.vocab.json"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_MANIFESTS, ids=[reason for _, reason in BAD_MANIFESTS])
def test_manifest_fields_are_type_checked(change: dict[str, Any], reason: str) -> None:
    good = Manifest(metrics={"accuracy": 0.9, "rows_used": 400}, params={"epochs": 2}).to_dict()
    assert Manifest.from_dict(good).metrics == {"accuracy": 0.9, "rows_used": 400}
    with pytest.raises(BundleError, match=r"manifest\.json|format version") as caught:
        Manifest.from_dict({**good, **change})
    assert reason in str(caught.value)
    with pytest.raises(BundleError, match=r"manifest\.json must be an object"):
        Manifest.from_dict([good])


async def test_listing_reads_thresholds_from_preprocessing_and_skips_a_tampered_one(
    tiny_bundle_dir: Path, tmp_path: Path, train_harness: TrainHarness
) -> None:
    store = tmp_path / "store"
    for version in ("v1", "v2"):
        shutil.copytree(tiny_bundle_dir, store / "models" / version)
    # A changed preprocessing.json whose checksum the manifest does not vouch for is not what would be served.
    path = store / "models" / "v2" / bundle.PREPROCESSING_FILE
    path.write_text(path.read_text().replace('"positive_min": 0.7', '"positive_min": 0.9'))
    manifest, preprocessing = await bundle.read_published(LocalStore(store), "v1")
    assert preprocessing.thresholds == bundle.Thresholds() and manifest.vocabulary_size > 20
    with pytest.raises(BundleError, match=r"checksum of preprocessing\.json"):
        await bundle.read_published(LocalStore(store), "v2")

    _, client = await train_harness.start(str(store))
    listed = await client.stub.ListModels(train_pb2.ListModelsRequest())
    assert [m.version for m in listed.models] == ["v1"]
    assert listed.models[0].thresholds.positive_min == pytest.approx(0.7)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.PromoteModel(train_pb2.PromoteModelRequest(version="v2"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not (store / "models" / "CURRENT").exists()
