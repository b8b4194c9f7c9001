"""The model bundle: one immutable, versioned folder `models/<version>/` in the artifact store.

Files: `model.keras` (the Keras model, embedding included), `vocab.json` (words in id order from 2),
`preprocessing.json` (format version, text settings, sequence length, thresholds) and `manifest.json`
(checksums of the other files, metrics, params, dataset, timings, code version), uploaded last of the
four. `models/CURRENT` names the promoted version and is written after the bundle is complete, so a
reader never sees half a model. No TensorFlow here: loading the Keras model is the server's business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiment.errors import BundleError, InvalidInput, NotFound, TooLarge
from sentiment.names import check_version, shown
from sentiment.store import ArtifactStore, sha256_file
from sentiment.text import TextConfig, Vocabulary

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.json"
PREPROCESSING_FILE = "preprocessing.json"
MANIFEST_FILE = "manifest.json"
PAYLOAD_FILES = (MODEL_FILE, VOCAB_FILE, PREPROCESSING_FILE)
MODELS_PREFIX = "models"
CURRENT_KEY = f"{MODELS_PREFIX}/CURRENT"
_MAX_CURRENT_BYTES = 256


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
    text: TextConfig
    sequence_length: int
    thresholds: Thresholds

    def to_dict(self) -> dict[str, Any]:
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
        """Type- and range-checked against `limits`; BundleError names the first bad field."""
        try:
            data = _object(data, PREPROCESSING_FILE)
            version = data.get("format_version")
            if version != FORMAT_VERSION or isinstance(version, bool):
                raise BundleError(
                    f"bundle format version {str(version)[:20]} is not supported (this server reads {FORMAT_VERSION})"
                )
            return cls(
                text=TextConfig.from_dict(_object(data.get("text"), "text")),
                sequence_length=_integer(
                    data.get("sequence_length"), "sequence_length", 1, limits.max_sequence_length
                ),
                thresholds=parse_thresholds(data.get("thresholds")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bad {PREPROCESSING_FILE}: {exc}") from exc


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


@dataclass(frozen=True)
class LocalBundle:
    """A verified bundle on local disk, ready for a server to load."""

    version: str
    directory: Path
    preprocessing: Preprocessing
    vocabulary: Vocabulary
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE


def new_version(now: datetime | None = None) -> str:
    """Sortable and unique: `20261128-153012-a1b2c3`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def write_bundle_files(
    directory: Path, vocabulary: Vocabulary, preprocessing: Preprocessing, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write vocab, preprocessing and manifest beside an already saved `model.keras`; returns the manifest.

    The manifest gains `format_version` and the sha256 of each payload file.
    """
    (directory / VOCAB_FILE).write_text(json.dumps(vocabulary.words), encoding="utf-8")
    (directory / PREPROCESSING_FILE).write_text(
        json.dumps(preprocessing.to_dict(), indent=2), encoding="utf-8"
    )
    full = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "files": {name: sha256_file(directory / name) for name in PAYLOAD_FILES},
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")
    return full


def _read_json(directory: Path, name: str, limits: BundleLimits) -> Any:
    path = directory / name
    size = path.stat().st_size
    if size > limits.max_bytes(name):
        raise BundleError(f"{name} has {size:,} bytes, more than the limit of {limits.max_bytes(name):,}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{name} is not valid JSON: {str(exc)[:200]}") from exc


def read_local_bundle(
    directory: Path,
    version: str,
    limits: BundleLimits = DEFAULT_LIMITS,
    digests: dict[str, str] | None = None,
) -> LocalBundle:
    """Verify and read a bundle folder: sizes within `limits`, format known, every checksum right, every
    field type- and range-checked. `digests` (name -> sha256, as the download computed them) spare a
    second read of each file. BundleError says what is wrong. Blocking: call it in a thread.
    """
    try:
        manifest = _object(_read_json(directory, MANIFEST_FILE, limits), MANIFEST_FILE)
        if manifest.get("format_version") != FORMAT_VERSION or isinstance(
            manifest.get("format_version"), bool
        ):
            raise BundleError(
                f"bundle format version {str(manifest.get('format_version'))[:20]} is not supported "
                f"(this server reads {FORMAT_VERSION})"
            )
        files = _object(manifest.get("files", {}), "files")
        known = digests or {}
        for name in PAYLOAD_FILES:
            path = directory / name
            if not path.is_file():
                raise BundleError(f"{name} is missing")
            if path.stat().st_size > limits.max_bytes(name):
                raise BundleError(f"{name} has more than the limit of {limits.max_bytes(name):,} bytes")
            if files.get(name) != (known.get(name) or sha256_file(path)):
                raise BundleError(f"checksum of {name} does not match the manifest")
        preprocessing = Preprocessing.from_dict(_read_json(directory, PREPROCESSING_FILE, limits), limits)
        vocabulary = parse_vocabulary(_read_json(directory, VOCAB_FILE, limits), limits)
        check_model_archive(directory / MODEL_FILE, limits)
    except ValueError as exc:
        raise BundleError(f"model {version}: bad {MANIFEST_FILE}: {exc}") from exc
    except BundleError as exc:
        raise BundleError(f"model {version}: {exc}") from exc
    return LocalBundle(version, directory, preprocessing, vocabulary, manifest)


def _bundle_key(version: str, name: str) -> str:
    return f"{MODELS_PREFIX}/{check_version(version)}/{name}"


async def publish(store: ArtifactStore, directory: Path, version: str) -> None:
    """Upload a bundle folder as `models/<version>/`, the manifest last."""
    for name in (*PAYLOAD_FILES, MANIFEST_FILE):
        await store.put_bytes(_bundle_key(version, name), (directory / name).read_bytes())


async def fetch(
    store: ArtifactStore, version: str, directory: Path, limits: BundleLimits = DEFAULT_LIMITS
) -> LocalBundle:
    """Download `models/<version>/` into `directory` (which the caller made) and verify it in a thread.

    NotFound when the version has no manifest; BundleError when a file is missing, too large or wrong.
    """
    digests: dict[str, str] = {}
    for name in (MANIFEST_FILE, *PAYLOAD_FILES):
        try:
            digests[name] = await store.download(
                _bundle_key(version, name), directory / name, limits.max_bytes(name)
            )
        except NotFound:
            if name == MANIFEST_FILE:
                raise NotFound(f"model version {version} not found in {store.uri}") from None
            raise BundleError(f"model {version}: {name} is missing from the store") from None
        except TooLarge as exc:
            raise BundleError(f"model {version}: {exc}") from None
    return await asyncio.to_thread(read_local_bundle, directory, version, limits, digests)


async def read_manifest(store: ArtifactStore, version: str) -> dict[str, Any]:
    """The manifest of a published version, size-bounded and checked to be a JSON object."""
    try:
        data = await store.get_bytes(_bundle_key(version, MANIFEST_FILE), DEFAULT_LIMITS.max_manifest_bytes)
    except NotFound:
        raise NotFound(f"model version {version} not found") from None
    except TooLarge as exc:
        raise BundleError(f"model {version}: {exc}") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"model {version}: unreadable manifest: {str(exc)[:200]}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"model {version}: the manifest is not a JSON object")
    return manifest


async def read_current(store: ArtifactStore) -> str | None:
    """The promoted version, or None when nothing has been promoted yet.

    CURRENT is store data: more than a name's worth of bytes, not UTF-8, or not a valid version name
    (`sentiment.names.check_version`) raises BundleError, and nothing is built from it.
    """
    try:
        data = await store.get_bytes(CURRENT_KEY, _MAX_CURRENT_BYTES)
    except NotFound:
        return None
    except TooLarge:
        raise BundleError(f"{CURRENT_KEY} holds more than {_MAX_CURRENT_BYTES} bytes") from None
    try:
        text = data.decode("utf-8").strip()
        return check_version(text) if text else None
    except (UnicodeDecodeError, InvalidInput) as exc:
        raise BundleError(f"{CURRENT_KEY} names no valid version: {exc}") from None


async def set_current(store: ArtifactStore, version: str) -> None:
    """Promote a published version (a valid name whose manifest exists)."""
    await read_manifest(store, check_version(version))
    await store.put_bytes(CURRENT_KEY, version.encode())


async def list_versions(store: ArtifactStore) -> list[str]:
    """Versions with a complete bundle (manifest uploaded), newest first."""
    keys = await store.list_keys(MODELS_PREFIX + "/")
    suffix = "/" + MANIFEST_FILE
    names = {k[len(MODELS_PREFIX) + 1 : -len(suffix)] for k in keys if k.endswith(suffix)}
    return sorted((name for name in names if _is_version(name)), reverse=True)


def _is_version(name: str) -> bool:
    try:
        check_version(name)
    except InvalidInput:
        log.warning("ignoring %s/%s: not a valid version name", MODELS_PREFIX, shown(name))
        return False
    return True
