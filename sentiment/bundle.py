"""The model bundle: one immutable, versioned folder `models/<version>/` in the artifact store.

Files: `model.keras` (the Keras model, embedding included), `vocab.json` (words in id order from 2),
`preprocessing.json` (`Preprocessing`: text settings, sequence length, and the thresholds, stored there
only) and `manifest.json` (`Manifest`: format version, checksums of the other three, metrics, params,
dataset, timings, code version), uploaded last of the four. `models/CURRENT` names the promoted version
and is written after the bundle is complete, so a reader never sees half a model.

Where things happen: what each file holds and how its contents are checked is in `sentiment.bundle_format`
(re-exported here); the thresholds are applied in `Thresholds.label` (model_svc calls it per score); a
bundle is verified in `read_local_bundle` (sizes, format version, checksums, every field), which `fetch`
runs on what it downloaded; `write_manifest` is the one writer of `manifest.json`. No TensorFlow here:
loading the Keras model is the server's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sentiment.bundle_format import (
    CURRENT_KEY,
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    MODELS_PREFIX,
    PAYLOAD_FILES,
    PREPROCESSING_FILE,
    VOCAB_FILE,
    BundleLimits,
    Manifest,
    Preprocessing,
    Thresholds,
    check_model_archive,
    parse_vocabulary,
)
from sentiment.errors import BundleError, InvalidInput, NotFound, TooLarge
from sentiment.names import check_version, shown
from sentiment.store import ArtifactStore, sha256_file
from sentiment.text import Vocabulary

log = logging.getLogger(__name__)

# The format's names, re-exported: callers read a bundle through this one module.
__all__ = [
    "CURRENT_KEY",
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODELS_PREFIX",
    "MODEL_FILE",
    "PAYLOAD_FILES",
    "PREPROCESSING_FILE",
    "VOCAB_FILE",
    "BundleLimits",
    "LocalBundle",
    "Manifest",
    "Preprocessing",
    "Thresholds",
    "fetch",
    "list_versions",
    "new_version",
    "publish",
    "read_current",
    "read_local_bundle",
    "read_manifest",
    "read_published",
    "set_current",
    "write_manifest",
    "write_payload",
]
_MAX_CURRENT_BYTES = 256
T = TypeVar("T")


@dataclass(frozen=True)
class LocalBundle:
    """A verified bundle on local disk, ready for a server to load."""

    version: str
    directory: Path
    preprocessing: Preprocessing
    vocabulary: Vocabulary
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE


def new_version(now: datetime | None = None) -> str:
    """Sortable and unique: `20261128-153012-a1b2c3`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def write_payload(directory: Path, vocabulary: Vocabulary, preprocessing: Preprocessing) -> None:
    """Write `vocab.json` and `preprocessing.json` beside an already saved `model.keras`."""
    (directory / VOCAB_FILE).write_text(json.dumps(vocabulary.words), encoding="utf-8")
    (directory / PREPROCESSING_FILE).write_text(
        json.dumps(preprocessing.to_dict(), indent=2), encoding="utf-8"
    )


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Seal a bundle folder whose payload files are final: `manifest` with the sha256 of each of them
    in `files`, written as `manifest.json`; returns it. The only writer of manifest.json."""
    sealed = dataclasses.replace(
        manifest, files={name: sha256_file(directory / name) for name in PAYLOAD_FILES}
    )
    (directory / MANIFEST_FILE).write_text(
        json.dumps(sealed.to_dict(), indent=2, sort_keys=True), encoding="utf-8"
    )
    return sealed


def _read_json(directory: Path, name: str, limits: BundleLimits) -> Any:
    path = directory / name
    size = path.stat().st_size
    if size > limits.max_bytes(name):
        raise BundleError(f"{name} has {size:,} bytes, more than the limit of {limits.max_bytes(name):,}")
    return _parse_json(path.read_bytes(), name)


def _parse_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
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
        manifest = Manifest.from_dict(_read_json(directory, MANIFEST_FILE, limits))
        known = digests or {}
        for name in PAYLOAD_FILES:
            path = directory / name
            if not path.is_file():
                raise BundleError(f"{name} is missing")
            if path.stat().st_size > limits.max_bytes(name):
                raise BundleError(f"{name} has more than the limit of {limits.max_bytes(name):,} bytes")
            if manifest.files.get(name) != (known.get(name) or sha256_file(path)):
                raise BundleError(f"checksum of {name} does not match the manifest")
        preprocessing = Preprocessing.from_dict(_read_json(directory, PREPROCESSING_FILE, limits), limits)
        vocabulary = parse_vocabulary(_read_json(directory, VOCAB_FILE, limits), limits)
        check_model_archive(directory / MODEL_FILE, limits)
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


async def _read_stored(
    store: ArtifactStore, version: str, name: str, limits: BundleLimits, parse: Callable[[bytes, Any], T]
) -> T:
    """One JSON file of a published bundle, size-bounded, handed as (bytes, content) to `parse`."""
    try:
        data = await store.get_bytes(_bundle_key(version, name), limits.max_bytes(name))
    except NotFound:
        if name == MANIFEST_FILE:
            raise NotFound(f"model version {version} not found") from None
        raise BundleError(f"model {version}: {name} is missing from the store") from None
    except TooLarge as exc:
        raise BundleError(f"model {version}: {exc}") from None
    try:
        return parse(data, _parse_json(data, name))
    except BundleError as exc:
        raise BundleError(f"model {version}: {exc}") from None


async def read_manifest(
    store: ArtifactStore, version: str, limits: BundleLimits = DEFAULT_LIMITS
) -> Manifest:
    """The manifest of a published version, size-bounded and checked (`Manifest.from_dict`).

    NotFound when the version has no manifest; BundleError when it is too large or does not parse.
    """
    return await _read_stored(
        store, version, MANIFEST_FILE, limits, lambda _data, content: Manifest.from_dict(content)
    )


async def read_published(
    store: ArtifactStore, version: str, limits: BundleLimits = DEFAULT_LIMITS
) -> tuple[Manifest, Preprocessing]:
    """What a listing shows of a published version without downloading its model: the manifest and
    `preprocessing.json` (where the thresholds are), each bounded by `limits`, the latter checked
    against the manifest's checksum. NotFound / BundleError as `read_manifest`."""
    manifest = await read_manifest(store, version, limits)

    def parse(data: bytes, content: Any) -> Preprocessing:
        if manifest.files.get(PREPROCESSING_FILE) != hashlib.sha256(data).hexdigest():
            raise BundleError(f"checksum of {PREPROCESSING_FILE} does not match the manifest")
        return Preprocessing.from_dict(content, limits)

    return manifest, await _read_stored(store, version, PREPROCESSING_FILE, limits, parse)


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
