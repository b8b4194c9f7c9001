"""A faster serving graph for the LSTM models train_svc builds: the embedding folded into the LSTM.

Token ids -> Embedding(mask_zero) -> dropout layers -> LSTM -> Dense logit (+ NGramLinear logit) -> sigmoid
is what `train_svc.network.build_model` makes. For that shape, `fused_scores` computes the same scores with
less work a time step: the embedding lookup followed by the LSTM's input kernel is one lookup in a table
computed once at load (`embedding @ kernel + bias`: vocabulary x 4 units floats), so each step does only
the recurrent matmul, and the gates are laid out so that one sigmoid covers three of them. The layers
after the LSTM are computed from their weights as their layers do. A second function is the same run by
XLA (`_xla_scores`: shared by every model of one LSTM size in the process). Any other graph, or a table over the
budget, gets None: the Keras model is then served as it is. `LoadedModel` also compares them with Keras on
sample rows before trusting them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

from sentiment.ml.layers import ngram_logit

log = logging.getLogger(__name__)

# The folded table is vocabulary x 4 units float32, its rows padded to a power of two (see _xla_scores): 52 MB
# for the default model's 21.8k words (32k rows) x LSTM 100.
MAX_TABLE_BYTES = 256 << 20
DROPOUTS = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise")

Scores = Callable[[tf.Tensor], tf.Tensor]


def _layers(model: Any) -> dict[str, Any] | None:
    """The model's layers by role when they read as build_model's graph, else None."""
    kinds = [type(layer).__name__ for layer in model.layers]
    roles: dict[str, Any] = {}
    for kind, layer in zip(kinds, model.layers, strict=True):
        if kind == "InputLayer" or kind in DROPOUTS:
            continue
        role = {
            "Embedding": "embedding",
            "LSTM": "lstm",
            "Dense": "dense",
            "NGramLinear": "ngrams",
            "Add": "add",
            "Activation": "sigmoid",
        }.get(kind)
        if role is None or role in roles:
            return None
        roles[role] = layer
    if not {"embedding", "lstm", "dense", "sigmoid"} <= roles.keys() or ("ngrams" in roles) != (
        "add" in roles
    ):
        return None
    lstm, embedding = roles["lstm"], roles["embedding"]
    config = lstm.get_config()
    plain = (
        config.get("activation") == "tanh"
        and config.get("recurrent_activation") == "sigmoid"
        and not config.get("return_sequences")
        and not config.get("go_backwards")
        and not config.get("stateful")
        and embedding.get_config().get("mask_zero")
        and roles["sigmoid"].get_config().get("activation") == "sigmoid"
        and roles["dense"].get_config().get("activation") == "linear"
    )
    return roles if plain else None


def _lstm(inputs: tf.Tensor, masks: tf.Tensor, recurrent_kernel: tf.Tensor, units: int) -> tf.Tensor:
    """The LSTM's last state over time-major `inputs` [time, batch, 4 units] (the table's rows, gates i, f,
    o, c), a padded step (mask False) leaving the state as it was: the mask Keras applies."""
    h = c = tf.zeros([tf.shape(inputs)[1], units])
    for t in tf.range(tf.shape(inputs)[0]):
        z = inputs[t] + tf.matmul(h, recurrent_kernel)
        gates = tf.sigmoid(z[:, : 3 * units])
        c_next = gates[:, units : 2 * units] * c + gates[:, :units] * tf.tanh(z[:, 3 * units :])
        h_next = gates[:, 2 * units :] * tf.tanh(c_next)
        h = tf.where(masks[t], h_next, h)
        c = tf.where(masks[t], c_next, c)
    return h


def _scores(
    ids: tf.Tensor,
    table: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    dense: tuple[tf.Tensor, tf.Tensor],
    ngrams: tuple[tf.Tensor, Any] | None,
    units: int,
) -> tf.Tensor:
    """build_model's scores of `ids` [batch, time], the weights passed in: the folded table, the LSTM's
    recurrent kernel, the Dense layer's (kernel, bias), NGramLinear's (kernel, buckets) or None."""
    steps = tf.transpose(ids)  # time-major: one row of ids a step
    h = _lstm(tf.gather(table, steps), tf.expand_dims(steps > 0, -1), recurrent_kernel, units)
    logit = tf.matmul(h, dense[0]) + dense[1]
    if ngrams is not None:
        logit = logit + ngram_logit(ids, *ngrams)
    return tf.reshape(tf.sigmoid(logit), [-1])


_XLA_SCORES: dict[tuple[int, bool], Any] = {}
_XLA_SCORES_LOCK = threading.Lock()


def _xla_scores(units: int, ngrams: bool) -> Any:
    """`_scores` as XLA programs (one a shape of every argument, compiled on its first call): ONE function
    a process for each LSTM size, since TensorFlow keeps every program it compiled for good, keyed by the
    function and the shapes. With a function a model (measured, the default model reloaded 6 times), each
    reload compiled its 30 programs anew (11 s) and RSS grew ~56 MiB a reload; shared, a model of a size
    served before finds them compiled (0.1 s) and RSS levels off. The table's rows are padded to a power
    of two so that a new vocabulary mostly has the same shape."""
    with _XLA_SCORES_LOCK:
        if (units, ngrams) not in _XLA_SCORES:
            specs = [
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None, 4 * units], tf.float32),
                tf.TensorSpec([units, 4 * units], tf.float32),
                tf.TensorSpec([units, 1], tf.float32),
                tf.TensorSpec([1], tf.float32),
            ]

            def scores(ids: Any, table: Any, recurrent: Any, kernel: Any, bias: Any, *ngram: Any) -> Any:
                grams = (ngram[0], tf.shape(ngram[0], out_type=tf.int64)[0]) if ngram else None
                return _scores(ids, table, recurrent, (kernel, bias), grams, units)

            extra = [tf.TensorSpec([None], tf.float32)] if ngrams else []
            _XLA_SCORES[units, ngrams] = tf.function(
                scores, jit_compile=True, input_signature=specs + extra
            ).get_concrete_function()
        return _XLA_SCORES[units, ngrams]


def fused_scores(model: Any) -> tuple[Scores, Scores] | None:
    """Two functions `ids [batch, time] int32 -> scores [batch]` equal to `model`'s: the graph (a
    tf.function), and the same run by XLA (`_xla_scores`); or None (see module)."""
    roles = _layers(model)
    if roles is None:
        return None
    embedding = roles["embedding"].weights[0].numpy()
    weights = [w.numpy() for w in roles["lstm"].weights]
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else np.zeros(kernel.shape[1], dtype=np.float32)
    units = recurrent.shape[0]
    rows = 1 << max(embedding.shape[0] - 1, 1).bit_length()
    if rows * kernel.shape[1] * 4 > MAX_TABLE_BYTES:
        log.info("LSTM input table would pass %d MiB; serving the Keras graph", MAX_TABLE_BYTES >> 20)
        return None
    # Keras orders the gates i, f, c, o; here i, f, o (one sigmoid) then c (tanh).
    order = np.r_[0 : 2 * units, 3 * units : 4 * units, 2 * units : 3 * units]
    folded = np.zeros((rows, 4 * units), dtype=np.float32)
    folded[: embedding.shape[0]] = (embedding @ kernel + bias)[:, order]
    table = tf.constant(folded)
    recurrent_kernel = tf.constant(recurrent[:, order].astype(np.float32))
    dense_weights = [w.numpy().astype(np.float32) for w in roles["dense"].weights]
    dense = (
        tf.constant(dense_weights[0]),
        tf.constant(dense_weights[1] if len(dense_weights) > 1 else np.zeros(1, dtype=np.float32)),
    )
    layer = roles.get("ngrams")
    ngrams = None if layer is None else (tf.constant(layer.kernel.numpy()), layer.buckets)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])  # type: ignore[untyped-decorator]
    def graph(ids: tf.Tensor) -> tf.Tensor:
        return _scores(ids, table, recurrent_kernel, dense, ngrams, units)

    program = _xla_scores(units, ngrams is not None)
    arguments = (table, recurrent_kernel, *dense, *([] if ngrams is None else [ngrams[0]]))

    def xla(ids: tf.Tensor) -> tf.Tensor:
        return program(ids, *arguments)

    fused: Scores = graph
    return fused, xla


def max_difference(first: Scores, second: Scores, vocabulary_size: int, width: int) -> float:
    """The largest score difference of two graphs over sample rows: one short row, and 16 of every length
    up to `width` (how `LoadedModel` checks a fused graph before serving it)."""
    diff = 0.0
    for ids in (sample_ids(vocabulary_size, 3, rows=1), sample_ids(vocabulary_size, width)):
        matrix = tf.constant(ids)
        diff = max(diff, float(np.max(np.abs(first(matrix).numpy() - second(matrix).numpy()))))
    return diff


def sample_ids(vocabulary_size: int, width: int, rows: int = 16, seed: int = 0) -> np.ndarray:
    """Pre-padded id rows of every length from 0 to `width`: what a check of a serving graph runs on."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, max(vocabulary_size, 2), size=(rows, width)).astype(np.int32)
    for row in range(rows):
        ids[row, : rng.integers(0, width + 1)] = 0
    return ids
