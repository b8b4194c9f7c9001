"""A faster serving graph for the LSTM models train_svc builds: the embedding folded into the LSTM.

Token ids -> Embedding(mask_zero) -> dropout layers -> LSTM -> Dense logit (+ NGramLinear logit) -> sigmoid
is what `train_svc.network.build_model` makes. For that shape, `fused_scores` computes the same scores with
less work a time step: the embedding lookup followed by the LSTM's input kernel is one lookup in a table
computed once at load (`embedding @ kernel + bias`: vocabulary x 4 units floats), so each step does only
the recurrent matmul, and the gates are laid out so that one sigmoid covers three of them. The layers
after the LSTM are the model's own. Any other graph, or a table over the budget, gets None: the Keras
model is then served as it is. `LoadedModel` also compares the two on sample rows before trusting this one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

log = logging.getLogger(__name__)

# The folded table is vocabulary x 4 units float32 (35 MB for the default model's 21.8k words x LSTM 100).
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


def fused_scores(model: Any) -> Scores | None:
    """A tf.function `ids [batch, time] int32 -> scores [batch]` equal to `model`'s, or None (see module)."""
    roles = _layers(model)
    if roles is None:
        return None
    embedding = roles["embedding"].weights[0].numpy()
    weights = [w.numpy() for w in roles["lstm"].weights]
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else np.zeros(kernel.shape[1], dtype=np.float32)
    units = recurrent.shape[0]
    if embedding.shape[0] * kernel.shape[1] * 4 > MAX_TABLE_BYTES:
        log.info("LSTM input table would pass %d MiB; serving the Keras graph", MAX_TABLE_BYTES >> 20)
        return None
    # Keras orders the gates i, f, c, o; here i, f, o (one sigmoid) then c (tanh).
    order = np.r_[0 : 2 * units, 3 * units : 4 * units, 2 * units : 3 * units]
    table = tf.constant((embedding @ kernel + bias)[:, order].astype(np.float32))
    recurrent_kernel = tf.constant(recurrent[:, order].astype(np.float32))
    dense, ngrams = roles["dense"], roles.get("ngrams")

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])  # type: ignore[untyped-decorator]
    def scores(ids: tf.Tensor) -> tf.Tensor:
        steps = tf.transpose(ids)  # time-major: one row of ids a step
        inputs = tf.gather(table, steps)
        masks = tf.expand_dims(steps > 0, -1)
        h = c = tf.zeros([tf.shape(ids)[0], units])
        for t in tf.range(tf.shape(steps)[0]):
            z = inputs[t] + tf.matmul(h, recurrent_kernel)
            gates = tf.sigmoid(z[:, : 3 * units])
            c_next = gates[:, units : 2 * units] * c + gates[:, :units] * tf.tanh(z[:, 3 * units :])
            h_next = gates[:, 2 * units :] * tf.tanh(c_next)
            # A padded step (id 0) leaves the state as it was: the mask Keras applies.
            h = tf.where(masks[t], h_next, h)
            c = tf.where(masks[t], c_next, c)
        logit = dense(h)
        if ngrams is not None:
            logit = logit + ngrams(ids)
        return tf.reshape(tf.sigmoid(logit), [-1])

    fused: Scores = scores
    return fused


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
