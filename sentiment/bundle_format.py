"""The bundle's file format: what each file holds and every check of its contents, no I/O but local reads.

`Preprocessing` (preprocessing.json: text settings, sequence length, and the thresholds, stored there
only), `Manifest` (manifest.json: format version, checksums, metrics, params, dataset, timings, code
version; `Manifest.from_dict` is the one place the format version is checked), `parse_vocabulary`
(vocab.json) and `check_model_archive` (model.keras as a zip, before Keras opens it), each bounded by
`BundleLimits`. The thresholds are applied in `Thresholds.label` (model_svc calls it per score). Store
operations (publish, fetch, CURRENT) are in `sentiment.bundle`.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sentiment.errors import BundleError
from sentiment.names import shown
from sentiment.text import TextConfig, Vocabulary
from sentiment.timefmt import parse_utc_iso

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.json"
PREPROCESSING_FILE = "preprocessing.json"
MANIFEST_FILE = "manifest.json"
PAYLOAD_FILES = (MODEL_FILE, VOCAB_FILE, PREPROCESSING_FILE)
MODELS_PREFIX = "models"
CURRENT_KEY = f"{MODELS_PREFIX}/CURRENT"

T = TypeVar("T")
JsonScalar = bool | int | float | str


@dataclass(frozen=True)
class Thresholds:
    """score <= negative_max: NEGATIVE; score >= positive_min: POSITIVE; else NEUTRAL."""

    negative_max: float = 0.4
    positive_min: float = 0.7

    def label(self, score: float) -> str:
        if score <= self.negative_max:
            return "NEGATIVE"
        if score >= self.positive_min:
            return "POSITIVE"
        return "NEUTRAL"


@dataclass(frozen=True)
class BundleLimits:
    """What a server accepts from a bundle. A bundle is store data: each bound caps the memory or time a
    bundle whose checksums match could still make the server spend (a 1e9 `sequence_length` once made
    warm-up allocate past 15 GB)."""

    max_manifest_bytes: int = 1 << 20
    max_preprocessing_bytes: int = 64 << 10
    max_vocab_bytes: int = 64 << 20
    max_vocabulary: int = 2_000_000
    max_word_chars: int = 256
    max_sequence_length: int = 1000  # the trainer's own limit (train_svc.params)
    max_model_bytes: int = 512 << 20  # model.keras, compressed and uncompressed, and its weights in memory
    max_archive_members: int = 64

    def max_bytes(self, name: str) -> int:
        """The size limit of one bundle file."""
        return {
            MANIFEST_FILE: self.max_manifest_bytes,
            PREPROCESSING_FILE: self.max_preprocessing_bytes,
            VOCAB_FILE: self.max_vocab_bytes,
            MODEL_FILE: self.max_model_bytes,
        }[name]


DEFAULT_LIMITS = BundleLimits()


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}, got {str(value)[:40]}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _real(value: Any, what: str) -> float:
    """A number (a diverged fit may record a NaN loss), kept as written: an int stays an int in the file."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {str(value)[:40]}")
    number: float = value
    return number


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {str(value)[:40]}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _scalar(value: Any, what: str) -> JsonScalar:
    if not isinstance(value, bool | int | float | str):
        raise ValueError(f"{what} must be a number, a string or a boolean, got {type(value).__name__}")
    return value


def _table(value: Any, what: str, entry: Callable[[Any, str], T]) -> dict[str, T]:
    """A JSON object whose every value passes `entry`."""
    return {key: entry(item, f"{what}.{key[:40]}") for key, item in _object(value, what).items()}


def _timestamp(value: Any, what: str) -> str:
    """Empty, or an ISO 8601 time (as `sentiment.timefmt.utc_iso` writes it)."""
    text = _text(value, what)
    try:
        if text:
            parse_utc_iso(text)
    except ValueError:
        raise ValueError(f"{what} must be an ISO 8601 time, got {shown(text)}") from None
    return text


def parse_thresholds(value: Any) -> Thresholds:
    """Thresholds from a bundle: exactly the two cut-offs, numbers with 0 <= negative_max <= positive_min <= 1."""
    data = _object(value, "thresholds")
    if set(data) != {"negative_max", "positive_min"}:
        raise ValueError(f"thresholds must hold negative_max and positive_min, got {sorted(data)[:5]}")
    low = _number(data["negative_max"], "thresholds.negative_max")
    high = _number(data["positive_min"], "thresholds.positive_min")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= negative_max <= positive_min <= 1, got {low}, {high}")
    return Thresholds(low, high)


