"""The training recipe: Sentiment140 CSV -> tokens -> Word2Vec -> Keras LSTM -> evaluated bundle folder.

Runs in a child process (it holds the CPU and the GIL for minutes); everything it reports goes through the
`progress` callback, and `should_stop` is polled between batches so a cancel takes effect quickly.
No gRPC and no store here: the job runner fetches the dataset and publishes the folder this writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sentiment.bundle import MODEL_FILE, Preprocessing, Thresholds, write_bundle_files
from sentiment.dataset import DEFAULT_LIMITS, DatasetLimits, ReadStats, load_sample, sample_notice
from sentiment.errors import InvalidDataset
from sentiment.text import FIRST_WORD_ID, TextConfig, Vocabulary, encode, tokenize
from train_svc.params import DEFAULT_RECIPE, Recipe, TrainParams

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
TEST_SHARE = 0.2
VALIDATION_SHARE = 0.1  # of what is left after the test split
BUCKET_BATCHES = 16  # length bucketing sorts windows of this many batches
PREDICT_BATCH = 4096


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


def length_batches(
    lengths: np.ndarray, rows: np.ndarray, batch_size: int, rng: np.random.Generator | None, bucketing: bool
) -> list[np.ndarray]:
    """Row indices cut into batches; with `bucketing`, rows of similar length share a batch.

    With an `rng` the rows are shuffled, then sorted by length within windows of BUCKET_BATCHES
    batches, and the batches shuffled again: each epoch differs, yet a batch rarely pads far beyond its
    longest tweet. Without one the order is deterministic (validation, evaluation).
    """
    rows = rng.permutation(rows) if rng is not None else np.asarray(rows)
    if not bucketing:
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    window = batch_size * BUCKET_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _dataset(
    x: np.ndarray, y: np.ndarray, rows: np.ndarray, batch_size: int, seed: int | None, bucketing: bool
) -> Any:
    """A tf.data pipeline of (ids, labels) batches, each cut to its longest tweet; reshuffled per epoch."""
    import tensorflow as tf

    lengths = np.count_nonzero(x, axis=1)
    epoch = iter(range(1 << 30))
    n_batches = -(-len(rows) // batch_size)  # bucketing windows are whole batches: same count either way

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = None if seed is None else np.random.default_rng([seed, next(epoch)])
        for batch in length_batches(lengths, rows, batch_size, rng, bucketing):
            width = max(1, int(lengths[batch].max())) if bucketing else x.shape[1]
            yield x[batch, -width:], y[batch]

    spec = (tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None,), tf.float32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return dataset.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def predict_scores(model: Any, x: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Scores of every row, computed on length-sorted batches cut to their longest tweet.

    One function traced once for any batch shape (as model_svc serves it), rather than `predict_on_batch`,
    which retraces for every width.
    """
    import tensorflow as tf

    score = tf.function(
        lambda ids: model(ids, training=False), input_signature=[tf.TensorSpec([None, None], tf.int32)]
    )
    lengths = np.count_nonzero(x, axis=1)
    order = np.argsort(lengths, kind="stable")
    scores = np.zeros(len(x), dtype=np.float32)
    for start in range(0, len(x), batch_size):
        rows = order[start : start + batch_size]
        width = max(1, int(lengths[rows].max()))
        scores[rows] = np.asarray(score(x[rows, -width:])).reshape(-1)
    return scores


