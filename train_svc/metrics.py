"""Prometheus metrics of train_svc: jobs by state, job duration, the running job's stage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
STAGES = ("idle", "download", "read", "word2vec", "fit", "evaluate", "publish")


class TrainMetrics:
    """One registry per server (tests run several servers in one process); served when `port` > 0."""

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
        self.stage.state("idle")
        self._http: Any = None

    def set_job_counts(self, states: Iterable[str]) -> None:
        counts = dict.fromkeys(STATES, 0)
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.jobs.labels(state=state).set(count)

    def set_stage(self, stage: str) -> None:
        self.stage.state(stage if stage in STAGES else "idle")

    def serve(self, port: int) -> None:
        if port > 0:
            self._http, _thread = start_http_server(port, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
