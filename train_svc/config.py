"""train_svc configuration: one frozen dataclass read from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass

from sentiment.config import Environ, read_settings, setting
from sentiment.dataset import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DatasetLimits
from sentiment.errors import ConfigError, InvalidInput
from sentiment.store import check_location


def _check_uri(key: str, value: str) -> None:
    try:
        check_location(value, "the URI")
    except InvalidInput as exc:
        raise ConfigError(f"{key}: {exc}") from None


@dataclass(frozen=True)
class TrainConfig:
    store_uri: str = setting(
        "STORE_URI", "s3://bucket/prefix or a local directory: models/ and jobs/ live there"
    )
    listen_addr: str = setting("LISTEN_ADDR", "gRPC address (host:0 picks a free port)", "[::]:50051")
    dataset_uri: str = setting("DATASET_URI", "dataset a Train request that names none uses", "")
    auth_token: str = setting(
        "TRAIN_AUTH_TOKEN", "when set, Train/CancelJob/PromoteModel need `authorization: Bearer <token>`", ""
    )
    work_dir: str = setting(
        "WORK_DIR",
        "scratch space for datasets and bundles (locked, swept at start); empty: a temporary directory",
        "",
    )
    metrics_port: int = setting("METRICS_PORT", "Prometheus /metrics port; 0 turns it off", 8001, minimum=0)
    grace_s: float = setting("GRACE_S", "seconds in-flight calls get on shutdown", 10.0, minimum=0.0)
    log_level: str = setting("LOG_LEVEL", "log level (JSON lines when stderr is not a terminal)", "INFO")
    cancel_timeout_s: float = setting(
        "CANCEL_TIMEOUT_S",
        "seconds a trainer gets to stop by itself before it is terminated",
        5.0,
        minimum=0.0,
    )
    code_version: str = setting(
        "CODE_VERSION", "recorded in each manifest; empty: the installed package version", ""
    )
    code_revision: str = setting("CODE_REVISION", "the commit, reported by train_svc_build_info", "")
    max_message_bytes: int = 4 << 20
    # What one dataset may cost the trainer (the pod has 6 GiB): rows kept in memory (more are sampled
    # down to this, and the job says so), and bytes, both downloaded and read after gzip (more fails the job).
    # Ten rows is the least the trainer can split into train, validation and test.
    max_dataset_rows: int = setting(
        "MAX_DATASET_ROWS",
        "rows kept in memory; more are sampled down to this (seeded, uniform)",
        DEFAULT_MAX_ROWS,
        minimum=10,
    )
    max_dataset_bytes: int = setting(
        "MAX_DATASET_BYTES",
        "largest dataset download, and most bytes read from it after gzip",
        DEFAULT_MAX_BYTES,
        minimum=1,
    )
    max_queued_jobs: int = setting(
        "MAX_QUEUED_JOBS",
        "jobs that may wait behind the running one; more: RESOURCE_EXHAUSTED",
        16,
        minimum=1,
    )

    def __post_init__(self) -> None:
        _check_uri("STORE_URI", self.store_uri)
        if self.dataset_uri:
            _check_uri("DATASET_URI", self.dataset_uri)

    @property
    def dataset_limits(self) -> DatasetLimits:
        return DatasetLimits(self.max_dataset_rows, self.max_dataset_bytes)

    @classmethod
    def from_env(cls, environ: Environ) -> TrainConfig:
        return cls(**read_settings(cls, environ))
