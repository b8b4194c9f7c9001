"""stream_svc configuration: one frozen dataclass read from environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from sentiment.config import Environ, read_settings, setting
from sentiment.errors import ConfigError, InvalidInput
from sentiment.predict_client import DEFAULT_CONNECTIONS
from sentiment.store import check_location
from stream_svc.keys import TableLayout

SOURCES = ("x", "replay")


def _source(value: str) -> str:
    source = value.strip().lower()
    if source not in SOURCES:
        raise ConfigError(f"SOURCE={source!r} must be one of {', '.join(SOURCES)}")
    return source


def _rules(value: str) -> tuple[str, ...]:
    """X_RULES: filtered-stream rules separated by ';' (empty ones dropped)."""
    return tuple(rule.strip() for rule in value.split(";") if rule.strip())


# The program's exit codes beside sentiment.config's EXIT_OK (0) and EXIT_CONFIG (2).
EXIT_FAILED = 1  # the counters do not balance, the source failed, or the X stream ended by itself
EXIT_TABLE_REFUSED = 3  # DynamoDB refused the credentials, the permissions or the table
EXIT_X_REFUSED = 4  # the X API refused the token X_AUTH_MAX_TRIES times
X_API_BASE_URL = "https://api.twitter.com"


@dataclass(frozen=True)
class StreamConfig:
    model_target: str = setting(
        "MODEL_TARGET",
        "model_svc address (gRPC target; round_robin over what it resolves to)",
        "dns:///model-svc-headless:50052",
    )
    source: str = setting(
        "SOURCE", "x (X API v2 filtered stream) or replay (a JSONL file)", "x", parse=_source
    )
    replay_path: str = setting("REPLAY_PATH", "replay file (required with SOURCE=replay)", "")
    replay_rate: float = setting(
        "REPLAY_RATE",
        "tweets per second for a replay; 0: as fast as the pipeline takes them",
        0.0,
        minimum=0.0,
    )
    x_bearer_token: str = setting("X_BEARER_TOKEN", "X API bearer token (required with SOURCE=x)", "")
    x_rules: tuple[str, ...] = setting(
        "X_RULES", "filtered-stream rules, separated by ';' (required with SOURCE=x)", (), parse=_rules
    )
    x_api_base_url: str = setting(
        "X_API_BASE_URL",
        "X API host (tests point it at a fake on loopback)",
        X_API_BASE_URL,
        parse=lambda url: url.rstrip("/"),
    )
    dynamodb_table: str = setting("DYNAMODB_TABLE", "the analysis table", "tweet_sentiment")
    batch_size: int = setting("BATCH_SIZE", "tweets per PredictBatch call", 64, minimum=1)
    batch_max_wait_s: float = setting(
        "BATCH_MAX_WAIT_S",
        "a partial batch is sent once its first tweet has waited this long",
        0.05,
        minimum=0.0,
    )
    predict_concurrency: int = setting("PREDICT_CONCURRENCY", "PredictBatch calls in flight", 4, minimum=1)
    predict_connections: int = setting(
        "PREDICT_CONNECTIONS",
        "connections to each model_svc pod, taken in turn (a pod's WORKERS split its connections)",
        DEFAULT_CONNECTIONS,
        minimum=1,
    )
    write_concurrency: int = setting("WRITE_CONCURRENCY", "BatchWriteItem requests in flight", 8, minimum=1)
    predict_timeout_s: float = setting(
        "PREDICT_TIMEOUT_S",
        "deadline of one PredictBatch attempt (UNAVAILABLE and friends are retried)",
        10.0,
        minimum=0.001,
    )
    dead_letter_path: str = setting(
        "DEAD_LETTER_PATH",
        "JSONL of the tweets that could not be predicted or written; with an s3:// DEAD_LETTER_URI, the spool",
        "dead-letter.jsonl",
    )
    metrics_port: int = setting(
        "METRICS_PORT", "Prometheus /metrics, /livez and /readyz port; 0: off", 8003, minimum=0
    )
    tls_ca_path: str = setting("TLS_CA_PATH", "CA bundle to reach model_svc over TLS; empty: plaintext", "")
    log_level: str = setting(
        "LOG_LEVEL", "log level (JSON lines when stderr is not a terminal)", "INFO", parse=str.upper
    )
    # Keep it below the pod's terminationGracePeriodSeconds, or Kubernetes kills the process first.
    grace_s: float = setting(
        "GRACE_S",
        "seconds the drain may take after SIGTERM/SIGINT; then the rest is dead-lettered",
        20.0,
        minimum=0.0,
    )
    # tweepy's own HTTP-error schedule starts at 5 s too.
    x_auth_max_tries: int = setting(
        "X_AUTH_MAX_TRIES", "401/403 answers in a row from the X API before the program exits 4", 3, minimum=1
    )
    x_auth_retry_wait_s: float = setting(
        "X_AUTH_RETRY_WAIT_S", "wait after the first 401/403, doubled after each", 5.0, minimum=0.0
    )
    dynamodb_auth_max_tries: int = setting(
        "DYNAMODB_AUTH_MAX_TRIES",
        "tries of a BatchWriteItem refused for its credentials, permissions or table before the exit 3",
        4,
        minimum=1,
    )
    # X keeps a connection alive with a heartbeat every 20 s.
    stall_s: float = setting(
        "STALL_S",
        "/livez fails once the connected source or the event loop is silent this long",
        90.0,
        minimum=1.0,
    )
    code_version: str = setting("CODE_VERSION", "the image's tag, reported by stream_svc_build_info", "")
    code_revision: str = setting("CODE_REVISION", "the commit, reported by stream_svc_build_info", "")
    # The time-bucket key design (stream_svc.keys).
    bucket_shards: int = setting(
        "BUCKET_SHARDS", "by_time index partitions per hour; writers and reports must agree", 1, minimum=1
    )
    retention_days: float = setting(
        "RETENTION_DAYS", "days an item is kept after analysis (DynamoDB TTL); 0: for ever", 0.0, minimum=0.0
    )
    # s3://: spooled at dead_letter_path, shipped as each file rolls over and at exit; a local path
    # becomes dead_letter_path.
    dead_letter_uri: str = setting(
        "DEAD_LETTER_URI",
        "where dead letters last: s3://bucket/prefix or a local path; empty: DEAD_LETTER_PATH",
        "",
        parse=str.strip,
    )
    dead_letter_roll_s: float = setting(
        "DEAD_LETTER_ROLL_S",
        "a dead-letter file older than this is closed as a segment (and shipped)",
        300.0,
        minimum=1.0,
    )
    dead_letter_roll_mb: float = setting(
        "DEAD_LETTER_ROLL_MB", "... or larger than this", 64.0, minimum=0.001
    )

    @classmethod
    def from_env(cls, environ: Environ, require_source: bool = True) -> StreamConfig:
        """Read every variable; a missing or malformed one raises ConfigError naming it.

        `require_source=False` skips the checks of the source's own variables (for `create-table`, `report`).
        """
        values = read_settings(cls, environ)
        # A local DEAD_LETTER_URI stands for DEAD_LETTER_PATH; an s3:// one makes DEAD_LETTER_PATH its spool.
        uri, path = values["dead_letter_uri"], values["dead_letter_path"]
        try:
            check_location(uri or path, "DEAD_LETTER_URI")
        except InvalidInput as exc:
            raise ConfigError(str(exc)) from None
        if uri and not uri.startswith("s3://"):
            values["dead_letter_path"] = uri
        values["dead_letter_uri"] = uri or path
        config = cls(**values)
        if require_source:
            config.check_source()
        return config

    @property
    def layout(self) -> TableLayout:
        return TableLayout(bucket_shards=self.bucket_shards, retention_days=self.retention_days)

    @property
    def dead_letters_to_s3(self) -> bool:
        return self.dead_letter_uri.startswith("s3://")

    def check_source(self) -> None:
        """The variables the chosen source needs are set (the `report` command needs none of them)."""
        if self.source == "replay" and not self.replay_path:
            raise ConfigError("REPLAY_PATH is required when SOURCE=replay")
        if self.source == "x":
            if not self.x_bearer_token:
                raise ConfigError("X_BEARER_TOKEN is required when SOURCE=x")
            if not self.x_rules:
                raise ConfigError("X_RULES is required when SOURCE=x (rules separated by ';')")
        if not self.x_api_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"X_API_BASE_URL={self.x_api_base_url!r} must start with http:// or https://")
