"""`python -m train_svc`: read the configuration from the environment, set up logging, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import sys

from sentiment.config import EXIT_CONFIG, EXIT_OK, answer_cli
from sentiment.errors import ConfigError
from sentiment.logs import setup_logging
from train_svc.config import TrainConfig
from train_svc.server import serve

SUMMARY = (
    "TrainService over gRPC: trains Word2Vec + Keras LSTM sentiment models on Sentiment140-format datasets\n"
    "(s3:// or local), publishes each as a versioned bundle in STORE_URI, promotes it when asked.\n"
    "Serves until SIGTERM or SIGINT, then stops gracefully."
)
EXIT_CODES = {
    EXIT_OK: "stopped by SIGTERM/SIGINT after a graceful shutdown",
    EXIT_CONFIG: "bad configuration (the message names the variable), or WORK_DIR held by another server",
}


def main(argv: list[str] | None = None) -> int:
    answered = answer_cli(
        sys.argv[1:] if argv is None else argv, "train_svc", SUMMARY, TrainConfig, EXIT_CODES, os.environ
    )
    if answered is not None:
        return answered
    try:
        config = TrainConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"train_svc: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:  # found at start: WORK_DIR held by another live server
        print(f"train_svc: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
