"""The training recipe: Sentiment140 CSV -> tokens -> Word2Vec -> Keras LSTM -> evaluated bundle files.

`train_model` runs in a child process (it holds the CPU and the GIL for minutes) as named steps: read,
word2vec, fit, evaluate, save; `_manifest` assembles what it learnt into the trainer's part of the
`Manifest`. Everything it reports goes through the `progress` callback, and `should_stop` is polled
between batches so a cancel takes effect quickly. No gRPC and no store here: the job's workflow fetches
the dataset and publishes the folder this writes (`train_svc.workflow`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentiment.bundle import MODEL_FILE, Manifest, Preprocessing, Thresholds, write_manifest, write_payload
from sentiment.dataset import DEFAULT_LIMITS, DatasetLimits, ReadStats, load_sample, sample_notice
from sentiment.errors import InvalidDataset
from sentiment.text import FIRST_WORD_ID, TextConfig, Vocabulary, encode, tokenize
from train_svc.job import Stage
from train_svc.network import Cancelled, Fitted, Progress, ShouldStop, build_model, fit_model, predict_scores
from train_svc.params import DEFAULT_RECIPE, Recipe, TrainParams

log = logging.getLogger(__name__)

TEST_SHARE = 0.2
VALIDATION_SHARE = 0.1  # of what is left after the test split


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


@dataclass(frozen=True)
class _Data:
    """The rows read, tokenised, and split (indices into `tokens` and `y`)."""

    tokens: list[list[str]]
    y: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    stats: ReadStats
    notice: str


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[name] = time.monotonic() - started


def train(
    dataset_path: Path, params: TrainParams, out_dir: Path, progress: Progress, **options: Any
) -> dict[str, Any]:
    """`train_model` (same arguments), then seal `out_dir` with its manifest: a complete bundle folder
    made outside a job (tests, benchmarks). Returns the manifest as written (its JSON object)."""
    return write_manifest(out_dir, train_model(dataset_path, params, out_dir, progress, **options)).to_dict()


def train_model(
    dataset_path: Path,
    params: TrainParams,
    out_dir: Path,
    progress: Progress,
    should_stop: ShouldStop = lambda: False,
    text_config: TextConfig = TextConfig(),
    thresholds: Thresholds = Thresholds(),
    recipe: Recipe = DEFAULT_RECIPE,
    limits: DatasetLimits = DEFAULT_LIMITS,
) -> Manifest:
    """Train, evaluate on the held-out split and write `model.keras`, `vocab.json` and
    `preprocessing.json` into `out_dir`; returns the trainer's part of the manifest (no manifest.json:
    whoever publishes the folder seals it with `bundle.write_manifest`).

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

    with _timed(timings, "read_s"):
        data = _read(dataset_path, params, text_config, limits, progress)
    check_stop()
    progress({"stage": Stage.WORD2VEC})
    with _timed(timings, "word2vec_s"):
        vocab, embedding = _word2vec(data, params, recipe)
    check_stop()
    progress({"stage": Stage.FIT, "epoch": 0, "epochs": params.epochs})
    with _timed(timings, "fit_s"):
        x = encode(data.tokens, vocab, params.sequence_length)
        fitted = fit_model(
            x, data.y, data.train, data.validation, embedding, params, recipe, progress, should_stop
        )
    timings["tweets_per_s_per_epoch"] = len(data.train) * fitted.epochs_run / max(timings["fit_s"], 1e-9)
    check_stop()
    progress({"stage": Stage.EVALUATE})
    with _timed(timings, "evaluate_s"):
        metrics = _evaluate(fitted.model, x, data)
    # CPU seconds of every thread: on a shared machine, wall time says more about the neighbours.
    timings["cpu_s"] = time.process_time() - cpu_started

    preprocessing = Preprocessing(text_config, params.sequence_length, thresholds)
    _save(out_dir, fitted.model, vocab, preprocessing, params, recipe)
    log.info(
        "trained: accuracy %.4f f1 %.4f in %.1fs",
        metrics["accuracy"],
        metrics["f1"],
        time.monotonic() - started,
    )
    return _manifest(params, recipe, data, len(vocab), fitted, metrics, timings)


