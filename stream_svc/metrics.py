"""Prometheus metrics of stream_svc: one `StreamMetrics` per program instance, served on METRICS_PORT (0 = off)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class StreamMetrics:
    """Every stream metric, in a registry of its own (tests run several pipelines in one process).

    The pipeline, the sink and the X source count into the one they are given; the app serves its
    `registry` with `sentiment.metrics.MetricsEndpoint`.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "stream_tweets_received_total", "Tweets taken in from the source", registry=registry
        )
        self.predicted = Counter(
            "stream_tweets_predicted_total", "Tweets that got a prediction", registry=registry
        )
        self.written = Counter(
            "stream_tweets_written_total",
            "Tweets written to the table, by the sentiment written (the mix over time)",
            ["sentiment"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "stream_tweets_dead_lettered_total",
            "Tweets sent to the dead-letter file",
            ["stage"],
            registry=registry,
        )
        self.skipped = Counter(
            "stream_tweets_skipped_total", "Tweets not sent to the model", ["reason"], registry=registry
        )
        self.malformed = Counter(
            "stream_messages_malformed_total",
            "Source messages skipped as malformed",
            ["kind"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "stream_queue_depth", "Entries waiting in each pipeline queue", ["queue"], registry=registry
        )
        self.latency = Histogram(
            "stream_tweet_latency_seconds",
            "From the source handing a tweet over to its item being written",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.predict_retries = Counter(
            "stream_predict_retries_total", "PredictBatch calls retried", registry=registry
        )
        self.dynamodb_retries = Counter(
            "stream_dynamodb_retries_total", "BatchWriteItem requests re-sent", registry=registry
        )
        self.dynamodb_auth_errors = Counter(
            "stream_dynamodb_auth_errors_total",
            "BatchWriteItem requests refused for their credentials, permissions or a missing table",
            ["code"],
            registry=registry,
        )
        self.x_http_errors = Counter(
            "stream_x_http_errors_total",
            "Non-200 answers of the X API (stream connects and rule calls)",
            ["status"],
            registry=registry,
        )
        self.x_connected = Gauge(
            "stream_x_connected", "1 while the X filtered stream is connected", registry=registry
        )
        self.x_connects = Counter(
            "stream_x_connects_total", "Connections made to the X filtered stream", registry=registry
        )
        self.last_message = Gauge(
            "stream_last_message_timestamp_seconds",
            "When the source last heard anything (a tweet, a malformed message or an X keep-alive)",
            registry=registry,
        )
        self.abandoned = Counter(
            "stream_tweets_abandoned_total",
            "Tweets dead-lettered unfinished because the drain was abandoned (deadline or table refused)",
            ["reason"],
            registry=registry,
        )
        self.dead_letter_files_shipped = Counter(
            "stream_dead_letter_files_shipped_total",
            "Dead-letter segments shipped to DEAD_LETTER_URI (s3://)",
            registry=registry,
        )
        self.dead_letter_ship_errors = Counter(
            "stream_dead_letter_ship_errors_total",
            "Uploads of a dead-letter segment that failed (it stays on disk and is tried again)",
            registry=registry,
        )

    def total(self, name: str) -> float:
        """The sum of every sample named `name`, whatever its labels (e.g. written, all sentiments)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample (0 when it has not been counted yet): for tests and reports."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0
