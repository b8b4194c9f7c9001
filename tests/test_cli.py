"""Every program answers --help and --version without starting, and its --help matches its config dataclass:
every variable `from_env` reads is listed, with the dataclass's default, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import MISSING, fields
from typing import Any

import pytest

from sentiment.config import describe
from train_svc.config import TrainConfig

# program -> (its config dataclass, the variables that make a minimal valid environment)
PROGRAMS: dict[str, tuple[type[Any], dict[str, str]]] = {
    "train_svc": (TrainConfig, {"STORE_URI": "/tmp/store"}),
}


class Recording(dict[str, str]):
    """An environment that records every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("from_env must ask for its variables by name")


def run_module(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STORE_URI", "LISTEN_ADDR")}
    return subprocess.run(
        [sys.executable, "-m", program, *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_lists_exactly_what_from_env_reads_with_the_dataclass_defaults(program: str) -> None:
    config, minimal = PROGRAMS[program]
    environ = Recording(minimal)
    config.from_env(environ)
    described = describe(config)
    assert {s.env for s in described} == environ.asked, "--help and from_env disagree"
    result = run_module(program, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {program} [--help | --version]")
    defaults = {f.metadata["env"]: f.default for f in fields(config) if "env" in f.metadata}
    for setting in described:
        (line,) = [line for line in result.stdout.splitlines() if line.split()[:1] == [setting.env]]
        assert setting.help in line, setting.env
        default = defaults[setting.env]
        shown = "(required)" if default is MISSING else repr(default) if default == "" else str(default)
        assert line.endswith(f"[default: {shown}]") or "(from the machine)" in line, line
    assert "Exit codes:" in result.stdout and "  2  bad configuration" in result.stdout


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_version_and_unknown_arguments_answer_without_starting(program: str) -> None:
    result = run_module(program, "--version")
    assert result.returncode == 0 and result.stdout.startswith(f"{program} "), result.stderr
    result = run_module(program, "--serve-please")
    assert result.returncode == 2 and "unknown argument" in result.stderr
