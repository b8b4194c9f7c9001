"""Prometheus metrics of model_svc (one set per process), served on METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("model_svc_requests", "RPCs answered, by method and status code", ["rpc", "code"])
LATENCY = Histogram(
    "model_svc_request_seconds",
    "RPC latency in the server, by method",
    ["rpc"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "model_svc_batch_texts",
    "Texts per inference batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_SECONDS = Histogram(
    "model_svc_batch_seconds",
    "Inference time of one batch (tokenize + model), on the inference thread",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
TEXTS = Counter("model_svc_texts", "Texts scored by the model")
EXPIRED = Counter("model_svc_expired_texts", "Texts not computed because the caller's deadline had passed")
QUEUE_TEXTS = Gauge("model_svc_queue_texts", "Texts waiting for a batch")
MODEL = Gauge("model_svc_model", "1 for the model version now serving", ["version"])
MODEL_LOAD_SECONDS = Gauge(
    "model_svc_model_load_seconds", "Fetch + load + warm time of the last model loaded", ["version"]
)
RELOAD_FAILURES = Counter("model_svc_model_load_failures", "Model versions that failed to load")
