"""Typed reads of environment variables for the services' frozen config dataclasses."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

from sentiment.errors import ConfigError

Environ = Mapping[str, str]


class _Renamed(dict[str, str]):
    """An environment in which some values were set under an old name (`set_as`: new -> old)."""

    set_as: dict[str, str]


def renamed(environ: Environ, names: Mapping[str, str]) -> Environ:
    """`environ` with each old name of `names` (old -> new) read as its new name, unless the new one is set.

    Each old name in use raises a FutureWarning (shown by default) naming its replacement, so a
    deployment keeps working while it is told to move; an error in such a value names the old variable.
    """
    moved = _Renamed(environ)
    moved.set_as = {}
    for old, new in names.items():
        if environ.get(old, "") != "" and environ.get(new, "") == "":
            warnings.warn(f"{old} is deprecated; set {new} instead", FutureWarning, stacklevel=3)
            moved[new] = environ[old]
            moved.set_as[new] = old
    return moved


def _name(environ: Environ, key: str) -> str:
    """The variable as the user set it: `key`, or the old name it was read from."""
    return environ.set_as.get(key, key) if isinstance(environ, _Renamed) else key


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
        raise ConfigError(f"{_name(environ, key)}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{_name(environ, key)}={value} must be >= {minimum}")
    return value


def env_float(environ: Environ, key: str, default: float, minimum: float | None = None) -> float:
    raw = environ.get(key, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{_name(environ, key)}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{_name(environ, key)}={value} must be >= {minimum}")
    return value


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which is what a container is given."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
