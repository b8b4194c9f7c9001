"""model_svc configuration: one frozen dataclass read from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sentiment.bundle import DEFAULT_LIMITS, BundleLimits
from sentiment.config import Environ, available_cpus, read_settings, renamed, setting
from sentiment.errors import ConfigError

# Groups of up to this many texts run XLA programs (model_svc.model: why 32).
DEFAULT_XLA_MAX_ROWS = 32

# Variables renamed (old -> new): BATCH_MAX_SIZE read like MAX_BATCH_TEXTS, two different batches.
RENAMED = {
    "BATCH_MAX_SIZE": "INFERENCE_BATCH_MAX_TEXTS",
    "BATCH_MAX_WAIT_S": "INFERENCE_BATCH_MAX_WAIT_S",
    "MAX_BATCH_TEXTS": "PREDICT_BATCH_MAX_TEXTS",
}


@dataclass(frozen=True)
class ModelConfig:
    store_uri: str = setting(
        "STORE_URI", "s3://bucket/prefix or a local directory holding models/CURRENT and the bundles"
    )
    listen_addr: str = setting("LISTEN_ADDR", "gRPC address (host:0 picks a free port)", "[::]:50052")
    model_dir: str = setting(
        "MODEL_DIR",
        "where bundles are downloaded (each load fetches again); empty: a temporary directory",
        "",
    )
    reload_interval_s: float = setting(
        "RELOAD_INTERVAL_S",
        "seconds between reads of models/CURRENT (a new version loads, then swaps)",
        10.0,
        minimum=0.01,
    )
    inference_batch_max_texts: int = setting(
        "INFERENCE_BATCH_MAX_TEXTS",
        "most texts the inference thread scores in one model call",
        1024,
        minimum=1,
    )
    inference_batch_max_wait_s: float = setting(
        "INFERENCE_BATCH_MAX_WAIT_S",
        "longest a request waits for the callers of the last batch (a lone caller waits for nobody)",
        0.02,
        minimum=0.0,
    )
    queue_max_texts: int = setting(
        "QUEUE_MAX_TEXTS", "texts queued or running; more: RESOURCE_EXHAUSTED at once", 4096, minimum=1
    )
    max_text_chars: int = setting("MAX_TEXT_CHARS", "longest text; longer: INVALID_ARGUMENT", 1000, minimum=1)
    predict_batch_max_texts: int = setting(
        "PREDICT_BATCH_MAX_TEXTS", "most texts one PredictBatch request may carry", 1024, minimum=1
    )
    # Per server process: from_env shares the container's threads out among the WORKERS.
    intra_op_threads: int = setting(
        "TF_INTRA_OP_THREADS",
        "TensorFlow intra-op threads for the container, shared out among the WORKERS",
        default_factory=available_cpus,
        minimum=1,
    )
    inter_op_threads: int = setting(
        "TF_INTER_OP_THREADS",
        "TensorFlow inter-op threads for the container, shared out among the WORKERS",
        default_factory=available_cpus,
        minimum=1,
    )
    xla_max_rows: int = setting(
        "XLA_MAX_ROWS",
        "the most texts one XLA program scores (0 or a power of two; a larger group runs in chunks of this "
        "many), compiled at the first load (the default model: 30 shapes, ~10 s on one core; a later "
        "version of the same sizes reuses them); 0: the graph runs every group",
        DEFAULT_XLA_MAX_ROWS,
        minimum=0,
    )
    tls_cert_path: str = setting("TLS_CERT_PATH", "PEM certificate: serve TLS (with TLS_KEY_PATH)", "")
    tls_key_path: str = setting("TLS_KEY_PATH", "PEM private key of TLS_CERT_PATH", "")
    metrics_port: int = setting("METRICS_PORT", "Prometheus /metrics port; 0 turns it off", 8002, minimum=0)
    grace_s: float = setting("GRACE_S", "seconds in-flight calls get on shutdown", 10.0, minimum=0.0)
    log_level: str = setting("LOG_LEVEL", "log level (JSON lines when stderr is not a terminal)", "INFO")
    model_max_bytes: int = setting(
        "MODEL_MAX_BYTES",
        "largest model.keras, on disk and expanded, and its weights; larger: the version is refused",
        DEFAULT_LIMITS.max_model_bytes,
        minimum=1,
    )
    load_timeout_s: float = setting(
        "LOAD_TIMEOUT_S",
        "seconds to fetch, verify, load and warm one version; past it the load is abandoned",
        300.0,
        minimum=0.001,
    )
    code_version: str = setting("CODE_VERSION", "the image's tag, reported by model_svc_build_info", "")
    code_revision: str = setting("CODE_REVISION", "the commit, reported by model_svc_build_info", "")
    # The kernel picks a worker per connection, so more than one pays only when clients open several
    # connections to a pod (PredictClient: DEFAULT_CONNECTIONS, 4).
    workers: int = setting(
        "WORKERS",
        "server processes sharing LISTEN_ADDR (SO_REUSEPORT), each with its own model and batcher",
        1,
        minimum=1,
    )
    reuse_port: bool = False  # set for the worker processes; never read from the environment

    def __post_init__(self) -> None:
        if self.queue_max_texts < self.predict_batch_max_texts:
            raise ConfigError(
                f"QUEUE_MAX_TEXTS={self.queue_max_texts} must be >= "
                f"PREDICT_BATCH_MAX_TEXTS={self.predict_batch_max_texts}, "
                "or a full PredictBatch could never be admitted"
            )
        if self.xla_max_rows & (self.xla_max_rows - 1):
            raise ConfigError(f"XLA_MAX_ROWS={self.xla_max_rows} must be 0 or a power of two")
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            raise ConfigError("TLS_CERT_PATH and TLS_KEY_PATH must be set together")

    @property
    def max_message_bytes(self) -> int:
        """Room for the largest valid PredictBatch (4 UTF-8 bytes a character) and 1 MiB of headroom."""
        return self.predict_batch_max_texts * (self.max_text_chars * 4 + 16) + (1 << 20)

    @classmethod
    def from_env(cls, environ: Environ) -> ModelConfig:
        """Read every variable; the names before the rename are still read, with a FutureWarning."""
        values = read_settings(cls, renamed(environ, RENAMED))
        # TF_*_OP_THREADS count for the whole container: each worker process gets its share.
        for threads in ("intra_op_threads", "inter_op_threads"):
            values[threads] = max(1, values[threads] // values["workers"])
        return cls(**values)

    @property
    def bundle_limits(self) -> BundleLimits:
        return replace(DEFAULT_LIMITS, max_model_bytes=self.model_max_bytes)
