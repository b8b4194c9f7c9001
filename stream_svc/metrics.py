"""Prometheus metrics of stream_svc (served on METRICS_PORT; 0 = off)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECEIVED = Counter("stream_tweets_received_total", "Tweets taken in from the source")
PREDICTED = Counter("stream_tweets_predicted_total", "Tweets that got a prediction")
WRITTEN = Counter("stream_tweets_written_total", "Tweets written to the table")
DEAD_LETTERED = Counter("stream_tweets_dead_lettered_total", "Tweets sent to the dead-letter file", ["stage"])
SKIPPED = Counter("stream_tweets_skipped_total", "Tweets not sent to the model", ["reason"])
MALFORMED = Counter("stream_messages_malformed_total", "Source messages skipped as malformed", ["kind"])
QUEUE_DEPTH = Gauge("stream_queue_depth", "Entries waiting in each pipeline queue", ["queue"])
LATENCY = Histogram(
    "stream_tweet_latency_seconds",
    "From the source handing a tweet over to its item being written",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PREDICT_RETRIES = Counter("stream_predict_retries_total", "PredictBatch calls retried")
DYNAMODB_RETRIES = Counter("stream_dynamodb_retries_total", "BatchWriteItem requests re-sent")
DYNAMODB_AUTH_ERRORS = Counter(
    "stream_dynamodb_auth_errors_total",
    "BatchWriteItem requests refused for their credentials, permissions or a missing table",
    ["code"],
)
X_HTTP_ERRORS = Counter(
    "stream_x_http_errors_total", "Non-200 answers of the X API (stream connects and rule calls)", ["status"]
)
ABANDONED = Counter(
    "stream_tweets_abandoned_total",
    "Tweets dead-lettered unfinished because the drain was abandoned (deadline or table refused)",
    ["reason"],
)


def start_metrics_server(port: int) -> None:
    if port > 0:
        start_http_server(port)
