"""A training job: its record (`Job`), its states (`JobState`), the stage it is at (`Stage`), and what a
caller asks for (`TrainRequest`). Plain data: the runner (`train_svc.runner`) changes it, the records
(`train_svc.records`) persist it, the servicer translates it. No I/O here.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sentiment.errors import SentimentError
from train_svc.params import TrainParams


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Stage(enum.StrEnum):
    """Where a job is, in order. The trainer reports read to evaluate; the runner the others."""

    QUEUED = "queued"
    DOWNLOAD = "download"
    READ = "read"
    WORD2VEC = "word2vec"
    FIT = "fit"
    EVALUATE = "evaluate"
    PUBLISH = "publish"
    DONE = "done"


@dataclass
class Job:
    """One training job; times are UNIX seconds (0 = not yet)."""

    job_id: str
    dataset_uri: str
    params: TrainParams
    promote: bool = False
    min_accuracy: float = 0.0
    state: JobState = JobState.QUEUED
    stage: Stage = Stage.QUEUED
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

    def snapshot(self) -> Job:
        """A copy the caller may keep while this one changes."""
        return dataclasses.replace(self, metrics=dict(self.metrics))


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
