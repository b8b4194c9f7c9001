"""Typed reads of environment variables for the services' frozen config dataclasses."""

from __future__ import annotations

import os
from collections.abc import Mapping

from sentiment.errors import ConfigError

Environ = Mapping[str, str]


def env_str(environ: Environ, key: str, default: str | None = None) -> str:
    """The value of `key`, or `default`; a missing key without default raises ConfigError naming it."""
    value = environ.get(key)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"{key} is required but not set")
        return default
    return value


def env_int(environ: Environ, key: str, default: int, minimum: int | None = None) -> int:
    raw = environ.get(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return value


def env_float(environ: Environ, key: str, default: float, minimum: float | None = None) -> float:
    raw = environ.get(key, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return value


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which is what a container is given."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
