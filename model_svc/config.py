"""model_svc configuration: one frozen dataclass read from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sentiment.bundle import DEFAULT_LIMITS, BundleLimits
from sentiment.config import Environ, available_cpus, env_float, env_int, env_str, renamed
from sentiment.errors import ConfigError

# Variables renamed (old -> new): BATCH_MAX_SIZE read like MAX_BATCH_TEXTS, two different batches.
RENAMED = {
    "BATCH_MAX_SIZE": "INFERENCE_BATCH_MAX_TEXTS",
    "BATCH_MAX_WAIT_S": "INFERENCE_BATCH_MAX_WAIT_S",
    "MAX_BATCH_TEXTS": "PREDICT_BATCH_MAX_TEXTS",
}


@dataclass(frozen=True)
class ModelConfig:
    store_uri: str
    listen_addr: str = "[::]:50052"
    model_dir: str = ""  # where bundles are downloaded (each load fetches again); "" = a temporary directory
    reload_interval_s: float = 10.0
    inference_batch_max_texts: int = 1024  # texts the inference thread scores in one call
    # Longest a submission waits for the last round's companions (a lone caller waits for nobody).
    inference_batch_max_wait_s: float = 0.02
    queue_max_texts: int = 4096
    max_text_chars: int = 1000
    predict_batch_max_texts: int = 1024  # texts one PredictBatch request may carry
    intra_op_threads: int = field(default_factory=available_cpus)  # per server process
    inter_op_threads: int = field(default_factory=available_cpus)
    tls_cert_path: str = ""
    tls_key_path: str = ""
    metrics_port: int = 8002  # 0 = off
    grace_s: float = 10.0
    log_level: str = "INFO"
    model_max_bytes: int = DEFAULT_LIMITS.max_model_bytes  # model.keras on disk, expanded, and its weights
    load_timeout_s: float = (
        300.0  # fetch + verify + load + warm of one version; past it the load is abandoned
    )
    code_version: str = ""  # the image's tag and commit, as model_svc_build_info reports them
    code_revision: str = ""
    # Server processes sharing LISTEN_ADDR (SO_REUSEPORT), each with its own model, batcher and reload;
    # 1 = this process serves (start_server). The kernel picks a worker per connection, so more than one
    # pays only when clients open several connections to a pod (PredictClient opens one).
    workers: int = 1
    reuse_port: bool = False  # set for the worker processes; never read from the environment

    def __post_init__(self) -> None:
        if self.queue_max_texts < self.predict_batch_max_texts:
            raise ConfigError(
                f"QUEUE_MAX_TEXTS={self.queue_max_texts} must be >= "
                f"PREDICT_BATCH_MAX_TEXTS={self.predict_batch_max_texts}, "
                "or a full PredictBatch could never be admitted"
            )
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            raise ConfigError("TLS_CERT_PATH and TLS_KEY_PATH must be set together")

    @property
    def max_message_bytes(self) -> int:
        """Room for the largest valid PredictBatch (4 UTF-8 bytes a character) and 1 MiB of headroom."""
        return self.predict_batch_max_texts * (self.max_text_chars * 4 + 16) + (1 << 20)

    @classmethod
    def from_env(cls, environ: Environ) -> ModelConfig:
        """Read every variable; the names before the rename are still read, with a FutureWarning."""
        environ = renamed(environ, RENAMED)
        workers = env_int(environ, "WORKERS", cls.workers, minimum=1)
        # TF_*_OP_THREADS count for the whole container: each worker process gets its share.
        intra = env_int(environ, "TF_INTRA_OP_THREADS", available_cpus(), minimum=1)
        inter = env_int(environ, "TF_INTER_OP_THREADS", available_cpus(), minimum=1)
        return cls(
            store_uri=env_str(environ, "STORE_URI"),
            listen_addr=env_str(environ, "LISTEN_ADDR", cls.listen_addr),
            model_dir=environ.get("MODEL_DIR", ""),
            reload_interval_s=env_float(environ, "RELOAD_INTERVAL_S", cls.reload_interval_s, minimum=0.01),
            inference_batch_max_texts=env_int(
                environ, "INFERENCE_BATCH_MAX_TEXTS", cls.inference_batch_max_texts, minimum=1
            ),
            inference_batch_max_wait_s=env_float(
                environ, "INFERENCE_BATCH_MAX_WAIT_S", cls.inference_batch_max_wait_s, minimum=0.0
            ),
            queue_max_texts=env_int(environ, "QUEUE_MAX_TEXTS", cls.queue_max_texts, minimum=1),
            max_text_chars=env_int(environ, "MAX_TEXT_CHARS", cls.max_text_chars, minimum=1),
            predict_batch_max_texts=env_int(
                environ, "PREDICT_BATCH_MAX_TEXTS", cls.predict_batch_max_texts, minimum=1
            ),
            intra_op_threads=max(1, intra // workers),
            inter_op_threads=max(1, inter // workers),
            tls_cert_path=environ.get("TLS_CERT_PATH", ""),
            tls_key_path=environ.get("TLS_KEY_PATH", ""),
            metrics_port=env_int(environ, "METRICS_PORT", cls.metrics_port, minimum=0),
            grace_s=env_float(environ, "GRACE_S", cls.grace_s, minimum=0.0),
            log_level=env_str(environ, "LOG_LEVEL", cls.log_level),
            model_max_bytes=env_int(environ, "MODEL_MAX_BYTES", cls.model_max_bytes, minimum=1),
            load_timeout_s=env_float(environ, "LOAD_TIMEOUT_S", cls.load_timeout_s, minimum=0.001),
            code_version=environ.get("CODE_VERSION", ""),
            code_revision=environ.get("CODE_REVISION", ""),
            workers=workers,
        )

    @property
    def bundle_limits(self) -> BundleLimits:
        return replace(DEFAULT_LIMITS, max_model_bytes=self.model_max_bytes)
