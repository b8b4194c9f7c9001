"""Logging set-up: one JSON object per line when not on a terminal, readable lines when on one."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes a caller may pass with `extra=` that belong in the JSON object.
CONTEXT_KEYS = ("job_id", "model_version", "tweet_id", "rpc", "status", "duration_ms", "count")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Configure the root logger once; `json_lines` defaults to "stderr is not a terminal"."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "aiobotocore", "urllib3", "gensim", "tensorflow", "absl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
