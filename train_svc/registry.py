"""The model registry as the store records it: published versions, what each one says of itself (its
manifest and preprocessing.json, where the thresholds are), and the CURRENT pointer. `promote` is the one
way train_svc makes a version CURRENT, for PromoteModel and for a job's `promote` alike."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sentiment import bundle
from sentiment.bundle import Manifest, Preprocessing
from sentiment.errors import BundleError
from sentiment.names import check_version
from sentiment.store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedModel:
    version: str
    manifest: Manifest
    preprocessing: Preprocessing
    current: bool


async def _current_or_none(store: ArtifactStore) -> str | None:
    """CURRENT, or None (logged) when it names no valid version: the listing still answers."""
    try:
        return await bundle.read_current(store)
    except BundleError as exc:
        log.warning("%s", exc)
        return None


async def list_models(store: ArtifactStore) -> tuple[list[PublishedModel], str]:
    """Every published version (newest first) whose manifest and preprocessing read, and the current
    version ("" if none); one that does not read is logged and left out."""
    versions, current = await asyncio.gather(bundle.list_versions(store), _current_or_none(store))
    limit = asyncio.Semaphore(16)

    async def read(version: str) -> PublishedModel | None:
        async with limit:
            try:
                manifest, preprocessing = await bundle.read_published(store, version)
            except BundleError as exc:
                log.warning("skipping model %s: %s", version, exc, extra={"model_version": version})
                return None
        return PublishedModel(version, manifest, preprocessing, version == current)

    models = [m for m in await asyncio.gather(*(read(v) for v in versions)) if m is not None]
    return models, current or ""


async def promote(store: ArtifactStore, version: str) -> PublishedModel:
    """Make a published version CURRENT; InvalidInput for a name that is not a version (`check_version`),
    NotFound for a version the store does not hold, BundleError for one whose manifest or preprocessing
    does not read."""
    version = check_version(version)
    manifest, preprocessing = await bundle.read_published(store, version)
    await bundle.set_current(store, version)
    log.info("model %s promoted", version, extra={"model_version": version})
    return PublishedModel(version, manifest, preprocessing, True)
