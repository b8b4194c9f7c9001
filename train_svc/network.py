"""The recipe's Keras network: built (`build_model`), fed in length-bucketed batches, fitted in its two
phases (`fit_model`), scored in batches (`predict_scores`).

Used by the trainer (TensorFlow and Keras are imported inside the functions, so importing this module
stays cheap). No gRPC, no store, no job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from train_svc.job import Stage
from train_svc.params import DEFAULT_RECIPE, Recipe, TrainParams

Progress = Callable[[dict[str, Any]], None]
ShouldStop = Callable[[], bool]
BUCKET_BATCHES = 16  # length bucketing sorts windows of this many batches
PREDICT_BATCH = 4096


class Cancelled(Exception):
    """Raised inside the trainer when `should_stop()` turned true."""


@dataclass(frozen=True)
class Fitted:
    model: Any
    epochs_run: int
    epoch_kept: int  # the epoch (from 1) whose weights the model holds


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


def batched_dataset(
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


def _reporter(progress: Progress, should_stop: ShouldStop, epochs: int) -> Any:
    """A Keras callback that reports each epoch and raises Cancelled between batches when asked to."""
    import keras

    class Report(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped: its classes are Any
        epochs_done = 0

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if should_stop():
                self.model.stop_training = True
                raise Cancelled("cancelled by request")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epochs_done += 1
            logs = logs or {}
            progress(
                {
                    "stage": Stage.FIT,
                    "epoch": self.epochs_done,
                    "epochs": epochs,
                    "loss": float(logs.get("loss", 0.0)),
                    "accuracy": float(logs.get("val_accuracy", 0.0)),
                }
            )

    return Report()


def fit_model(
    x: np.ndarray,
    y: np.ndarray,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    embedding: np.ndarray,
    params: TrainParams,
    recipe: Recipe,
    progress: Progress,
    should_stop: ShouldStop,
) -> Fitted:
    """Fit the network on `train_rows` of (x, y), validated on `validation_rows`, from the Word2Vec
    `embedding`: `recipe.frozen_epochs` with the embedding frozen, then the rest fine-tuning it with early
    stopping (the best epoch's weights restored). Each epoch is reported to `progress`; Cancelled between
    batches once `should_stop()`."""
    import keras

    keras.utils.set_random_seed(params.seed)
    model = build_model(len(embedding), params, recipe)
    model.get_layer("word2vec").embeddings.assign(embedding)
    report = _reporter(progress, should_stop, params.epochs)

    def fit(epochs: int, seed: int, learning_rate: float, callbacks: list[Any]) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy", metrics=["accuracy"]
        )
        model.fit(
            batched_dataset(x, y, train_rows, params.batch_size, seed, recipe.length_bucketing),
            validation_data=batched_dataset(
                x, y, validation_rows, params.batch_size, None, recipe.length_bucketing
            ),
            epochs=epochs,
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
            callbacks=[report, *callbacks],
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
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_lr=1e-5)
        learning_rate = recipe.fine_tune_lr if frozen_epochs else recipe.learning_rate
        fit(params.epochs - frozen_epochs, params.seed + 1, learning_rate, [plateau, stopper])
        epoch_kept += stopper.best_epoch + 1  # its weights were restored at the end
    return Fitted(model, report.epochs_done, epoch_kept)
