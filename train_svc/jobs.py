"""Training jobs: the Job record, its persistence in the store, and the runner that executes them one at a time.

A job is QUEUED by `submit`, then RUNNING (download the dataset here, train in a child process, publish
the bundle), and ends SUCCEEDED, FAILED (with a readable `error`) or CANCELLED. Every state change is
written to `jobs/<job_id>.json` in the store, so a restarted server still answers for past jobs and marks
the ones it was running when it died as FAILED. No gRPC here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiment import bundle
from sentiment.dataset import DEFAULT_LIMITS, DatasetLimits
from sentiment.errors import FailedPrecondition, InvalidInput, NotFound, Overloaded, SentimentError
from sentiment.names import check_job_id, child_path, remove_tree
from sentiment.store import ArtifactStore
from train_svc.child import TrainingProcess
from train_svc.fetch import fetch_dataset, probe_dataset, validate_dataset_uri
from train_svc.metrics import TrainMetrics
from train_svc.params import TrainParams
from train_svc.workdir import WorkDir

log = logging.getLogger(__name__)

JOBS_PREFIX = "jobs"
MAX_RECORD_BYTES = 1 << 20  # a job record is a few hundred bytes; the store is not trusted to say so
RESTARTED_RUNNING = "server restarted while the job was running"
RESTARTED_QUEUED = "server restarted before the job ran"
SHUTDOWN_REASON = "the server shut down"
# The dataset's local name never comes from its URI (one ending in "/.." would name the scratch's parent);
# the reader tells gzip from CSV by its magic bytes.
DATASET_FILE = "dataset"
# What a trainer progress event may change in its job.
_PROGRESS_FIELDS = ("stage", "epoch", "epochs", "loss", "accuracy", "rows_read", "malformed_rows", "notice")
# How much longer than the trainer's stop timeout CancelJob waits for the job to end before answering.
_CANCEL_WAIT_MARGIN_S = 10.0


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass
class Job:
    """One training job; times are UNIX seconds (0 = not yet)."""

    job_id: str
    dataset_uri: str
    params: TrainParams
    promote: bool = False
    min_accuracy: float = 0.0
    state: JobState = JobState.QUEUED
    stage: str = "queued"
    epoch: int = 0
    epochs: int = 0
    loss: float = 0.0
    accuracy: float = 0.0
    model_version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    promoted: bool = False
    rows_read: int = 0
    malformed_rows: int = 0
    dataset_sha256: str = ""
    notice: str = ""  # set when the dataset was sampled down to MAX_DATASET_ROWS
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["state"] = self.state.value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        """A job from its store record (store data: ValueError/TypeError/KeyError when it does not fit)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        values["state"] = JobState(values["state"])
        names = {f.name for f in dataclasses.fields(TrainParams)}
        # Tolerant of records written by a version with other parameters: unknown ones are dropped.
        params = {k: v for k, v in dict(values.get("params", {})).items() if k in names}
        if not all(type(v) is int for v in params.values()):
            raise TypeError("params must be integers")
        values["params"] = TrainParams(**params)
        metrics = dict(values.get("metrics", {}))
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
            raise TypeError("metrics must be numbers")
        for f in dataclasses.fields(cls):
            if (
                f.name in values
                and f.default is not dataclasses.MISSING
                and not _fits(values[f.name], f.default)
            ):
                raise TypeError(f"{f.name} must be {type(f.default).__name__}")
        return cls(**values)