@dataclass(frozen=True)
class Preprocessing:
    """`preprocessing.json`: what serving needs to turn a text into ids and a score into a label."""

    text: TextConfig
    sequence_length: int
    thresholds: Thresholds

    def to_dict(self) -> dict[str, Any]:
        # format_version is still written for servers of the previous code, which check it here too.
        return {
            "format_version": FORMAT_VERSION,
            "text": self.text.to_dict(),
            "sequence_length": self.sequence_length,
            "thresholds": {
                "negative_max": self.thresholds.negative_max,
                "positive_min": self.thresholds.positive_min,
            },
        }

    @classmethod
    def from_dict(cls, data: Any, limits: BundleLimits = DEFAULT_LIMITS) -> Preprocessing:
        """Type- and range-checked against `limits`; BundleError names the first bad field. The format
        version is the manifest's to check (`Manifest.from_dict`)."""
        try:
            data = _object(data, PREPROCESSING_FILE)
            return cls(
                text=TextConfig.from_dict(_object(data.get("text"), "text")),
                sequence_length=_integer(
                    data.get("sequence_length"), "sequence_length", 1, limits.max_sequence_length
                ),
                thresholds=parse_thresholds(data.get("thresholds")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bad {PREPROCESSING_FILE}: {exc}") from exc


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: what a bundle is and how it was made; written once, by `write_manifest`.

    The trainer fills the first group (it knows the model); the job that publishes the bundle adds the
    second (`dataclasses.replace`); `write_manifest` adds `files`, the sha256 of each payload file.
    """

    metrics: Mapping[str, float] = field(default_factory=dict)  # on the held-out test split
    params: Mapping[str, int] = field(default_factory=dict)  # train_svc.params.TrainParams
    recipe: Mapping[str, JsonScalar] = field(default_factory=dict)  # train_svc.params.Recipe
    vocabulary_size: int = 0
    epochs_run: int = 0
    epoch_kept: int = 0  # the epoch (from 1) whose weights the bundle holds: the lowest val_loss
    split: Mapping[str, int] = field(default_factory=dict)  # rows in train / validation / test
    dataset_rows: Mapping[str, int] = field(default_factory=dict)  # read, malformed, by label
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage, and throughput
    notice: str = ""  # set when the rows were capped at MAX_DATASET_ROWS
    # What the publishing job knows ("" for a bundle trained outside train_svc).
    job_id: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    code_version: str = ""
    created_at: str = ""  # sentiment.timefmt.utc_iso
    files: Mapping[str, str] = field(default_factory=dict)  # payload file name -> sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "metrics": dict(self.metrics),
            "params": dict(self.params),
            "recipe": dict(self.recipe),
            "vocabulary_size": self.vocabulary_size,
            "epochs_run": self.epochs_run,
            "epoch_kept": self.epoch_kept,
            "split": dict(self.split),
            "dataset_rows": dict(self.dataset_rows),
            "timings": dict(self.timings),
            "notice": self.notice,
            "job_id": self.job_id,
            "dataset": {"uri": self.dataset_uri, "sha256": self.dataset_sha256},
            "code_version": self.code_version,
            "created_at": self.created_at,
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """A manifest as the store holds it: the format version checked (the one place it is), every
        field this reads type-checked (BundleError names the first bad one), a missing field at its
        default, and unknown keys ignored (the previous code also wrote `text` and `thresholds`, which
        are read from preprocessing.json)."""
        try:
            data = _object(data, MANIFEST_FILE)
            version = data.get("format_version")
            if version != FORMAT_VERSION or isinstance(version, bool):
                raise BundleError(
                    f"bundle format version {str(version)[:20]} is not supported (this server reads {FORMAT_VERSION})"
                )
            dataset = _object(data.get("dataset", {}), "dataset")
            return cls(
                metrics=_table(data.get("metrics", {}), "metrics", _real),
                params=_table(data.get("params", {}), "params", _count),
                recipe=_table(data.get("recipe", {}), "recipe", _scalar),
                vocabulary_size=_count(data.get("vocabulary_size", 0), "vocabulary_size"),
                epochs_run=_count(data.get("epochs_run", 0), "epochs_run"),
                epoch_kept=_count(data.get("epoch_kept", 0), "epoch_kept"),
                split=_table(data.get("split", {}), "split", _count),
                dataset_rows=_table(data.get("dataset_rows", {}), "dataset_rows", _count),
                timings=_table(data.get("timings", {}), "timings", _real),
                notice=_text(data.get("notice", ""), "notice"),
                job_id=_text(data.get("job_id", ""), "job_id"),
                dataset_uri=_text(dataset.get("uri", ""), "dataset.uri"),
                dataset_sha256=_text(dataset.get("sha256", ""), "dataset.sha256"),
                code_version=_text(data.get("code_version", ""), "code_version"),
                created_at=_timestamp(data.get("created_at", ""), "created_at"),
                files=_table(data.get("files", {}), "files", _text),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bad {MANIFEST_FILE}: {exc}") from exc


def parse_vocabulary(words: Any, limits: BundleLimits = DEFAULT_LIMITS) -> Vocabulary:
    """`vocab.json`: a list of distinct, non-empty strings, at most `limits.max_vocabulary` of them."""
    if not isinstance(words, list):
        raise BundleError(f"bad {VOCAB_FILE}: must be a list of words, got {type(words).__name__}")
    if len(words) > limits.max_vocabulary:
        raise BundleError(f"bad {VOCAB_FILE}: {len(words):,} words, more than {limits.max_vocabulary:,}")
    for i, word in enumerate(words):
        if not isinstance(word, str) or not 0 < len(word) <= limits.max_word_chars:
            raise BundleError(
                f"bad {VOCAB_FILE}: entry {i} is not a word of 1..{limits.max_word_chars} characters"
            )
    if len(set(words)) != len(words):
        raise BundleError(f"bad {VOCAB_FILE}: a word appears twice")
    return Vocabulary(words)


def check_model_archive(path: Path, limits: BundleLimits = DEFAULT_LIMITS) -> None:
    """`model.keras` is a zip archive (Keras' format) whose members are few, plainly named, and whose
    uncompressed size stays within `limits.max_model_bytes`: a zip bomb is refused before Keras opens it."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"bad {MODEL_FILE}: not a Keras archive: {exc}") from exc
    if len(members) > limits.max_archive_members:
        raise BundleError(
            f"bad {MODEL_FILE}: {len(members)} archive members, more than {limits.max_archive_members}"
        )
    for member in members:
        name = member.filename
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise BundleError(f"bad {MODEL_FILE}: archive member {shown(name)} is not a plain relative name")
    expanded = sum(member.file_size for member in members)
    if expanded > limits.max_model_bytes:
        raise BundleError(
            f"bad {MODEL_FILE}: expands to {expanded:,} bytes, more than the limit of {limits.max_model_bytes:,}"
        )
