"""The fused serving graph: the same scores as the Keras model, and the Keras model kept for any other graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from model_svc.fused import fused_scores, max_difference, sample_ids
from model_svc.model import FUSED_TOLERANCE, LoadedModel
from sentiment.bundle import read_local_bundle
from tests.conftest import TINY_PARAMS
from train_svc.network import build_model
from train_svc.params import Recipe


def test_the_served_graph_is_the_fused_one_and_scores_as_keras(tiny_bundle_dir: Path) -> None:
    model = LoadedModel(read_local_bundle(tiny_bundle_dir, "v1"))
    assert model.fused, "the tiny model has build_model's shape: it is served fused"
    width = model.sequence_length
    ids = sample_ids(len(model.bundle.vocabulary), width, rows=64, seed=3)
    ids[0] = 0  # an empty tweet: every step padded
    keras_scores = model.keras_model.predict(ids, batch_size=len(ids), verbose=0).reshape(-1)
    np.testing.assert_allclose(model.score_ids(ids), keras_scores, atol=1e-5)
    for n in (1, 2, 7):  # widths below the sequence length, as length grouping pads them
        np.testing.assert_allclose(
            model.score_ids(ids[:, -n:]),
            model.keras_model.predict(ids[:, -n:], verbose=0).reshape(-1),
            atol=1e-5,
        )


def test_other_graphs_are_served_as_keras_builds_them() -> None:
    for recipe in (Recipe(bidirectional=True), Recipe(ngram_buckets=0, bidirectional=True)):
        assert fused_scores(build_model(50, TINY_PARAMS, recipe)) is None
    plain = build_model(50, TINY_PARAMS, Recipe(ngram_buckets=0))
    assert fused_scores(plain) is not None, "without the n-gram part the graph is still build_model's"


def test_a_fused_graph_that_disagrees_is_caught(tiny_bundle_dir: Path) -> None:
    model = LoadedModel(read_local_bundle(tiny_bundle_dir, "v1"))
    keras_model = model.keras_model
    vocabulary = len(model.bundle.vocabulary)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])  # type: ignore[untyped-decorator]
    def keras_graph(ids: tf.Tensor) -> tf.Tensor:
        return tf.reshape(keras_model(ids, training=False), [-1])

    both = fused_scores(keras_model)
    assert both is not None
    fused = both[0]
    assert max_difference(fused, keras_graph, vocabulary, model.sequence_length) <= FUSED_TOLERANCE

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])  # type: ignore[untyped-decorator]
    def off_by_a_little(ids: tf.Tensor) -> tf.Tensor:
        return fused(ids) + 1e-3

    assert max_difference(off_by_a_little, keras_graph, vocabulary, model.sequence_length) > FUSED_TOLERANCE
