"""The training recipe: Sentiment140 CSV -> tokens -> Word2Vec -> Keras LSTM -> evaluated bundle folder.

Runs in a child process (it holds the CPU and the GIL for minutes); everything it reports goes through the
`progress` callback, and `should_stop` is polled between batches so a cancel takes effect quickly.
No gRPC and no store here: the job runner fetches the dataset and publishes the folder this writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sentiment.bundle import MODEL_FILE, Preprocessing, Thresholds, write_bundle_files
from sentiment.dataset import ReadStats, load_sample
from sentiment.errors import InvalidDataset
from sentiment.text import FIRST_WORD_ID, TextConfig, Vocabulary, encode, tokenize
from train_svc.params import TrainParams

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
TEST_SHARE = 0.2
VALIDATION_SHARE = 0.1  # of what is left after the test split


class Cancelled(Exception):
    """Raised inside the trainer when `should_stop()` turned true."""


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded 72/8/20 train/validation/test split of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_SHARE)
    n_val = round((n - n_test) * VALIDATION_SHARE)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def binary_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    predicted = scores >= 0.5
    actual = y_true.astype(bool)
    tp = float(np.sum(predicted & actual))
    fp = float(np.sum(predicted & ~actual))
    fn = float(np.sum(~predicted & actual))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(predicted == actual)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def train(
    dataset_path: Path,
    params: TrainParams,
    out_dir: Path,
    progress: Progress,
    should_stop: Callable[[], bool] = lambda: False,
    text_config: TextConfig = TextConfig(),
    thresholds: Thresholds = Thresholds(),
) -> dict[str, Any]:
    """Train, evaluate on the held-out split and write a bundle folder; returns the manifest fields.

    Raises InvalidDataset for unusable data and Cancelled when `should_stop()` turns true.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    timings: dict[str, float] = {}

    def check_stop() -> None:
        if should_stop():
            raise Cancelled("cancelled by request")

    progress({"stage": "read"})
    stats = ReadStats()
    texts, labels = load_sample(dataset_path, params.max_rows, params.seed, stats)
    progress({"stage": "read", "rows_read": stats.rows_read, "malformed_rows": stats.malformed_rows})
    if len(set(labels)) < 2 or len(texts) < 10:
        raise InvalidDataset(f"need at least 10 rows with both labels, got {len(texts)} usable rows")
    tokens = [tokenize(t, text_config) for t in texts]
    y = np.asarray(labels, dtype=np.float32)
    train_idx, val_idx, test_idx = split_indices(len(tokens), params.seed)
    timings["read_s"] = time.monotonic() - started
    check_stop()

    progress({"stage": "word2vec"})
    t0 = time.monotonic()
    from gensim.models import Word2Vec

    w2v = Word2Vec(
        sentences=[tokens[i] for i in train_idx],
        vector_size=params.embedding_dim,
        window=7,
        min_count=params.w2v_min_count,
        epochs=params.w2v_epochs,
        workers=max(1, len(os.sched_getaffinity(0))),
        seed=params.seed,
    )
    vocab = Vocabulary(list(w2v.wv.index_to_key))
    embedding = np.zeros((len(vocab), params.embedding_dim), dtype=np.float32)
    embedding[FIRST_WORD_ID:] = w2v.wv.vectors
    timings["word2vec_s"] = time.monotonic() - t0
    check_stop()

    progress({"stage": "fit", "epoch": 0, "epochs": params.epochs})
    t0 = time.monotonic()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    x = encode(tokens, vocab, params.sequence_length)
    model = build_model(embedding, params)

    class Report(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if should_stop():
                self.model.stop_training = True
                raise Cancelled("cancelled by request")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            progress(
                {
                    "stage": "fit",
                    "epoch": epoch + 1,
                    "epochs": params.epochs,
                    "loss": float(logs.get("loss", 0.0)),
                    "accuracy": float(logs.get("val_accuracy", 0.0)),
                }
            )

    history = model.fit(
        x[train_idx],
        y[train_idx],
        validation_data=(x[val_idx], y[val_idx]),
        epochs=params.epochs,
        batch_size=params.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[
            Report(),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_lr=1e-4),
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3, restore_best_weights=True),
        ],
    )
    timings["fit_s"] = time.monotonic() - t0
    epochs_run = len(history.history.get("loss", []))
    timings["tweets_per_s_per_epoch"] = len(train_idx) * epochs_run / max(timings["fit_s"], 1e-9)
    check_stop()

    progress({"stage": "evaluate"})
    t0 = time.monotonic()
    x_test, y_test = x[test_idx], y[test_idx]
    scores = model.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
    loss = float(keras.losses.binary_crossentropy(tf.constant(y_test), tf.constant(scores)).numpy())
    metrics = {
        **binary_metrics(y_test, scores),
        "loss": loss,
        "rows_used": len(texts),
        "test_rows": len(test_idx),
    }
    timings["evaluate_s"] = time.monotonic() - t0

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    preprocessing = Preprocessing(text_config, params.sequence_length, thresholds)
    manifest = {
        "metrics": metrics,
        "params": params.to_dict(),
        "text": text_config.to_dict(),
        "thresholds": {"negative_max": thresholds.negative_max, "positive_min": thresholds.positive_min},
        "vocabulary_size": len(vocab),
        "epochs_run": epochs_run,
        "dataset_rows": {
            "read": stats.rows_read,
            "malformed": stats.malformed_rows,
            **{("negative" if k == 0 else "positive"): v for k, v in stats.by_label.items()},
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    write_bundle_files(out_dir, vocab, preprocessing, manifest)
    log.info(
        "trained: accuracy %.4f f1 %.4f in %.1fs",
        metrics["accuracy"],
        metrics["f1"],
        time.monotonic() - started,
    )
    return manifest


def build_model(embedding: np.ndarray, params: TrainParams) -> Any:
    """Frozen Word2Vec embedding -> Dropout 0.5 -> LSTM -> Dense sigmoid; ids 0 are masked padding."""
    import keras

    inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(
        embedding.shape[0],
        embedding.shape[1],
        embeddings_initializer=keras.initializers.Constant(embedding),
        trainable=True,
        mask_zero=True,
        name="word2vec",
    )(inputs)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.LSTM(params.lstm_units)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model(inputs, outputs, name="sentiment_lstm")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model
