"""One job's work, in order: download the dataset, probe it, train in a child process, publish the bundle,
promote it through the registry. No queue and no gRPC: the runner (`train_svc.runner`) calls `run` for
one job at a time and learns of each step through `JobControl`.

The manifest is completed here (`_complete_manifest`: the job, the dataset, timings, code version, time)
from the trainer's part, and `bundle.write_manifest` writes it once, with the checksums, just before the
upload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sentiment import bundle
from sentiment.bundle import Manifest
from sentiment.dataset import DatasetLimits
from sentiment.store import ArtifactStore
from sentiment.timefmt import utc_iso
from train_svc import registry
from train_svc.child import TrainingProcess
from train_svc.fetch import fetch_dataset, probe_dataset
from train_svc.job import Job, JobCancelled, Stage, TrainingFailed

log = logging.getLogger(__name__)

# The dataset's local name never comes from its URI (one ending in "/.." would name the scratch's parent);
# the reader tells gzip from CSV by its magic bytes.
DATASET_FILE = "dataset"
BUNDLE_DIR = "bundle"
# What a trainer progress event may change in its job.
_PROGRESS_FIELDS = ("stage", "epoch", "epochs", "loss", "accuracy", "rows_read", "malformed_rows", "notice")


class JobControl(Protocol):
    """What the workflow needs from whoever owns the job (the runner, or a test)."""

    def update(self, job: Job, **changes: Any) -> None:
        """Apply `changes` to the job and tell its watchers."""

    def check_cancel(self, job: Job) -> None:
        """Raise JobCancelled, with the reason, when a cancel of the job was asked for."""

    def set_trainer(self, process: TrainingProcess | None) -> None:
        """The job's trainer child while it runs (so a cancel can stop it), None once it ended."""


@dataclass(frozen=True)
class Published:
    """What a job that succeeded made."""

    version: str
    metrics: dict[str, float]
    promoted: bool


@dataclass(frozen=True)
class Workflow:
    """The steps of a job against one store, with the server's limits and settings."""

    store: ArtifactStore
    limits: DatasetLimits
    log_level: str = "INFO"
    cancel_timeout_s: float = 5.0
    code_version: str = "unknown"

    async def run(self, job: Job, scratch: Path, control: JobControl, started: float) -> Published:
        """Work in `scratch` (a new folder the caller removes afterwards); `started` is the job's start
        (time.monotonic()). Raises JobCancelled, TrainingFailed or the SentimentError of a step."""
        timings: dict[str, float] = {}
        scratch.mkdir()  # new: the sweep at start removed any folder of that name
        dataset_path = scratch / DATASET_FILE
        t0 = time.monotonic()
        dataset_sha256 = await fetch_dataset(job.dataset_uri, dataset_path, self.limits.max_bytes)
        timings["download_s"] = time.monotonic() - t0
        control.check_cancel(job)
        control.update(job, stage=Stage.READ, dataset_sha256=dataset_sha256)
        await asyncio.to_thread(probe_dataset, dataset_path, self.limits.max_bytes)
        control.check_cancel(job)

        out_dir = scratch / BUNDLE_DIR
        t0 = time.monotonic()
        part = await self._train(job, dataset_path, out_dir, control)
        timings["child_s"] = time.monotonic() - t0
        control.check_cancel(job)

        control.update(job, stage=Stage.PUBLISH)
        manifest = _complete_manifest(part, job, self.code_version, timings, started)
        await asyncio.to_thread(bundle.write_manifest, out_dir, manifest)
        version = bundle.new_version()
        await bundle.publish(self.store, out_dir, version)
        promoted = await self._promote(job, version, manifest.metrics["accuracy"])
        return Published(version, {k: float(v) for k, v in manifest.metrics.items()}, promoted)

    async def _train(self, job: Job, dataset_path: Path, out_dir: Path, control: JobControl) -> Manifest:
        """The trainer in its child process; its part of the manifest."""
        process = TrainingProcess(
            dataset_path,
            job.params.to_dict(),
            out_dir,
            limits=self.limits,
            log_level=self.log_level,
            cancel_timeout_s=self.cancel_timeout_s,
        )

        def on_progress(event: dict[str, Any]) -> None:
            if changes := progress_changes(event):
                control.update(job, **changes)

        control.set_trainer(process)
        try:
            outcome = await process.run(on_progress)
        finally:
            control.set_trainer(None)
        if outcome.cancelled:
            control.check_cancel(job)
            raise JobCancelled("cancelled")
        if outcome.manifest is None:
            raise TrainingFailed(outcome.error)
        return outcome.manifest

    async def _promote(self, job: Job, version: str, accuracy: float) -> bool:
        """Promote when the job asked for it and the model passed its `min_accuracy` gate."""
        if not job.promote:
            return False
        if accuracy < job.min_accuracy:
            log.info(
                "job %s: accuracy %.4f below min_accuracy %.4f; %s not promoted",
                job.job_id,
                accuracy,
                job.min_accuracy,
                version,
                extra={"job_id": job.job_id, "model_version": version},
            )
            return False
        await registry.promote(self.store, version)
        return True


def progress_changes(event: dict[str, Any]) -> dict[str, Any]:
    """The job fields a trainer progress event sets."""
    changes = {name: event[name] for name in _PROGRESS_FIELDS if name in event}
    if "stage" in changes:
        changes["stage"] = Stage(changes["stage"])
    return changes


def _complete_manifest(
    part: Manifest, job: Job, code_version: str, timings: dict[str, float], started: float
) -> Manifest:
    """The trainer's part of the manifest with what only the job knows: the job, its dataset and its
    checksum, the parent's timings and the job's total seconds, the code version and the time."""
    return dataclasses.replace(
        part,
        metrics={**part.metrics, "train_seconds": round(time.monotonic() - started, 3)},
        timings={**part.timings, **{k: round(v, 3) for k, v in timings.items()}},
        job_id=job.job_id,
        dataset_uri=job.dataset_uri,
        dataset_sha256=job.dataset_sha256,
        code_version=code_version,
        created_at=utc_iso(),
    )