def _read(
    dataset_path: Path,
    params: TrainParams,
    text_config: TextConfig,
    limits: DatasetLimits,
    progress: Progress,
) -> _Data:
    """Read (and maybe sample) the dataset, tokenise it and split it; InvalidDataset when it cannot train."""
    progress({"stage": Stage.READ})
    stats = ReadStats()
    texts, labels = load_sample(dataset_path, params.max_rows, params.seed, stats, limits)
    notice = sample_notice(stats.usable_rows, params.max_rows, limits.max_rows)
    if notice:
        log.warning("%s", notice)
    progress(
        {
            "stage": Stage.READ,
            "rows_read": stats.rows_read,
            "malformed_rows": stats.malformed_rows,
            "notice": notice,
        }
    )
    if len(set(labels)) < 2 or len(texts) < 10:
        raise InvalidDataset(f"need at least 10 rows with both labels, got {len(texts)} usable rows")
    tokens = [tokenize(t, text_config) for t in texts]
    train_rows, validation_rows, test_rows = split_indices(len(tokens), params.seed)
    y = np.asarray(labels, dtype=np.float32)
    return _Data(tokens, y, train_rows, validation_rows, test_rows, stats, notice)


def _word2vec(data: _Data, params: TrainParams, recipe: Recipe) -> tuple[Vocabulary, np.ndarray]:
    """Word2Vec on the training rows: the vocabulary and its embedding matrix (rows from FIRST_WORD_ID)."""
    from gensim.models import Word2Vec

    w2v = Word2Vec(
        sentences=[data.tokens[i] for i in data.train],
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
    return vocab, embedding


def _evaluate(model: Any, x: np.ndarray, data: _Data) -> dict[str, float]:
    """Metrics on the held-out test rows."""
    import keras
    import tensorflow as tf

    y_test = data.y[data.test]
    scores = predict_scores(model, x[data.test])
    loss = float(keras.losses.binary_crossentropy(tf.constant(y_test), tf.constant(scores)).numpy())
    return {
        **binary_metrics(y_test, scores),
        "loss": loss,
        "rows_used": len(data.tokens),
        "test_rows": len(data.test),
    }


def _save(
    out_dir: Path,
    model: Any,
    vocab: Vocabulary,
    preprocessing: Preprocessing,
    params: TrainParams,
    recipe: Recipe,
) -> None:
    """`model.keras`, `vocab.json` and `preprocessing.json` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A fresh, uncompiled copy: no optimizer state in the bundle (Adam's two moments would triple the file).
    serving = build_model(len(vocab), params, recipe)
    serving.set_weights(model.get_weights())
    serving.save(out_dir / MODEL_FILE)
    write_payload(out_dir, vocab, preprocessing)


def _manifest(
    params: TrainParams,
    recipe: Recipe,
    data: _Data,
    vocabulary_size: int,
    fitted: Fitted,
    metrics: dict[str, float],
    timings: dict[str, float],
) -> Manifest:
    """The trainer's part of the manifest, assembled here and nowhere else."""
    by_label = {("negative" if k == 0 else "positive"): v for k, v in data.stats.by_label.items()}
    return Manifest(
        metrics=metrics,
        params=params.to_dict(),
        recipe=recipe.to_dict(),
        vocabulary_size=vocabulary_size,
        epochs_run=fitted.epochs_run,
        epoch_kept=fitted.epoch_kept,
        split={"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        dataset_rows={"read": data.stats.rows_read, "malformed": data.stats.malformed_rows, **by_label},
        timings={k: round(v, 3) for k, v in timings.items()},
        notice=data.notice,
    )
