"""A bundle loaded for serving: the Keras model behind compiled TensorFlow functions, plus its text pipeline.

`predict_texts` is what the inference thread runs for each batch: tokenize with the bundle's settings,
group the texts by token count so short tweets are not padded to long ones, and score each group. A group
runs in chunks of at most `xla_max_rows` texts through XLA programs compiled for each chunk's shape rounded
up (rows to a power of two, width to a multiple of XLA_WIDTH_STEP), every such shape compiled by `warm`
before the model serves; a group wider than the programs runs the traced graph, whatever its shape. The
model masks id 0, so the padding (rows and width) does not change a score.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model_svc.config import DEFAULT_XLA_MAX_ROWS
from model_svc.fused import fused_scores, max_difference, sample_ids
from sentiment.bundle import DEFAULT_LIMITS, LocalBundle, Thresholds
from sentiment.errors import BundleError
from sentiment.prediction import Prediction
from sentiment.text import encode, tokenize

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

log = logging.getLogger(__name__)

# Default cost model of one compiled call, in "row-steps" (one text through one LSTM step): a call costs
# about 1000 row-steps and a time step about 60 whatever the batch (measured on the tiny test model).
# `LoadedModel.warm` measures the model it loads and replaces these.
CALL_COST = 1000.0
STEP_COST = 60.0
FUSED_TOLERANCE = 1e-5  # largest score difference accepted between the fused and the Keras graph
TYPICAL_TOKENS = 8  # fewer than most tweets have: the expected batch time stays a lower bound
# XLA runs the LSTM's steps as one compiled loop where the graph executor spends ~20 us a step on control
# flow. Measured on the default model, one core, the fused function alone at widths 16-40: 2.1-2.4x the
# graph for 16 rows, 1.7-2.0x for 32, 1.2-1.6x for 64-256. Each shape is compiled apart (~0.4 s; the default
# model's 30 take ~100 MiB, once a process: model_svc.fused), so programs go only up to `xla_max_rows` rows,
# and a larger group runs as chunks of that many: XLA's time a row does not fall past ~32 rows (12-14 us at
# width 16, 17-25 at 24, 28-38 at 40, for 32 to 256 rows), so 8 chunks of 32 rows take 0.8-1.0x one program
# of 256, and no group pads more than its last chunk's rows. Widths go in steps of 8 as rows go in powers of
# two: finer steps would cost more programs. Wider groups (long sequence lengths) run the graph.
XLA_WIDTH_STEP = 8
XLA_MAX_WIDTH = 64


def configure_threads(intra_op: int, inter_op: int) -> bool:
    """Size TensorFlow's thread pools to the container; must run before the first TF op.

    Returns False (and logs) when TF was already initialised in this process, e.g. by an earlier server.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        current = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
        if current != (intra_op, inter_op):
            log.warning(
                "TensorFlow already initialised with intra/inter op threads %s; keeping them", current
            )
        return False
    return True


def group_by_length(
    lengths: Sequence[int], call_cost: float = CALL_COST, step_cost: float = STEP_COST
) -> list[np.ndarray]:
    """Indices of `lengths` split into groups of similar length, each to be padded to its longest.

    Sorted by length, then cut so that sum(call_cost + width * (step_cost + rows)) over the groups is least
    (dynamic programming over the distinct lengths, at most sequence_length of them). The graph's cost
    model, also where XLA runs the groups: costing XLA's programs apart (measured per shape) doubled
    the time this takes and cut a few more groups than paid (0.79x at 16 texts), and grouping by width
    rounded to XLA_WIDTH_STEP under a cost model fitted to the programs was 0.94-0.98x at 2-16 texts for
    1.02-1.06x at 64-1024.
    """
    if len(lengths) == 1:  # a lone caller's text: nothing to split (the search takes ~10 us)
        return [np.zeros(1, dtype=np.int64)]
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    widths, starts = np.unique(sorted_lengths, return_index=True)
    ends = np.append(starts[1:], len(sorted_lengths))
    n = len(widths)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):  # groups end at distinct length j-1 (padded to widths[j-1])
        width = max(int(widths[j - 1]), 1)
        rows = ends[j - 1] - starts[:j]  # the group spans distinct lengths i..j-1, for each i < j
        costs = best[:j] + call_cost + width * (step_cost + rows)
        cut[j] = np.argmin(costs)  # the lowest i on a tie
        best[j] = costs[cut[j]]
    groups = []
    j = n
    while j > 0:
        i = int(cut[j])
        groups.append(order[starts[i] : ends[j - 1]])
        j = i
    return groups[::-1]


