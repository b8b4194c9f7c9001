"""The job queue: `JobRunner` takes jobs (`submit`), runs one at a time through the workflow
(`train_svc.workflow`), streams each job's changes (`watch`) and cancels them (`cancel`).

A job is QUEUED by `submit`, then RUNNING, and ends SUCCEEDED, FAILED (with a readable `error`) or
CANCELLED. Every state change is recorded (`train_svc.records`), so a restarted server still answers for
past jobs and marks the ones it was running when it died as FAILED. No gRPC here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sentiment.dataset import DEFAULT_LIMITS, DatasetLimits
from sentiment.errors import FailedPrecondition, InvalidInput, NotFound, Overloaded, SentimentError
from sentiment.names import child_path, remove_tree
from sentiment.store import ArtifactStore
from train_svc.child import TrainingProcess
from train_svc.fetch import validate_dataset_uri
from train_svc.job import Job, JobCancelled, JobState, Stage, TrainRequest, new_job_id
from train_svc.metrics import TrainMetrics
from train_svc.params import TrainParams
from train_svc.records import JobRecords
from train_svc.workdir import WorkDir
from train_svc.workflow import Workflow

log = logging.getLogger(__name__)

RESTARTED_RUNNING = "server restarted while the job was running"
RESTARTED_QUEUED = "server restarted before the job ran"
SHUTDOWN_REASON = "the server shut down"
# How much longer than the trainer's stop timeout CancelJob waits for the job to end before answering.
_CANCEL_WAIT_MARGIN_S = 10.0


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
        self._records = JobRecords(store)
        self._workflow = Workflow(store, dataset_limits, log_level, cancel_timeout_s, code_version)
        self._work_dir_setting = work_dir
        self._workdir: WorkDir | None = None
        self._max_queued_jobs = max_queued_jobs
        self._default_dataset_uri = default_dataset_uri
        self._cancel_timeout_s = cancel_timeout_s
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
        """Cancel queued jobs and the running one (recorded as CANCELLED), then stop the worker. Safe to
        call again once it returned."""
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
        return job.snapshot()

    def get(self, job_id: str) -> Job:
        return self._job(job_id).snapshot()

    def list(self) -> list[Job]:
        """Every known job, newest first."""
        jobs = sorted(self._jobs.values(), key=lambda j: (j.created_at, j.job_id), reverse=True)
        return [j.snapshot() for j in jobs]

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then each change (changes that land together are coalesced) until it ends."""
        job = self._job(job_id)
        while True:
            seen = self._revisions.get(job_id, 0)
            snapshot = job.snapshot()
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
            return job.snapshot()
        self._request_cancel(job, "cancelled by request")
        # Bounded: a trainer is terminated after cancel_timeout_s, but a long download only notices later.
        try:
            async with asyncio.timeout(self._cancel_timeout_s + _CANCEL_WAIT_MARGIN_S):
                async for _ in self.watch(job_id):
                    pass
        except TimeoutError:
            pass
        return job.snapshot()

    # --- the workflow's JobControl ------------------------------------------------------------------

    def update(self, job: Job, **changes: Any) -> None:
        """Apply `changes` to a job and tell its watchers."""
        for name, value in changes.items():
            setattr(job, name, value)
        self._changed_now(job)

    def check_cancel(self, job: Job) -> None:
        """Raise JobCancelled (with its reason) once a cancel of `job` was asked for."""
        if job.job_id in self._cancel_reasons:
            raise JobCancelled(self._cancel_reasons[job.job_id])

    def set_trainer(self, process: TrainingProcess | None) -> None:
        self._process = process

    # --- internals ----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"job {job_id!r} not found") from None

    def _changed_now(self, job: Job) -> None:
        """Wake every watcher; each checks whether its job moved."""
        self._revisions[job.job_id] = self._revisions.get(job.job_id, 0) + 1
        self._changed.set()
        self._changed = asyncio.Event()
        self._metrics.set_job_counts(j.state for j in self._jobs.values())
        if job is self._current:
            self._metrics.set_stage(job.stage)
            self._metrics.epoch.set(job.epoch)

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
                self._metrics.set_stage(None)

    async def _execute(self, job: Job) -> None:
        started = time.monotonic()
        self.update(job, state=JobState.RUNNING, stage=Stage.DOWNLOAD, started_at=time.time())
        await self._save(job)
        assert self._workdir is not None
        scratch = child_path(self._workdir.path, job.job_id)
        log.info("job %s started", job.job_id, extra={"job_id": job.job_id})
        final: dict[str, Any]
        try:
            published = await self._workflow.run(job, scratch, self, started)
            final = {
                "state": JobState.SUCCEEDED,
                "stage": Stage.DONE,
                "model_version": published.version,
                "metrics": published.metrics,
                "promoted": published.promoted,
            }
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
