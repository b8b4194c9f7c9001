"""The training recipe on generated tweets: it learns, it is deterministic, and the bundle it writes verifies."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from sentiment.bundle import MANIFEST_FILE, PAYLOAD_FILES, PREPROCESSING_FILE, Manifest, read_local_bundle
from tests.conftest import TINY_PARAMS
from train_svc.network import length_batches
from train_svc.params import Recipe
from train_svc.trainer import train_model


def test_tiny_model_learns_and_bundle_verifies(tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / MANIFEST_FILE).read_text())
    # Chance is 0.5; a tenth of the generated tweets are mixed and labelled at random, so 0.95 is the ceiling.
    assert manifest["metrics"]["accuracy"] >= 0.8, manifest["metrics"]
    assert manifest["metrics"]["f1"] >= 0.8, manifest["metrics"]
    bundle = read_local_bundle(tiny_bundle_dir, "v1")
    assert bundle.preprocessing.sequence_length == 30
    assert len(bundle.vocabulary) > 20
    # Every setting that shaped the model is on record.
    assert manifest["params"] == TINY_PARAMS.to_dict()
    assert manifest["recipe"] == Recipe().to_dict()
    preprocessing = json.loads((tiny_bundle_dir / PREPROCESSING_FILE).read_text())
    assert set(preprocessing["text"]) >= {"drop_stop_words", "emoticon_tokens", "number_token", "max_repeat"}
    # The thresholds are stored once, in preprocessing.json (what serving uses); the format version once
    # checked, in the manifest.
    assert "thresholds" not in manifest and "text" not in manifest and manifest["format_version"] == 1
    assert bundle.preprocessing.thresholds.label(0.5) == "NEUTRAL"
    assert Manifest.from_dict(manifest) == bundle.manifest
    assert {"read_s", "word2vec_s", "fit_s", "tweets_per_s_per_epoch"} <= set(manifest["timings"])
    assert 1 <= manifest["epoch_kept"] <= manifest["epochs_run"] <= TINY_PARAMS.epochs


def test_padding_width_does_not_change_a_score(tiny_bundle_dir: Path) -> None:
    import keras

    model = keras.models.load_model(tiny_bundle_dir / "model.keras", compile=False)
    ids = np.array([[0, 0, 5, 9, 3], [0, 0, 0, 7, 2]], dtype=np.int32)
    wide = np.concatenate([np.zeros((2, 20), dtype=np.int32), ids], axis=1)
    np.testing.assert_allclose(model.predict_on_batch(ids), model.predict_on_batch(wide), atol=1e-5)


def test_length_batches_cover_every_row_once_and_group_similar_lengths() -> None:
    lengths = np.random.default_rng(0).integers(1, 40, size=1000)
    rows = np.arange(1000)
    batches = length_batches(lengths, rows, 32, np.random.default_rng(1), bucketing=True)
    assert sorted(np.concatenate(batches).tolist()) == rows.tolist()
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 10  # unsorted batches of 32 would span ~36
    again = length_batches(lengths, rows, 32, np.random.default_rng(1), bucketing=True)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_same_seed_same_model(dataset_file: Path, tmp_path: Path) -> None:
    params = TINY_PARAMS.with_overrides({"max_rows": 1000, "epochs": 2})
    runs = [train_model(dataset_file, params, tmp_path / f"run{i}", lambda event: None) for i in range(2)]
    first, second = (run.metrics for run in runs)
    assert abs(first["accuracy"] - second["accuracy"]) <= 0.005, (first, second)
    assert abs(first["loss"] - second["loss"]) <= 0.005, (first, second)
    # The trainer writes the payload and hands back its part of the manifest; manifest.json is written
    # once, by whoever publishes the folder, with the checksums.
    assert sorted(p.name for p in (tmp_path / "run0").iterdir()) == sorted(PAYLOAD_FILES)
    assert runs[0].files == {} and runs[0].job_id == "" and runs[0].split["test"] == 200


def test_ngram_linear_sums_the_weights_of_words_and_word_pairs(tmp_path: Path) -> None:
    import keras

    from sentiment.ml.layers import BIGRAM_MULTIPLIER, NGramLinear

    buckets = 101
    layer = NGramLinear(buckets)
    ids = np.array([[0, 0, 5, 9, 3], [0, 0, 0, 0, 7], [0, 0, 0, 0, 0]], dtype=np.int32)
    layer.build(ids.shape)
    weights = np.random.default_rng(0).normal(size=buckets).astype(np.float32)
    layer.kernel.assign(weights)

    def expected(row: list[int]) -> float:
        pairs = [(a * BIGRAM_MULTIPLIER + b) % buckets for a, b in itertools.pairwise(row)]
        return float(sum(weights[i % buckets] for i in row) + sum(weights[p] for p in pairs))

    np.testing.assert_allclose(
        np.asarray(layer(ids)).reshape(-1), [expected([5, 9, 3]), expected([7]), 0.0], rtol=1e-5
    )
    # It survives a save and a load (registered, no Python bytecode in the file).
    inputs = keras.Input(shape=(None,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(ids), model.predict_on_batch(ids), rtol=1e-6)
