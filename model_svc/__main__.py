"""`python -m model_svc`: serve PredictService until SIGTERM, then shut down gracefully and exit 0.

With WORKERS > 1 this process supervises that many server processes on one port (`model_svc.workers`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from model_svc.config import ModelConfig
from sentiment.errors import ConfigError
from sentiment.logs import setup_logging
from sentiment.rpc import serve_until_signal

log = logging.getLogger("model_svc")

# The event loop thread and the inference thread share the GIL. With Python's default 5 ms switch
# interval the inference thread, back from TensorFlow (which releases the GIL), can wait up to 5 ms for
# the busy loop to let go; a shorter interval keeps batches flowing.
SWITCH_INTERVAL_S = 0.0005


async def run(config: ModelConfig) -> None:
    from model_svc.server import start_server  # imports TensorFlow: after the config is known good

    await serve_until_signal(lambda: start_server(config), config.grace_s)


def main() -> int:
    try:
        config = ModelConfig.from_env(os.environ)
    except ConfigError as exc:
        setup_logging()
        log.error("bad configuration: %s", exc)
        return 2
    setup_logging(config.log_level)
    if config.workers > 1:
        from model_svc.workers import supervise

        return supervise(config)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
