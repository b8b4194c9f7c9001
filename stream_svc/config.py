"""stream_svc configuration: one frozen dataclass read from environment variables."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sentiment.config import Environ, env_float, env_int, env_str
from sentiment.errors import ConfigError, InvalidInput
from sentiment.store import check_location
from stream_svc.keys import TableLayout

SOURCES = ("x", "replay")
X_API_BASE_URL = "https://api.twitter.com"


@dataclass(frozen=True)
class StreamConfig:
    model_target: str = "dns:///model-svc-headless:50052"
    source: str = "x"  # x | replay
    replay_path: str = ""
    replay_rate: float = 0.0  # tweets/s; 0 = as fast as the pipeline takes them
    x_bearer_token: str = ""
    x_rules: tuple[str, ...] = ()
    x_api_base_url: str = X_API_BASE_URL
    dynamodb_table: str = "tweet_sentiment"
    batch_size: int = 64
    batch_max_wait_s: float = 0.05
    predict_concurrency: int = 4
    write_concurrency: int = 8
    predict_timeout_s: float = 10.0
    dead_letter_path: str = "dead-letter.jsonl"
    metrics_port: int = 8003
    tls_ca_path: str = ""
    log_level: str = "INFO"
    # After SIGTERM the drain gets this long; then what is unfinished is dead-lettered and the process
    # exits. Keep it below the pod's terminationGracePeriodSeconds, or Kubernetes kills it first.
    grace_s: float = 20.0
    # Consecutive 401/403 answers from the X API before the source gives up, and the first wait between
    # tries (doubled after each; tweepy's own HTTP-error schedule starts at 5 s too).
    x_auth_max_tries: int = 3
    x_auth_retry_wait_s: float = 5.0
    # Tries of a BatchWriteItem refused for its credentials, permissions or a missing table (not its items).
    dynamodb_auth_max_tries: int = 4
    # /livez fails once the source is connected yet silent this long (X keeps alive every 20 s), or the
    # event loop has not turned for this long.
    stall_s: float = 90.0
    code_version: str = ""  # the image's tag and commit, as stream_svc_build_info reports them
    code_revision: str = ""
    # The time-bucket key design (stream_svc.keys): shards per hour of the `by_time` index, and how
    # many days an item is kept after it was analysed (0 = for ever; DynamoDB's TTL deletes it after).
    bucket_shards: int = 1
    retention_days: float = 0.0
    # Where dead letters go: s3://bucket/prefix (spooled at dead_letter_path, shipped as each file
    # rolls over and at exit) or a local path (then dead_letter_path is that path).
    dead_letter_uri: str = ""
    dead_letter_roll_s: float = 300.0
    dead_letter_roll_mb: float = 64.0

    @classmethod
    def from_env(cls, environ: Environ, require_source: bool = True) -> StreamConfig:
        """Read every variable; a missing or malformed one raises ConfigError naming it.

        `require_source=False` skips the checks of the source's own variables (for `create-table`, `report`).
        """
        source = env_str(environ, "SOURCE", cls.source).strip().lower()
        if source not in SOURCES:
            raise ConfigError(f"SOURCE={source!r} must be one of {', '.join(SOURCES)}")
        rules = tuple(r.strip() for r in environ.get("X_RULES", "").split(";") if r.strip())
        config = cls(
            model_target=env_str(environ, "MODEL_TARGET", cls.model_target),
            source=source,
            replay_path=environ.get("REPLAY_PATH", ""),
            replay_rate=env_float(environ, "REPLAY_RATE", cls.replay_rate, minimum=0.0),
            x_bearer_token=environ.get("X_BEARER_TOKEN", ""),
            x_rules=rules,
            x_api_base_url=env_str(environ, "X_API_BASE_URL", cls.x_api_base_url).rstrip("/"),
            dynamodb_table=env_str(environ, "DYNAMODB_TABLE", cls.dynamodb_table),
            batch_size=env_int(environ, "BATCH_SIZE", cls.batch_size, minimum=1),
            batch_max_wait_s=env_float(environ, "BATCH_MAX_WAIT_S", cls.batch_max_wait_s, minimum=0.0),
            predict_concurrency=env_int(environ, "PREDICT_CONCURRENCY", cls.predict_concurrency, minimum=1),
            write_concurrency=env_int(environ, "WRITE_CONCURRENCY", cls.write_concurrency, minimum=1),
            predict_timeout_s=env_float(environ, "PREDICT_TIMEOUT_S", cls.predict_timeout_s, minimum=0.001),
            dead_letter_path=env_str(environ, "DEAD_LETTER_PATH", cls.dead_letter_path),
            metrics_port=env_int(environ, "METRICS_PORT", cls.metrics_port, minimum=0),
            tls_ca_path=environ.get("TLS_CA_PATH", ""),
            log_level=env_str(environ, "LOG_LEVEL", cls.log_level).upper(),
            grace_s=env_float(environ, "GRACE_S", cls.grace_s, minimum=0.0),
            x_auth_max_tries=env_int(environ, "X_AUTH_MAX_TRIES", cls.x_auth_max_tries, minimum=1),
            x_auth_retry_wait_s=env_float(
                environ, "X_AUTH_RETRY_WAIT_S", cls.x_auth_retry_wait_s, minimum=0.0
            ),
            dynamodb_auth_max_tries=env_int(
                environ, "DYNAMODB_AUTH_MAX_TRIES", cls.dynamodb_auth_max_tries, minimum=1
            ),
            stall_s=env_float(environ, "STALL_S", cls.stall_s, minimum=1.0),
            code_version=environ.get("CODE_VERSION", ""),
            code_revision=environ.get("CODE_REVISION", ""),
        )
        config = dataclasses.replace(config, **_storage_settings(environ, config.dead_letter_path))
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


def _storage_settings(environ: Environ, dead_letter_path: str) -> dict[str, Any]:
    """The table layout and dead-letter variables; a local DEAD_LETTER_URI stands for DEAD_LETTER_PATH."""
    uri = environ.get("DEAD_LETTER_URI", "").strip()
    try:
        check_location(uri or dead_letter_path, "DEAD_LETTER_URI")
    except InvalidInput as exc:
        raise ConfigError(str(exc)) from None
    if uri and not uri.startswith("s3://"):
        dead_letter_path = uri
    return {
        "bucket_shards": env_int(environ, "BUCKET_SHARDS", StreamConfig.bucket_shards, minimum=1),
        "retention_days": env_float(environ, "RETENTION_DAYS", StreamConfig.retention_days, minimum=0.0),
        "dead_letter_uri": uri or dead_letter_path,
        "dead_letter_path": dead_letter_path,
        "dead_letter_roll_s": env_float(
            environ, "DEAD_LETTER_ROLL_S", StreamConfig.dead_letter_roll_s, minimum=1.0
        ),
        "dead_letter_roll_mb": env_float(
            environ, "DEAD_LETTER_ROLL_MB", StreamConfig.dead_letter_roll_mb, minimum=0.001
        ),
    }
