"""The model bundle: one immutable, versioned folder `models/<version>/` in the artifact store.

Files: `model.keras` (the Keras model, embedding included), `vocab.json` (words in id order from 2),
`preprocessing.json` (format version, text settings, sequence length, thresholds) and `manifest.json`
(checksums of the other files, metrics, params, dataset, timings, code version), uploaded last of the
four. `models/CURRENT` names the promoted version and is written after the bundle is complete, so a
reader never sees half a model. No TensorFlow here: loading the Keras model is the server's business.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiment.errors import BundleError, NotFound
from sentiment.store import ArtifactStore, sha256_file
from sentiment.text import TextConfig, Vocabulary

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.json"
PREPROCESSING_FILE = "preprocessing.json"
MANIFEST_FILE = "manifest.json"
PAYLOAD_FILES = (MODEL_FILE, VOCAB_FILE, PREPROCESSING_FILE)
MODELS_PREFIX = "models"
CURRENT_KEY = f"{MODELS_PREFIX}/CURRENT"


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
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version!r} is not supported (this server reads {FORMAT_VERSION})"
            )
        try:
            return cls(
                text=TextConfig.from_dict(data["text"]),
                sequence_length=int(data["sequence_length"]),
                thresholds=Thresholds(**data["thresholds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bad {PREPROCESSING_FILE}: {exc}") from exc


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


def read_local_bundle(directory: Path, version: str) -> LocalBundle:
    """Verify and read a bundle folder: manifest present, format known, every checksum right."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"model {version}: unreadable {MANIFEST_FILE}: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"model {version}: bundle format version {manifest.get('format_version')!r} is not supported "
            f"(this server reads {FORMAT_VERSION})"
        )
    files = manifest.get("files") or {}
    for name in PAYLOAD_FILES:
        path = directory / name
        if not path.is_file():
            raise BundleError(f"model {version}: {name} is missing")
        if files.get(name) != sha256_file(path):
            raise BundleError(f"model {version}: checksum of {name} does not match the manifest")
    try:
        preprocessing = Preprocessing.from_dict(
            json.loads((directory / PREPROCESSING_FILE).read_text("utf-8"))
        )
        words = json.loads((directory / VOCAB_FILE).read_text("utf-8"))
    except ValueError as exc:
        raise BundleError(f"model {version}: {exc}") from exc
    return LocalBundle(version, directory, preprocessing, Vocabulary(words), manifest)


def _bundle_key(version: str, name: str) -> str:
    return f"{MODELS_PREFIX}/{version}/{name}"


async def publish(store: ArtifactStore, directory: Path, version: str) -> None:
    """Upload a bundle folder as `models/<version>/`, the manifest last."""
    for name in (*PAYLOAD_FILES, MANIFEST_FILE):
        await store.put_bytes(_bundle_key(version, name), (directory / name).read_bytes())


async def fetch(store: ArtifactStore, version: str, directory: Path) -> LocalBundle:
    """Download `models/<version>/` into `directory` and verify it. NotFound / BundleError."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        await store.download(_bundle_key(version, MANIFEST_FILE), directory / MANIFEST_FILE)
    except NotFound:
        raise NotFound(f"model version {version} not found in {store.uri}") from None
    for name in PAYLOAD_FILES:
        try:
            await store.download(_bundle_key(version, name), directory / name)
        except NotFound:
            raise BundleError(f"model {version}: {name} is missing from the store") from None
    return read_local_bundle(directory, version)


async def read_manifest(store: ArtifactStore, version: str) -> dict[str, Any]:
    try:
        data = await store.get_bytes(_bundle_key(version, MANIFEST_FILE))
    except NotFound:
        raise NotFound(f"model version {version} not found") from None
    try:
        manifest: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"model {version}: unreadable manifest: {exc}") from exc
    return manifest


async def read_current(store: ArtifactStore) -> str | None:
    """The promoted version, or None when nothing has been promoted yet."""
    try:
        return (await store.get_bytes(CURRENT_KEY)).decode().strip() or None
    except NotFound:
        return None


async def set_current(store: ArtifactStore, version: str) -> None:
    """Promote a published version (its manifest must exist)."""
    await read_manifest(store, version)
    await store.put_bytes(CURRENT_KEY, version.encode())


async def list_versions(store: ArtifactStore) -> list[str]:
    """Versions with a complete bundle (manifest uploaded), newest first."""
    keys = await store.list_keys(MODELS_PREFIX + "/")
    suffix = "/" + MANIFEST_FILE
    return sorted(
        {k[len(MODELS_PREFIX) + 1 : -len(suffix)] for k in keys if k.endswith(suffix)}, reverse=True
    )
