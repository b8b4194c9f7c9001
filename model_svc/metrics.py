"""Prometheus metrics of model_svc: one `ModelMetrics` (and registry) per server, served on METRICS_PORT."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ModelMetrics:
    """Every series model_svc exports, on its own registry (tests run several servers in one process)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "model_svc_requests",
            "RPCs answered, by method and status code",
            ["rpc", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "model_svc_request_seconds",
            "RPC latency in the server, by method",
            ["rpc"],
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.batch_texts = Histogram(
            "model_svc_batch_texts",
            "Texts per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "model_svc_batch_seconds",
            "Inference time of one batch (tokenize + model), on the inference thread",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.texts = Counter("model_svc_texts", "Texts scored by the model", registry=registry)
        self.expired = Counter(
            "model_svc_expired_texts",
            "Texts not computed because the caller's deadline had passed or could not be met",
            registry=registry,
        )
        self.queue_texts = Gauge("model_svc_queue_texts", "Texts waiting for a batch", registry=registry)
        self.model = Gauge(
            "model_svc_model_info", "1 for the model version now serving", ["version"], registry=registry
        )
        self.model_load_seconds = Gauge(
            "model_svc_model_load_seconds",
            "Fetch + load + warm time of the last model loaded",
            ["version"],
            registry=registry,
        )
        self.load_failures = Counter(
            "model_svc_model_load_failures", "Model versions that failed to load", registry=registry
        )

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one series (0 when it has none yet): what tests and benchmarks read."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def serving(self, version: str, load_s: float, replaced: str | None) -> None:
        """`version` now serves (loaded in `load_s`), in place of `replaced`."""
        self.model_load_seconds.labels(version).set(load_s)
        self.model.labels(version).set(1)
        if replaced is not None:
            self.model.remove(replaced)
            self.model_load_seconds.remove(replaced)
