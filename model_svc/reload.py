"""Hot reload: poll `models/CURRENT`; fetch, load and warm a new version beside the old one, then swap.

Everything read from the store is input: the version CURRENT names is checked by `bundle.read_current`, each
load gets a folder of its own made here (`tempfile.mkdtemp` under MODEL_DIR, never a path built from the
version), the bundle is verified against `BundleLimits` before Keras opens it, and a load that outlives
`load_timeout_s` is abandoned while the old model keeps serving and polling goes on.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from model_svc.config import DEFAULT_XLA_MAX_ROWS
from model_svc.inference import Inference
from model_svc.model import LoadedModel
from sentiment import bundle
from sentiment.bundle import DEFAULT_LIMITS, BundleLimits
from sentiment.errors import BundleError, NotFound
from sentiment.names import remove_tree
from sentiment.store import ArtifactStore

log = logging.getLogger(__name__)

MAX_RETRY_S = 600.0


class LoadTimedOut(Exception):
    """A fetch + load + warm took longer than its budget; it is abandoned and retried later."""


@dataclass
class _Failure:
    reason: str
    attempts: int
    retry_at: float | None  # time.monotonic(); None = never (the bundle itself is bad)


class Reloader:
    """Keeps `inference.model` equal to the version `models/CURRENT` names, whenever that version loads.

    A version that fails verification (BundleError: format version, checksum, missing file, a field out of
    `limits`) is refused for good, since versions are immutable; any other failure (store unreachable, a
    version not found, a load past `load_timeout_s`) is retried with exponential backoff. Either way the
    old model keeps serving. `on_loaded` is awaited after each swap.
    """

    def __init__(
        self,
        store: ArtifactStore,
        model_dir: Path,
        inference: Inference,
        interval_s: float,
        on_loaded: Callable[[LoadedModel], Awaitable[None]] | None = None,
        limits: BundleLimits = DEFAULT_LIMITS,
        load_timeout_s: float = 300.0,
        xla_max_rows: int = DEFAULT_XLA_MAX_ROWS,
    ) -> None:
        self.store = store
        self.model_dir = model_dir
        self.inference = inference
        self.metrics = inference.metrics
        self.interval_s = interval_s
        self.on_loaded = on_loaded
        self.limits = limits
        self.load_timeout_s = load_timeout_s
        self.xla_max_rows = xla_max_rows
        self.failures: dict[str, _Failure] = {}
        # Loads abandoned at their deadline, still running: a version is not loaded again until its ends.
        self.abandoned: dict[str, asyncio.Future[None]] = {}
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
            self.metrics.load_failures.inc()
            log.warning("cannot read %s from %s: %s", bundle.CURRENT_KEY, self.store.uri, exc)
            return False
        self.current_version = version
        if version is None:
            if not self._told_nothing_promoted:
                log.info("no model promoted yet in %s; polling every %.1fs", self.store.uri, self.interval_s)
                self._told_nothing_promoted = True
            return False
        if version == self.inference.version:
            return False
        failure = self.failures.get(version)
        if failure is not None and (failure.retry_at is None or time.monotonic() < failure.retry_at):
            return False
        if version in self.abandoned:
            return False
        try:
            return await self._load(version)
        finally:
            self._attempted.setdefault(version, asyncio.Event()).set()

    async def _load(self, version: str) -> bool:
        started = time.monotonic()
        directory = Path(await asyncio.to_thread(tempfile.mkdtemp, f"{version}-", None, self.model_dir))
        try:
            async with asyncio.timeout(self.load_timeout_s):
                local = await bundle.fetch(self.store, version, directory, self.limits)
                model = await self._load_in_thread(local)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = LoadTimedOut(
                    f"fetch + load + warm took longer than {self.load_timeout_s:g}s; abandoned"
                )
            self._record_failure(version, exc)
            if version not in self.abandoned:
                await self._remove(directory)
            return False
        elapsed = time.monotonic() - started
        old = self.inference.swap(model)
        self.failures.pop(version, None)
        self.metrics.serving(version, elapsed, old.version if old else None)
        if old is not None:
            await self._remove(old.bundle.directory)
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

    async def _load_in_thread(self, local: bundle.LocalBundle) -> LoadedModel:
        """Load and warm in a worker thread. A thread cannot be stopped: when the caller's deadline cancels
        this, the load is left to end on its own in `abandoned`, is never swapped in, and its folder goes."""
        load = asyncio.ensure_future(
            asyncio.to_thread(_load_and_warm, local, self.limits.max_model_bytes, self.xla_max_rows)
        )
        try:
            return await asyncio.shield(load)
        except asyncio.CancelledError:
            self.abandoned[local.version] = asyncio.ensure_future(self._outlive(load, local))
            raise

    async def _outlive(self, load: asyncio.Future[LoadedModel], local: bundle.LocalBundle) -> None:
        try:
            await load
        except Exception:
            pass  # it was abandoned: what it raised no longer matters
        await self._remove(local.directory)
        del self.abandoned[local.version]
        log.info("abandoned load of model %s ended", local.version, extra={"model_version": local.version})

    async def _remove(self, directory: Path) -> None:
        """Delete a folder this reloader made under MODEL_DIR; a failure is logged, never raised."""
        try:
            await asyncio.to_thread(remove_tree, self.model_dir, directory)
        except (OSError, ValueError) as exc:
            log.error("could not remove %s: %s", directory, exc)

    def _record_failure(self, version: str, exc: Exception) -> None:
        self.metrics.load_failures.inc()
        previous = self.failures.get(version)
        attempts = previous.attempts + 1 if previous else 1
        serving = self.inference.version or "none"
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


def _load_and_warm(local: bundle.LocalBundle, max_weight_bytes: int, xla_max_rows: int) -> LoadedModel:
    model = LoadedModel(local, max_weight_bytes, xla_max_rows)
    warm_s = model.warm()
    log.debug("model %s loaded in %.2fs, warmed in %.2fs", local.version, model.load_s, warm_s)
    return model
