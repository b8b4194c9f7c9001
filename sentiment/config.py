"""Typed reads of environment variables for the services' frozen config dataclasses, and their `--help`.

Each config field that a variable sets is declared with `setting(env, help, default, minimum=..., parse=...)`:
`read_settings` reads the environment from those declarations and `--help` is made from them (`help_text`),
so a variable's name, default, bounds and meaning are written once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

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
    in_use = {
        old: new for old, new in names.items() if environ.get(old, "") != "" and environ.get(new, "") == ""
    }
    if not in_use:
        return environ
    moved = _Renamed(environ)
    moved.set_as = {}
    for old, new in in_use.items():
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


# ------------------------------------------------------------------ settings described once, for --help


def setting(
    env: str,
    help: str,
    default: Any = MISSING,
    *,
    minimum: float | None = None,
    parse: Callable[[str], Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A config dataclass field read from `env` by `read_settings`: its default and meaning are also what
    `--help` prints. The value is typed like the default (int, float, str; str when there is none, and
    then the variable is required), at least `minimum`; `parse` reads values of any other shape (it may
    raise ConfigError or ValueError). `default_factory` is for a default found on the machine."""
    metadata = {"env": env, "help": help, "minimum": minimum, "parse": parse}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def read_settings(config: type, environ: Environ) -> dict[str, Any]:
    """Every field of `config` declared with `setting`, read from `environ`: keyword arguments for
    `config(...)`. A malformed, too small or missing required value raises ConfigError naming it."""
    values: dict[str, Any] = {}
    for f in fields(config):
        if "env" not in f.metadata:
            continue
        key, minimum, parse = f.metadata["env"], f.metadata["minimum"], f.metadata["parse"]
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None  # required
        if parse is not None:
            raw = environ.get(key, "")
            try:
                values[f.name] = parse(raw) if raw != "" else default
            except ValueError as exc:
                raise ConfigError(f"{_name(environ, key)}={raw!r}: {exc}") from None
        elif isinstance(default, bool) or not isinstance(default, int | float | str | None):
            raise TypeError(f"{config.__name__}.{f.name}: give a parse for a {type(default).__name__}")
        elif isinstance(default, int):
            values[f.name] = env_int(environ, key, default, None if minimum is None else int(minimum))
        elif isinstance(default, float):
            values[f.name] = env_float(environ, key, default, minimum)
        else:
            values[f.name] = env_str(environ, key, default)
    return values


@dataclass(frozen=True)
class Setting:
    env: str
    default: str  # as printed; "(required)" when there is none
    help: str


def describe(config: type) -> list[Setting]:
    """The environment variables a config dataclass reads, in field order (fields without `env` are
    derived, not configured)."""
    described = []
    for f in fields(config):
        if "env" not in f.metadata:
            continue
        if f.default is not MISSING:
            default = "''" if f.default in ("", ()) else str(f.default)
        elif f.default_factory is not MISSING:
            default = f"{f.default_factory()} (from the machine)"
        else:
            default = "(required)"
        described.append(Setting(f.metadata["env"], default, f.metadata["help"]))
    return described


def help_text(
    program: str,
    summary: str,
    config: type,
    exit_codes: Mapping[int, str],
    old_names: Mapping[str, str] | None = None,
    usage: str = "[--help | --version]",
) -> str:
    """`python -m <program> --help`: what it does, every variable with its default and meaning, the old
    names still read (`old_names`: old -> new), exit codes."""
    settings = describe(config)
    width = max(len(s.env) for s in settings)
    lines = [
        f"usage: python -m {program} {usage}",
        "",
        summary,
        "",
        "Configuration (environment variables):",
    ]
    for s in settings:
        lines.append(f"  {s.env:<{width}}  {s.help} [default: {s.default}]")
    if old_names:
        lines += ["", "Old names, still read (with a warning) when the new one is not set:"]
        lines += [f"  {old} -> {new}" for old, new in old_names.items()]
    lines += ["", "Exit codes:", *(f"  {code}  {meaning}" for code, meaning in sorted(exit_codes.items()))]
    return "\n".join(lines) + "\n"


def version_text(program: str, environ: Environ) -> str:
    """`--version`: the package version, and the image's CODE_VERSION / CODE_REVISION when set."""
    from sentiment.metrics import package_version

    build = ", ".join(
        f"{k.lower()} {environ[k]}" for k in ("CODE_VERSION", "CODE_REVISION") if environ.get(k)
    )
    return f"{program} {package_version()}" + (f" ({build})" if build else "") + "\n"


EXIT_OK = 0
EXIT_CONFIG = 2


def answer_cli(
    argv: Sequence[str],
    program: str,
    summary: str,
    config: type,
    exit_codes: Mapping[int, str],
    environ: Environ,
    old_names: Mapping[str, str] | None = None,
    usage: str = "[--help | --version]",
) -> int | None:
    """Answer `--help` / `--version` (or refuse an unknown argument) without starting anything; the exit
    code, or None when the program should start."""
    if not argv:
        return None
    if argv[0] in ("-h", "--help"):
        print(help_text(program, summary, config, exit_codes, old_names, usage), end="")
        return EXIT_OK
    if argv[0] == "--version":
        print(version_text(program, environ), end="")
        return EXIT_OK
    print(f"{program}: unknown argument {argv[0]!r} (try --help)", file=sys.stderr)
    return EXIT_CONFIG
