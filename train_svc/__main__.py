"""`python -m train_svc`: read the configuration from the environment, set up logging, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import sys

from sentiment.errors import ConfigError
from sentiment.logs import setup_logging
from train_svc.config import TrainConfig
from train_svc.server import serve


def main() -> int:
    try:
        config = TrainConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"train_svc: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:  # found at start: WORK_DIR held by another live server
        print(f"train_svc: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
