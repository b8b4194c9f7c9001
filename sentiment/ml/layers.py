"""Keras layers of this project that a bundle's model may contain.

Importing this module registers them with Keras, so `keras.models.load_model` can rebuild a saved model;
model_svc imports it before loading a bundle, the trainer to build the model. No Lambda layers: a bundle
never carries Python bytecode.
"""

from __future__ import annotations

from typing import Any

import keras

# Multiplier of the left id when a pair is hashed: above any vocabulary id, so every ordered pair (a, b)
# is a distinct key before the modulo (buckets can still collide).
BIGRAM_MULTIPLIER = 1_000_003


@keras.saving.register_keras_serializable(package="sentiment")
class NGramLinear(keras.layers.Layer):  # type: ignore[misc]  # keras ships no types
    """A linear model over a tweet's words and word pairs: token ids [batch, time] -> logit [batch, 1].

    Each token id and each pair of neighbouring ids hashes into one of `buckets` weights (the hashing
    trick: no bigram vocabulary to ship); the logit is the sum of the weights of the tweet's n-grams.
    Padding (id 0), and any pair that touches it, adds nothing, so the padded width never changes a score.
    Beside the LSTM it plays the part of a bag-of-n-grams logistic regression trained jointly with it
    (benchmarks/README.md: +0.6 points held-out accuracy for 4 MB of weights and no measurable latency).
    """

    def __init__(self, buckets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if buckets < 2:
            raise ValueError(f"NGramLinear needs at least 2 buckets, got {buckets}")
        self.buckets = buckets

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(self.buckets,), initializer="zeros", name="kernel")

    def call(self, ids: Any) -> Any:
        return ngram_logit(ids, self.kernel, self.buckets, self.compute_dtype)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, int]:
        return (input_shape[0], 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "buckets": self.buckets}


def ngram_logit(ids: Any, kernel: Any, buckets: Any, dtype: str = "float32") -> Any:
    """NGramLinear's logit [batch, 1] of token ids [batch, time] for a `kernel` of `buckets` weights (also
    what model_svc's fused serving graph computes, with the kernel passed in)."""
    ops = keras.ops
    ids = ops.cast(ids, "int64")
    left, right = ids[:, :-1], ids[:, 1:]
    words = ops.cast(ids > 0, dtype)
    pairs = ops.cast(ops.logical_and(left > 0, right > 0), dtype)
    bigram_ids = (left * BIGRAM_MULTIPLIER + right) % buckets
    total = ops.sum(ops.take(kernel, ids % buckets) * words, axis=1, keepdims=True)
    return total + ops.sum(ops.take(kernel, bigram_ids) * pairs, axis=1, keepdims=True)