def _fits(value: Any, default: Any) -> bool:
    """`value` has the type of a scalar field's `default` (an int may stand for a float, a bool never)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return not isinstance(default, int | str) or type(value) is type(default)


@dataclass(frozen=True)
class TrainRequest:
    """What a caller asks for; `params` are overrides (0 = the recipe's default)."""

    dataset_uri: str = ""
    params: dict[str, int] = field(default_factory=dict)
    promote: bool = False
    min_accuracy: float = 0.0


def new_job_id(now: datetime | None = None) -> str:
    """Sortable and unique: `job-20261128-153012-a1b2c3d4`."""
    now = now or datetime.now(UTC)
    return f"job-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


class JobCancelled(Exception):
    """Raised inside the runner when a cancel request is honoured; the message is the reason."""


class TrainingFailed(SentimentError):
    """The trainer reported a failure or its process died; the message says why."""


class JobRecords:
    """`jobs/<job_id>.json` in the artifact store, one object per job, rewritten at each state change."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    async def save(self, job: Job) -> None:
        data = json.dumps(job.to_record(), sort_keys=True).encode()
        await self._store.put_bytes(f"{JOBS_PREFIX}/{job.job_id}.json", data)

    async def load_all(self) -> list[Job]:
        """Every readable record; one that does not parse, or whose job_id is not a job id
        (`check_job_id`) or not its key's name, is store data not to trust: logged and ignored."""
        keys = [k for k in await self._store.list_keys(JOBS_PREFIX + "/") if k.endswith(".json")]
        limit = asyncio.Semaphore(16)

        async def load(key: str) -> Job | None:
            async with limit:
                try:
                    job = Job.from_record(json.loads(await self._store.get_bytes(key, MAX_RECORD_BYTES)))
                    if key != f"{JOBS_PREFIX}/{check_job_id(job.job_id)}.json":
                        raise ValueError(f"it holds job {job.job_id!r}")
                    return job
                except (ValueError, KeyError, TypeError, InvalidInput) as exc:
                    log.warning("ignoring job record %s: %s", key, exc)
                    return None

        return [job for job in await asyncio.gather(*(load(k) for k in keys)) if job is not None]


class JobRunner:
    """Queues jobs (FIFO) and runs one at a time; `watch` streams a job's changes.

    `start()` owns the work dir (`train_svc.workdir`), loads the recorded jobs and starts the worker;
    `aclose()` cancels what is queued or running, records it and releases the work dir. At most
    `max_queued_jobs` wait (Overloaded beyond). Failures of one job never stop the worker.
    """

    def __init__(
        self,
        store: ArtifactStore,
        *,
        work_dir: str = "",
        default_dataset_uri: str = "",
        cancel_timeout_s: float = 5.0,
        code_version: str = "unknown",
        log_level: str = "INFO",
        metrics: TrainMetrics | None = None,
        dataset_limits: DatasetLimits = DEFAULT_LIMITS,
        max_queued_jobs: int = 16,
    ) -> None:
        self._store = store
        self._records = JobRecords(store)
        self._work_dir_setting = work_dir
        self._workdir: WorkDir | None = None
        self._limits = dataset_limits
        self._max_queued_jobs = max_queued_jobs
        self._default_dataset_uri = default_dataset_uri
        self._cancel_timeout_s = cancel_timeout_s
        self._code_version = code_version
        self._log_level = log_level
        self._metrics = metrics or TrainMetrics()
        self._jobs: dict[str, Job] = {}
        self._revisions: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._queue: deque[str] = deque()
        self._queued = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._current: Job | None = None
        self._current_task: asyncio.Task[None] | None = None
        self._process: TrainingProcess | None = None
        self._cancel_reasons: dict[str, str] = {}
        self._closing = False

    # --- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._workdir = await asyncio.to_thread(WorkDir.open, self._work_dir_setting)
        for job in await self._records.load_all():
            self._jobs[job.job_id] = job
            if not job.done:
                reason = RESTARTED_RUNNING if job.state is JobState.RUNNING else RESTARTED_QUEUED
                job.state, job.error, job.finished_at = JobState.FAILED, reason, time.time()
                log.warning("job %s: %s; marked FAILED", job.job_id, reason, extra={"job_id": job.job_id})
                await self._records.save(job)
        self._metrics.set_job_counts(j.state for j in self._jobs.values())
        self._worker = asyncio.create_task(self._work(), name="train-jobs")

    async def aclose(self) -> None:
        """Cancel queued jobs and the running one (recorded as CANCELLED), then stop the worker."""
        if self._closing:
            return
        self._closing = True
        pending = [self._jobs[job_id] for job_id in self._queue]
        self._queue.clear()
        for job in pending:
            if job.state is JobState.QUEUED:
                await self._finish_cancelled(job, SHUTDOWN_REASON)
        if self._current is not None and self._current_task is not None:
            self._request_cancel(self._current, SHUTDOWN_REASON)
            # The stop request, then terminate and kill, bound this; the margin covers the publish stage.
            done, _ = await asyncio.wait({self._current_task}, timeout=self._cancel_timeout_s + 30)
            if not done:
                self._current_task.cancel()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._workdir is not None:
            await asyncio.to_thread(self._workdir.close)

    @property
    def trainer_pid(self) -> int | None:
        """The process id of the running trainer child, if one is running."""
        return self._process.pid if self._process is not None else None

    # --- requests -----------------------------------------------------------------------------------

    async def submit(self, request: TrainRequest) -> Job:
        """Validate and queue a job (InvalidInput at once for a bad request, Overloaded when
        `max_queued_jobs` already wait); returns it QUEUED."""
        if self._closing or self._worker is None:
            raise FailedPrecondition("the server is not accepting jobs (starting or shutting down)")
        if len(self._queue) >= self._max_queued_jobs:
            raise Overloaded(
                f"{len(self._queue)} jobs are already queued (MAX_QUEUED_JOBS={self._max_queued_jobs}); "
                "retry when one has run"
            )
        params = TrainParams().with_overrides(request.params)
        if not math.isfinite(request.min_accuracy) or not 0.0 <= request.min_accuracy <= 1.0:
            raise InvalidInput(f"min_accuracy must be between 0 and 1, got {request.min_accuracy}")
        uri = validate_dataset_uri(request.dataset_uri or self._default_dataset_uri)
        job = Job(
            job_id=new_job_id(),
            dataset_uri=uri,
            params=params,
            promote=request.promote,
            min_accuracy=round(request.min_accuracy, 6),
            epochs=params.epochs,
            created_at=time.time(),
        )
        # Recorded before it is acknowledged, and before the worker can write a later state.
        await self._records.save(job)
        self._jobs[job.job_id] = job
        self._queue.append(job.job_id)
        self._queued.set()
        self._changed_now(job)
        log.info("job %s queued for %s", job.job_id, uri, extra={"job_id": job.job_id})
        return self._snapshot(job)

    def get(self, job_id: str) -> Job:
        return self._snapshot(self._job(job_id))

    def list(self) -> list[Job]:
        """Every known job, newest first."""
        jobs = sorted(self._jobs.values(), key=lambda j: (j.created_at, j.job_id), reverse=True)
        return [self._snapshot(j) for j in jobs]

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then each change (changes that land together are coalesced) until it ends."""
        job = self._job(job_id)
        while True:
            seen = self._revisions.get(job_id, 0)
            snapshot = self._snapshot(job)
            yield snapshot
            if snapshot.done:
                return
            while self._revisions.get(job_id, 0) == seen:
                await self._changed.wait()

    async def cancel(self, job_id: str) -> Job:
        """QUEUED: CANCELLED at once. RUNNING: stop it and wait (bounded) until it ends. Ended: FailedPrecondition."""
        job = self._job(job_id)
        if job.done:
            raise FailedPrecondition(f"job {job_id} already ended {job.state.value}")
        if job.state is JobState.QUEUED:
            if job_id in self._queue:
                self._queue.remove(job_id)
            await self._finish_cancelled(job, "cancelled by request")
            return self._snapshot(job)
        self._request_cancel(job, "cancelled by request")
        # Bounded: a trainer is terminated after cancel_timeout_s, but a long download only notices later.
        try:
            async with asyncio.timeout(self._cancel_timeout_s + _CANCEL_WAIT_MARGIN_S):
                async for _ in self.watch(job_id):
                    pass
        except TimeoutError:
            pass
        return self._snapshot(job)

    # --- internals ----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"job {job_id!r} not found") from None

    @staticmethod
    def _snapshot(job: Job) -> Job:
        return dataclasses.replace(job, metrics=dict(job.metrics))

    def _changed_now(self, job: Job) -> None:
        """Wake every watcher; each checks whether its job moved."""
        self._revisions[job.job_id] = self._revisions.get(job.job_id, 0) + 1
        self._changed.set()
        self._changed = asyncio.Event()
        self._metrics.set_job_counts(j.state for j in self._jobs.values())
        if job is self._current:
            self._metrics.set_stage(job.stage if job.state is JobState.RUNNING else "idle")
            self._metrics.epoch.set(job.epoch)

    def _update(self, job: Job, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(job, name, value)
        self._changed_now(job)

    async def _save(self, job: Job) -> None:
        try:
            await self._records.save(job)
        except Exception:
            log.exception("could not record job %s", job.job_id, extra={"job_id": job.job_id})

    async def _finish(self, job: Job, **changes: Any) -> None:
        """Apply a job's final state, record it, then tell the watchers (so what they see has landed)."""
        for name, value in changes.items():
            setattr(job, name, value)
        job.finished_at = time.time()
        await self._save(job)
        self._changed_now(job)

    async def _finish_cancelled(self, job: Job, reason: str) -> None:
        log.info("job %s cancelled: %s", job.job_id, reason, extra={"job_id": job.job_id})
        await self._finish(job, state=JobState.CANCELLED, error=reason)

    def _request_cancel(self, job: Job, reason: str) -> None:
        self._cancel_reasons.setdefault(job.job_id, reason)
        if job is self._current and self._process is not None:
            self._process.request_stop()

    def _check_cancel(self, job: Job) -> None:
        if job.job_id in self._cancel_reasons:
            raise JobCancelled(self._cancel_reasons[job.job_id])

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
            job = self._jobs[self._queue.popleft()]
            if job.state is not JobState.QUEUED:
                continue
            self._current = job
            self._current_task = asyncio.create_task(self._execute(job), name=f"job-{job.job_id}")
            try:
                await asyncio.shield(self._current_task)
            except Exception:
                log.exception("job %s crashed the runner", job.job_id, extra={"job_id": job.job_id})
            finally:
                self._current = None
                self._current_task = None
                self._metrics.set_stage("idle")

    async def _execute(self, job: Job) -> None:
        started = time.monotonic()
        self._update(job, state=JobState.RUNNING, stage="download", started_at=time.time())
        await self._save(job)
        assert self._workdir is not None
        scratch = child_path(self._workdir.path, job.job_id)
        log.info("job %s started", job.job_id, extra={"job_id": job.job_id})
        final: dict[str, Any]
        try:
            final = await self._train_and_publish(job, scratch, started)
        except JobCancelled as exc:
            final = {"state": JobState.CANCELLED, "error": str(exc)}
        except SentimentError as exc:
            final = {"state": JobState.FAILED, "error": str(exc)}
        except Exception as exc:
            log.exception("job %s failed", job.job_id, extra={"job_id": job.job_id})
            final = {"state": JobState.FAILED, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            self._cancel_reasons.pop(job.job_id, None)
            await self._remove_scratch(job, scratch)
        duration = time.monotonic() - started
        self._metrics.job_duration.labels(state=final["state"].value).observe(duration)
        log.info(
            "job %s %s%s",
            job.job_id,
            final["state"].value,
            f": {final['error']}" if final.get("error") else "",
            extra={"job_id": job.job_id, "duration_ms": round(duration * 1000)},
        )
        await self._finish(job, **final)

    async def _remove_scratch(self, job: Job, scratch: Path) -> None:
        """Delete a job's scratch folder; a failure is logged (the job's outcome stands)."""
        assert self._workdir is not None
        try:
            await asyncio.to_thread(remove_tree, self._workdir.path, scratch)
        except (OSError, ValueError):
            log.exception("job %s: could not remove %s", job.job_id, scratch, extra={"job_id": job.job_id})

    async def _train_and_publish(self, job: Job, scratch: Path, started: float) -> dict[str, Any]:
        """Download, probe, train in a child, publish, maybe promote; returns the job's final fields."""
        timings: dict[str, float] = {}
        scratch.mkdir()  # new: the sweep at start removed any folder of that name
        dataset_path = scratch / DATASET_FILE
        t0 = time.monotonic()
        job.dataset_sha256 = await fetch_dataset(job.dataset_uri, dataset_path, self._limits.max_bytes)
        timings["download_s"] = time.monotonic() - t0
        self._check_cancel(job)
        self._update(job, stage="read")
        await asyncio.to_thread(probe_dataset, dataset_path, self._limits.max_bytes)
        self._check_cancel(job)

        out_dir = scratch / "bundle"
        process = TrainingProcess(
            dataset_path,
            job.params.to_dict(),
            out_dir,
            limits=self._limits,
            log_level=self._log_level,
            cancel_timeout_s=self._cancel_timeout_s,
        )
        self._process = process
        t0 = time.monotonic()
        try:
            outcome = await process.run(lambda event: self._on_progress(job, event))
        finally:
            self._process = None
        timings["child_s"] = time.monotonic() - t0
        if outcome.cancelled:
            raise JobCancelled(self._cancel_reasons.get(job.job_id, "cancelled"))
        if outcome.error:
            raise TrainingFailed(outcome.error)
        self._check_cancel(job)

        self._update(job, stage="publish")
        manifest = await asyncio.to_thread(self._complete_manifest, job, out_dir, timings, started)
        version = bundle.new_version()
        await bundle.publish(self._store, out_dir, version)
        metrics = manifest["metrics"]
        promoted = False
        if job.promote and metrics["accuracy"] >= job.min_accuracy:
            await bundle.set_current(self._store, version)
            promoted = True
        elif job.promote:
            log.info(
                "job %s: accuracy %.4f below min_accuracy %.4f; %s not promoted",
                job.job_id,
                metrics["accuracy"],
                job.min_accuracy,
                version,
                extra={"job_id": job.job_id, "model_version": version},
            )
        return {
            "state": JobState.SUCCEEDED,
            "stage": "done",
            "model_version": version,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "promoted": promoted,
        }

    def _complete_manifest(
        self, job: Job, out_dir: Path, timings: dict[str, float], started: float
    ) -> dict[str, Any]:
        """Add what only the runner knows (job, dataset checksum, timings, code version) to manifest.json."""
        path = out_dir / bundle.MANIFEST_FILE
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        manifest["metrics"]["train_seconds"] = round(time.monotonic() - started, 3)
        manifest["job_id"] = job.job_id
        manifest["dataset"] = {"uri": job.dataset_uri, "sha256": job.dataset_sha256}
        manifest["code_version"] = self._code_version
        manifest["created_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        manifest["timings"] = {**manifest.get("timings", {}), **{k: round(v, 3) for k, v in timings.items()}}
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        return manifest

    def _on_progress(self, job: Job, event: dict[str, Any]) -> None:
        changes = {name: event[name] for name in _PROGRESS_FIELDS if name in event}
        if changes:
            self._update(job, **changes)
