"""XLA programs for groups of up to `xla_max_rows` texts: compiled and checked at warm(), run only at the
shapes compiled (a larger group in chunks), and scoring as the graph does, padding and all."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from model_svc.model import XLA_WIDTH_STEP, LoadedModel
from sentiment.bundle import read_local_bundle
from sentiment.synthetic import generate
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def models(tiny_bundle_dir: Path) -> tuple[LoadedModel, LoadedModel]:
    """The tiny model with XLA programs for up to 4 texts, and the same model on the graph alone."""
    xla = LoadedModel(read_local_bundle(tiny_bundle_dir, "v1"), xla_max_rows=4)
    graph = LoadedModel(read_local_bundle(tiny_bundle_dir, "v1"), xla_max_rows=0)
    xla.warm()
    graph.warm()
    return xla, graph


class _Counting:
    """Stands in for a model's XLA function: records each shape it is called with, then calls it."""

    def __init__(self, program: Any) -> None:
        self.program, self.shapes = program, []

    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        self.shapes.append(tuple(ids.shape))
        return self.program(ids)


def test_warm_compiles_every_small_shape_and_nothing_else(models: tuple[LoadedModel, LoadedModel]) -> None:
    xla, graph = models
    widths = range(XLA_WIDTH_STEP, TINY_PARAMS.sequence_length + XLA_WIDTH_STEP, XLA_WIDTH_STEP)
    assert xla.xla_shapes == {(rows, width) for rows in (1, 2, 4) for width in widths}
    assert max(width for _, width in xla.xla_shapes) >= TINY_PARAMS.sequence_length
    assert graph.xla_shapes == frozenset()


def test_every_group_runs_xla_in_chunks_and_scores_as_the_graph(
    models: tuple[LoadedModel, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    xla, graph = models
    counting = _Counting(xla._xla)
    monkeypatch.setattr(xla, "_xla", counting)
    texts = [t.text for t in generate(40, seed=11)] + ["a", "good " * 40, "!!", "what a day :)"]
    for size in (1, 2, 3, 4, 5, 9, len(texts)):  # padded to 1, 2, 4 rows; 5 and more: chunks of 4
        for start in range(0, len(texts) - size + 1, size):
            chunk = texts[start : start + size]
            np.testing.assert_allclose(xla.scores(chunk), graph.scores(chunk), atol=1e-6)
    assert counting.shapes, "no group ran an XLA program"
    assert set(counting.shapes) <= xla.xla_shapes, "an XLA program ran at a shape warm() did not compile"
    widths = {width for _, width in counting.shapes}
    assert len(widths) > 1, "texts of different lengths ran at one width"
    # The same ids through the padded program and the graph, one row at a time and together.
    ids = np.array([[0, 0, 5, 9, 2], [0, 3, 3, 3, 3], [0, 0, 0, 0, 0]], dtype=np.int32)
    np.testing.assert_allclose(xla.score_ids(ids), graph.score_ids(ids), atol=1e-6)
    assert counting.shapes[-1] == (4, XLA_WIDTH_STEP)
    # Ten rows: chunks of 4, 4 and 2, each at its own program, in order.
    rng = np.random.default_rng(3)
    ids = np.where(rng.random((10, 6)) < 0.3, 0, rng.integers(2, len(xla.bundle.vocabulary), (10, 6)))
    ids = ids.astype(np.int32)
    counting.shapes.clear()
    np.testing.assert_allclose(xla.score_ids(ids), graph.score_ids(ids), atol=1e-6)
    assert counting.shapes == [(4, XLA_WIDTH_STEP), (4, XLA_WIDTH_STEP), (2, XLA_WIDTH_STEP)]


def test_xla_programs_that_disagree_with_the_graph_are_not_served(
    tiny_bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = LoadedModel(read_local_bundle(tiny_bundle_dir, "v1"), xla_max_rows=1)
    program = model._xla
    model._xla = lambda ids: program(ids) + 1e-3
    with caplog.at_level(logging.WARNING, logger="model_svc.model"):
        model.warm()
    assert model.xla_shapes == frozenset()
    assert "XLA's programs are off by" in caplog.text
    texts = [t.text for t in generate(8, seed=2)]
    _, keras_scores = model.reference_scores(texts)
    np.testing.assert_allclose(model.scores(texts), keras_scores, atol=1e-5)


def test_a_second_model_of_the_same_size_reuses_the_compiled_programs(
    models: tuple[LoadedModel, LoadedModel], tiny_bundle_dir: Path
) -> None:
    """One XLA function a process for each LSTM size (TensorFlow never frees a compiled program): the
    next version's warm() finds every program compiled. The module's first model compiled them all."""
    first = models[0]
    second = LoadedModel(read_local_bundle(tiny_bundle_dir, "v2"), xla_max_rows=4)
    second.warm()
    assert second.xla_shapes == first.xla_shapes
    assert second.xla_compile_s * 5 < first.xla_compile_s, (second.xla_compile_s, first.xla_compile_s)
    texts = [t.text for t in generate(16, seed=4)]
    np.testing.assert_allclose(second.scores(texts), first.scores(texts), atol=1e-6)
