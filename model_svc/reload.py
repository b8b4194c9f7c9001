"""Hot reload: poll `models/CURRENT`; fetch, load and warm a new version beside the old one, then swap."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from model_svc import metrics
from model_svc.model import LoadedModel
from model_svc.predictor import Predictor
from sentiment import bundle
from sentiment.errors import BundleError, NotFound
from sentiment.store import ArtifactStore

log = logging.getLogger(__name__)

MAX_RETRY_S = 600.0


@dataclass
class _Failure:
    reason: str
    attempts: int
    retry_at: float | None  # time.monotonic(); None = never (the bundle itself is bad)


class Reloader:
    """Keeps `predictor.model` equal to the version `models/CURRENT` names, whenever that version loads.

    A version that fails verification (BundleError: format version, checksum, missing file) is refused for
    good, since versions are immutable; any other failure (store unreachable, a version not found) is
    retried with exponential backoff. Either way the old model keeps serving. `on_loaded` is awaited
    after each swap.
    """

    def __init__(
        self,
        store: ArtifactStore,
        model_dir: Path,
        predictor: Predictor,
        interval_s: float,
        on_loaded: Callable[[LoadedModel], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.model_dir = model_dir
        self.predictor = predictor
        self.interval_s = interval_s
        self.on_loaded = on_loaded
        self.failures: dict[str, _Failure] = {}
        self._attempted: dict[str, asyncio.Event] = {}
        self._told_nothing_promoted = False
        self.current_version: str | None = None  # what models/CURRENT named at the last poll

    async def wait_for_attempt(self, version: str) -> None:
        """Return once a load of `version` has been attempted (succeeded or failed)."""
        await self._attempted.setdefault(version, asyncio.Event()).wait()

    async def run(self) -> None:
        """Poll forever (cancel to stop); never raises on a bad store or bundle."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> bool:
        """One poll: load CURRENT if it names a version not serving yet. True when a model was swapped in."""
        try:
            version = await bundle.read_current(self.store)
        except Exception as exc:
            log.warning("cannot read %s from %s: %s", bundle.CURRENT_KEY, self.store.uri, exc)
            return False
        self.current_version = version
        if version is None:
            if not self._told_nothing_promoted:
                log.info("no model promoted yet in %s; polling every %.1fs", self.store.uri, self.interval_s)
                self._told_nothing_promoted = True
            return False
        if version == self.predictor.version:
            return False
        failure = self.failures.get(version)
        if failure is not None and (failure.retry_at is None or time.monotonic() < failure.retry_at):
            return False
        try:
            return await self._load(version)
        finally:
            self._attempted.setdefault(version, asyncio.Event()).set()

    async def _load(self, version: str) -> bool:
        started = time.monotonic()
        directory = self.model_dir / version
        try:
            local = await bundle.fetch(self.store, version, directory)
            model = await asyncio.to_thread(_load_and_warm, local)
        except Exception as exc:
            self._record_failure(version, exc)
            await asyncio.to_thread(shutil.rmtree, directory, True)
            return False
        elapsed = time.monotonic() - started
        old = self.predictor.swap(model)
        self.failures.pop(version, None)
        metrics.MODEL_LOAD_SECONDS.labels(version).set(elapsed)
        metrics.MODEL.labels(version).set(1)
        if old is not None:
            metrics.MODEL.remove(old.version)
            metrics.MODEL_LOAD_SECONDS.remove(old.version)
            await asyncio.to_thread(shutil.rmtree, self.model_dir / old.version, True)
        log.info(
            "model %s serving (fetch + load + warm %.2fs%s)",
            version,
            elapsed,
            f", replaced {old.version}" if old else "",
            extra={"model_version": version, "duration_ms": round(elapsed * 1000)},
        )
        if self.on_loaded is not None:
            await self.on_loaded(model)
        return True

    def _record_failure(self, version: str, exc: Exception) -> None:
        metrics.RELOAD_FAILURES.inc()
        previous = self.failures.get(version)
        attempts = previous.attempts + 1 if previous else 1
        serving = self.predictor.version or "none"
        if isinstance(exc, BundleError):
            self.failures[version] = _Failure(str(exc), attempts, None)
            log.error(
                "model %s refused, not retried: %s (still serving: %s)",
                version,
                exc,
                serving,
                extra={"model_version": version},
            )
            return
        delay = min(MAX_RETRY_S, self.interval_s * 2**attempts)
        self.failures[version] = _Failure(str(exc), attempts, time.monotonic() + delay)
        log.error(
            "model %s failed to load (attempt %d), retry in %.0fs: %s (still serving: %s)",
            version,
            attempts,
            delay,
            exc,
            serving,
            exc_info=not isinstance(exc, (OSError, NotFound)),
            extra={"model_version": version},
        )


def _load_and_warm(local: bundle.LocalBundle) -> LoadedModel:
    model = LoadedModel(local)
    warm_s = model.warm()
    log.debug("model %s loaded in %.2fs, warmed in %.2fs", local.version, model.load_s, warm_s)
    return model
