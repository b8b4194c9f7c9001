"""The model registry as the store records it: published versions, their manifests, the CURRENT pointer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sentiment import bundle
from sentiment.errors import BundleError, InvalidInput
from sentiment.store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedModel:
    version: str
    manifest: dict[str, Any]
    current: bool


async def list_models(store: ArtifactStore) -> tuple[list[PublishedModel], str]:
    """Every published version (newest first) with its manifest, and the current version ("" if none)."""
    versions, current = await asyncio.gather(bundle.list_versions(store), bundle.read_current(store))
    limit = asyncio.Semaphore(16)

    async def read(version: str) -> PublishedModel | None:
        async with limit:
            try:
                manifest = await bundle.read_manifest(store, version)
            except BundleError as exc:
                log.warning("skipping model %s: %s", version, exc, extra={"model_version": version})
                return None
        return PublishedModel(version, manifest, version == current)

    models = [m for m in await asyncio.gather(*(read(v) for v in versions)) if m is not None]
    return models, current or ""


async def promote(store: ArtifactStore, version: str) -> PublishedModel:
    """Make a published version CURRENT; NotFound for a version the store does not hold."""
    if not version or "/" in version or version.startswith("."):
        raise InvalidInput(f"version {version!r} is not a model version name")
    manifest = await bundle.read_manifest(store, version)
    await bundle.set_current(store, version)
    log.info("model %s promoted", version, extra={"model_version": version})
    return PublishedModel(version, manifest, True)