def train(
    dataset_path: Path,
    params: TrainParams,
    out_dir: Path,
    progress: Progress,
    should_stop: Callable[[], bool] = lambda: False,
    text_config: TextConfig = TextConfig(),
    thresholds: Thresholds = Thresholds(),
    recipe: Recipe = DEFAULT_RECIPE,
    limits: DatasetLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Train, evaluate on the held-out split and write a bundle folder; returns the manifest fields.

    Deterministic for a given `params.seed` and data. Reads at most `limits` of the dataset (more rows
    than `limits.max_rows` are sampled, and the manifest's and the progress event's `notice` says so).
    Raises InvalidDataset for unusable data (or one past `limits.max_bytes`) and Cancelled when
    `should_stop()` turns true.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started, cpu_started = time.monotonic(), time.process_time()
    timings: dict[str, float] = {}

    def check_stop() -> None:
        if should_stop():
            raise Cancelled("cancelled by request")

    progress({"stage": "read"})
    stats = ReadStats()
    texts, labels = load_sample(dataset_path, params.max_rows, params.seed, stats, limits)
    notice = sample_notice(stats.usable_rows, params.max_rows, limits.max_rows)
    if notice:
        log.warning("%s", notice)
    progress(
        {
            "stage": "read",
            "rows_read": stats.rows_read,
            "malformed_rows": stats.malformed_rows,
            "notice": notice,
        }
    )
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
        window=recipe.w2v_window,
        min_count=params.w2v_min_count,
        epochs=params.w2v_epochs,
        workers=recipe.w2v_workers,
        max_final_vocab=recipe.w2v_max_vocabulary or None,
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
    model = build_model(len(vocab), params, recipe)
    model.get_layer("word2vec").embeddings.assign(embedding)
    epochs_done = 0

    class Report(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if should_stop():
                self.model.stop_training = True
                raise Cancelled("cancelled by request")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            nonlocal epochs_done
            epochs_done += 1
            logs = logs or {}
            progress(
                {
                    "stage": "fit",
                    "epoch": epochs_done,
                    "epochs": params.epochs,
                    "loss": float(logs.get("loss", 0.0)),
                    "accuracy": float(logs.get("val_accuracy", 0.0)),
                }
            )

    def fit(epochs: int, seed: int, learning_rate: float, callbacks: list[Any]) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy", metrics=["accuracy"]
        )
        model.fit(
            _dataset(x, y, train_idx, params.batch_size, seed, recipe.length_bucketing),
            validation_data=_dataset(x, y, val_idx, params.batch_size, None, recipe.length_bucketing),
            epochs=epochs,
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
            callbacks=[Report(), *callbacks],
        )

    frozen_epochs = min(recipe.frozen_epochs, params.epochs)
    if frozen_epochs:
        fit(frozen_epochs, params.seed, recipe.learning_rate, [])
    epoch_kept = frozen_epochs
    if params.epochs > frozen_epochs:
        model.get_layer("word2vec").trainable = True  # recompiled by fit()
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=recipe.early_stopping_patience, restore_best_weights=True
        )
        fit(
            params.epochs - frozen_epochs,
            params.seed + 1,
            recipe.fine_tune_lr if frozen_epochs else recipe.learning_rate,
            [
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_lr=1e-5),
                stopper,
            ],
        )
        epoch_kept += stopper.best_epoch + 1  # its weights were restored at the end
    timings["fit_s"] = time.monotonic() - t0
    timings["tweets_per_s_per_epoch"] = len(train_idx) * epochs_done / max(timings["fit_s"], 1e-9)
    check_stop()

    progress({"stage": "evaluate"})
    t0 = time.monotonic()
    y_test = y[test_idx]
    scores = predict_scores(model, x[test_idx])
    loss = float(keras.losses.binary_crossentropy(tf.constant(y_test), tf.constant(scores)).numpy())
    metrics = {
        **binary_metrics(y_test, scores),
        "loss": loss,
        "rows_used": len(texts),
        "test_rows": len(test_idx),
    }
    timings["evaluate_s"] = time.monotonic() - t0
    # CPU seconds of every thread: on a shared machine, wall time says more about the neighbours.
    timings["cpu_s"] = time.process_time() - cpu_started

    out_dir.mkdir(parents=True, exist_ok=True)
    # A fresh, uncompiled copy: no optimizer state in the bundle (Adam's two moments would triple the file).
    serving = build_model(len(vocab), params, recipe)
    serving.set_weights(model.get_weights())
    serving.save(out_dir / MODEL_FILE)
    preprocessing = Preprocessing(text_config, params.sequence_length, thresholds)
    manifest = {
        "metrics": metrics,
        "params": params.to_dict(),
        "recipe": recipe.to_dict(),
        "text": text_config.to_dict(),
        "thresholds": {"negative_max": thresholds.negative_max, "positive_min": thresholds.positive_min},
        "vocabulary_size": len(vocab),
        "epochs_run": epochs_done,
        "epoch_kept": epoch_kept,  # the epoch (from 1) whose weights the bundle holds: the lowest val_loss
        "split": {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)},
        "notice": notice,  # set when the rows were capped at limits.max_rows
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


def build_model(vocabulary_size: int, params: TrainParams, recipe: Recipe = DEFAULT_RECIPE) -> Any:
    """Embedding (Word2Vec vectors are assigned by the caller) -> (spatial) dropout -> LSTM -> Dense logit,
    plus the logit of a linear model over hashed words and word pairs (`recipe.ngram_buckets`) -> sigmoid.

    Input: int32 token ids [batch, time]; id 0 is padding and is masked, so the padded width does not
    change a score. The embedding starts at zeros rather than from a Constant initializer, which Keras
    would serialise, matrix and all, into the saved model's JSON config.
    """
    import keras

    from sentiment.ml.layers import NGramLinear

    inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(
        vocabulary_size,
        params.embedding_dim,
        embeddings_initializer="zeros",
        trainable=recipe.frozen_epochs == 0,
        mask_zero=True,
        name="word2vec",
    )(inputs)
    if recipe.spatial_dropout:
        x = keras.layers.SpatialDropout1D(recipe.spatial_dropout, name="spatial_dropout")(x)
    if recipe.dropout:
        x = keras.layers.Dropout(recipe.dropout)(x)
    rnn = keras.layers.LSTM(params.lstm_units, name="lstm")
    x = keras.layers.Bidirectional(rnn, name="bilstm")(x) if recipe.bidirectional else rnn(x)
    logit = keras.layers.Dense(1, name="lstm_logit")(x)
    if recipe.ngram_buckets:
        ngrams = NGramLinear(recipe.ngram_buckets, name="ngrams")(inputs)
        logit = keras.layers.Add(name="logit")([logit, ngrams])
    outputs = keras.layers.Activation("sigmoid", name="score")(logit)
    return keras.Model(inputs, outputs, name="sentiment_lstm")