def _check_fits(model: Any, bundle: LocalBundle, max_weight_bytes: int) -> None:
    """The model takes int ids of one sequence, every vocabulary id has an embedding row, and its weights
    stay within the budget; otherwise a bundle could load and then fail (or answer nonsense) on every batch."""
    weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    if weight_bytes > max_weight_bytes:
        raise BundleError(
            f"model {bundle.version}: weights take {weight_bytes:,} bytes, more than {max_weight_bytes:,}"
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BundleError(f"model {bundle.version}: expected one input and one output")
    rows = [layer.input_dim for layer in model.layers if hasattr(layer, "input_dim")]
    if not rows or min(rows) < len(bundle.vocabulary):
        raise BundleError(
            f"model {bundle.version}: its embedding has {min(rows, default=0):,} rows for a vocabulary of "
            f"{len(bundle.vocabulary):,} ids"
        )


def _round_width(width: int) -> int:
    """`width` rounded up to a multiple of XLA_WIDTH_STEP: the width of the XLA program it runs in."""
    return -(-width // XLA_WIDTH_STEP) * XLA_WIDTH_STEP


def _least_time(run: Callable[[], object], times: int = 3) -> float:
    """The least of `times` timed runs, in seconds."""
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        run()
        took.append(time.perf_counter() - t0)
    return min(took)


class LoadedModel:
    """A verified bundle in memory. Thread-safe to call; the server calls it from one thread."""

    def __init__(
        self,
        bundle: LocalBundle,
        max_weight_bytes: int = DEFAULT_LIMITS.max_model_bytes,
        xla_max_rows: int = DEFAULT_XLA_MAX_ROWS,
    ) -> None:
        """Load the verified bundle's model; BundleError when it does not fit its vocabulary or the weight
        budget (the archive was size-checked before; this checks what Keras actually built).

        `xla_max_rows` (0 or a power of two): the largest group `warm` compiles XLA programs for; 0, none.
        """
        import keras

        import sentiment.ml.layers  # noqa: F401  (registers the bundle's custom layers for loading)

        started = time.monotonic()
        self.bundle = bundle
        self.version = bundle.version
        self.thresholds: Thresholds = bundle.preprocessing.thresholds
        self.sequence_length = bundle.preprocessing.sequence_length
        self._text_config = bundle.preprocessing.text
        self._vocabulary = bundle.vocabulary
        # safe_mode: a bundle is store data, so no Lambda layer may bring code with it.
        self.keras_model: Any = keras.models.load_model(bundle.model_path, compile=False, safe_mode=True)
        model = self.keras_model
        _check_fits(model, bundle, max_weight_bytes)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])  # type: ignore[untyped-decorator]
        def scores(ids: tf.Tensor) -> tf.Tensor:
            return tf.reshape(model(ids, training=False), [-1])

        self._scores = scores
        self.fused = False  # True when the fused graph (model_svc.fused) serves, checked against Keras
        self._xla: Any = None  # the fused graph with its LSTM loop as XLA programs (model_svc.fused)
        fused = fused_scores(model)
        if fused is not None:
            diff = max_difference(fused[0], scores, len(self._vocabulary), max(self.sequence_length, 2))
            if diff <= FUSED_TOLERANCE:
                self._scores, self._xla, self.fused = fused[0], fused[1], True
            else:
                log.warning("model %s: the fused graph is off by %.2g; serving Keras's", self.version, diff)
        # The traced graph itself: a call skips tf.function's argument binding (~0.1 ms of a 1 ms call).
        self._scores = self._scores.get_concrete_function()
        self.xla_max_rows = xla_max_rows if self._xla is not None else 0
        # The shapes warm() compiled and checked: only those are ever run by XLA, so no caller pays for
        # a compilation.
        self.xla_shapes: frozenset[tuple[int, int]] = frozenset()
        self.xla_compile_s = 0.0  # what compiling (or finding compiled) and checking them took
        self.call_cost, self.step_cost = CALL_COST, STEP_COST
        self.call_s = self.text_s = 0.0  # measured by warm()
        self.load_s = time.monotonic() - started

    def warm(self) -> float:
        """Run the graph at a few shapes and fit the grouping's cost model to it, compile and check the XLA
        programs, and time the batch function on one typical tweet (what a deadline is held to,
        `expected_batch_s`).

        Done before the model is swapped in, so no caller pays for a first call.
        """
        started = time.monotonic()
        length, rows = max(self.sequence_length, 2), 256

        def graph(n: int, width: int) -> Callable[[], object]:  # as a group runs, from numpy
            ids = np.ones((n, width), dtype=np.int32)
            return lambda: self._scores(tf.constant(ids)).numpy()

        one_short, one_long, many_long = (
            _least_time(graph(1, 1)),
            _least_time(graph(1, length)),
            _least_time(graph(rows, length)),
        )
        row = (many_long - one_long) / ((rows - 1) * length)
        step = (one_long - one_short) / (length - 1) - row
        call = one_short - step - row
        if row > 0 and step > 0 and call > 0:
            self.call_cost, self.step_cost = call / row, step / row
        self._compile()
        # What a deadline is held to: the whole batch function (tokenize, group, encode, the graph, labels)
        # on one typical tweet, least of a few runs. Held to the graph alone at one token (about half of
        # it for the tests' tiny model), 1 ms deadlines were often computed and then missed.
        typical = " ".join(["word"] * TYPICAL_TOKENS)
        self.call_s = _least_time(lambda: self.predict_texts([typical]), times=5)
        self.text_s = max(row, 0.0) * TYPICAL_TOKENS
        log.debug(
            "cost model of %s: call %.3f ms, step %.1f us, row-step %.2f us; one text %.2f ms",
            self.version,
            call * 1e3,
            step * 1e6,
            row * 1e6,
            self.call_s * 1e3,
        )
        return time.monotonic() - started

    def expected_batch_s(self, texts: int) -> float:
        """The least time a batch of `texts` typical tweets takes (the batch function on one, plus each
        further text's rows), from warm()."""
        return self.call_s + max(texts - 1, 0) * self.text_s

    def _compile(self) -> None:
        """Compile (or find compiled, model_svc.fused) an XLA program for each shape of at most
        `xla_max_rows` rows (a power of two) and a width of a multiple of XLA_WIDTH_STEP up to the sequence
        length (rounded up) or XLA_MAX_WIDTH, and check each against the graph: on any difference past
        FUSED_TOLERANCE the graph serves alone."""
        if not self.xla_max_rows:
            return
        started = time.monotonic()
        top = min(_round_width(self.sequence_length), XLA_MAX_WIDTH)
        widths = range(XLA_WIDTH_STEP, top + 1, XLA_WIDTH_STEP)
        rows = [1 << i for i in range(self.xla_max_rows.bit_length())]
        samples = {
            (n, width): tf.constant(sample_ids(len(self._vocabulary), width, rows=n, seed=n))
            for n in rows
            for width in widths
        }
        diff = max(
            float(np.max(np.abs(self._xla(ids).numpy() - self._scores(ids).numpy())))
            for ids in samples.values()
        )
        if diff > FUSED_TOLERANCE:
            log.warning("model %s: XLA's programs are off by %.2g; serving the graph", self.version, diff)
            return
        self.xla_shapes = frozenset(samples)
        self.xla_compile_s = time.monotonic() - started
        log.info(
            "model %s: %d XLA programs (up to %d texts, %d tokens) ready in %.1fs",
            self.version,
            len(samples),
            rows[-1],
            top,
            self.xla_compile_s,
            extra={"model_version": self.version},
        )

    def score_ids(self, ids: np.ndarray) -> np.ndarray:
        """Scores of an int32 id matrix (pre-padded with 0): through XLA programs when warm() compiled
        them for its width rounded up, in chunks of at most `xla_max_rows` rows (each padded to the next
        compiled shape with rows and leading columns of 0s), else through the graph."""
        n, width = ids.shape
        top, padded_width = self.xla_max_rows, _round_width(width)
        if (top, padded_width) not in self.xla_shapes:
            result: np.ndarray = self._scores(tf.constant(ids, dtype=tf.int32)).numpy()
            return result
        if n <= top:
            return self._score_xla(ids, padded_width)
        return np.concatenate([self._score_xla(ids[i : i + top], padded_width) for i in range(0, n, top)])

    def _score_xla(self, ids: np.ndarray, padded_width: int) -> np.ndarray:
        """Scores of at most `xla_max_rows` rows through the program of their shape rounded up."""
        n, width = ids.shape
        padded = np.zeros((1 << max(n - 1, 0).bit_length(), padded_width), dtype=np.int32)
        padded[:n, padded_width - width :] = ids
        return np.asarray(self._xla(tf.constant(padded)).numpy()[:n])

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Sigmoid score of each text, computed in groups of similar token count."""
        config, vocabulary, limit = self._text_config, self._vocabulary, self.sequence_length
        tokens = [tokenize(text, config) for text in texts]
        lengths = [min(len(t), limit) for t in tokens]
        out = np.empty(len(texts), dtype=np.float32)
        for group in group_by_length(lengths, self.call_cost, self.step_cost):
            width = max(lengths[i] for i in group)
            out[group] = self.score_ids(encode([tokens[i] for i in group], vocabulary, limit, pad_to=width))
        return out

    def predict_texts(self, texts: Sequence[str]) -> list[Prediction]:
        """Label, score and version for each text, in order."""
        label = self.thresholds.label
        version = self.version
        return [Prediction(label(s), s, version) for s in self.scores(texts).tolist()]

    def reference_scores(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores the plain ways, for tests: (each text alone through the compiled function, and all texts
        through Keras `predict`), both padded to the full sequence length with no length grouping."""
        config, vocabulary, limit = self._text_config, self._vocabulary, self.sequence_length
        matrix = encode([tokenize(t, config) for t in texts], vocabulary, limit)
        one_by_one = np.array([self.score_ids(matrix[i : i + 1])[0] for i in range(len(texts))])
        keras_scores = self.keras_model.predict(matrix, batch_size=len(texts), verbose=0).reshape(-1)
        return one_by_one, keras_scores
