"""Prometheus metrics of train_svc: jobs by state, job duration, the running job's stage.

The registry is this server instance's own (tests run several servers in one process); `server.py` serves
it through `sentiment.metrics.MetricsEndpoint`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

from train_svc.job import JobState, Stage

IDLE = "idle"  # no job running
STAGES = (IDLE, *(stage.value for stage in Stage))


class TrainMetrics:
    """The metrics of one server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge(
            "train_jobs", "Training jobs known to this server, by state", ["state"], registry=self.registry
        )
        self.job_duration = Histogram(
            "train_job_duration_seconds",
            "Wall time of finished jobs, from start to end, by final state",
            ["state"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
            registry=self.registry,
        )
        self.stage = Enum(
            "train_stage",
            "Stage of the running job (idle when none)",
            states=list(STAGES),
            registry=self.registry,
        )
        self.epoch = Gauge("train_epoch", "Last finished epoch of the running job", registry=self.registry)
        self.invalid_requests = Counter(
            "train_invalid_requests_total",
            "Requests refused as undecodable (a string that is not UTF-8), by RPC",
            ["rpc"],
            registry=self.registry,
        )
        self.stage.state(IDLE)

    def set_job_counts(self, states: Iterable[JobState]) -> None:
        counts = dict.fromkeys(JobState, 0)
        for state in states:
            counts[state] += 1
        for state, count in counts.items():
            self.jobs.labels(state=state.value).set(count)

    def set_stage(self, stage: Stage | None) -> None:
        """The running job's stage; None: no job is running."""
        self.stage.state(IDLE if stage is None else stage.value)
