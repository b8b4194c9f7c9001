"""Every program answers --help and --version without starting, and its --help matches its config dataclass:
every variable `from_env` reads is listed, with the dataclass's default, and nothing else."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from model_svc.config import RENAMED as MODEL_RENAMED
from model_svc.config import ModelConfig
from sentiment.config import describe
from stream_svc.config import StreamConfig
from train_svc.config import TrainConfig

# program -> (its config dataclass, the variables that make a minimal valid environment, old names still read)
PROGRAMS: dict[str, tuple[type[Any], dict[str, str], dict[str, str]]] = {
    "train_svc": (TrainConfig, {"STORE_URI": "/tmp/store"}, {}),
    "model_svc": (ModelConfig, {"STORE_URI": "/tmp/store"}, MODEL_RENAMED),
    "stream_svc": (StreamConfig, {"SOURCE": "replay", "REPLAY_PATH": "tweets.jsonl"}, {}),
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
    config, minimal, old_names = PROGRAMS[program]
    environ = Recording(minimal)
    config.from_env(environ)
    described = describe(config)
    assert {s.env for s in described} == environ.asked - set(old_names), "--help and from_env disagree"
    result = run_module(program, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {program} [--help | --version]")
    defaults = {f.metadata["env"]: f.default for f in fields(config) if "env" in f.metadata}
    for setting in described:
        (line,) = [line for line in result.stdout.splitlines() if line.split()[:1] == [setting.env]]
        assert setting.help in line, setting.env
        default = defaults[setting.env]
        shown = "(required)" if default is MISSING else "''" if default in ("", ()) else str(default)
        assert line.endswith(f"[default: {shown}]") or "(from the machine)" in line, line
    assert "Exit codes:" in result.stdout and "  2  bad configuration" in result.stdout
    for old, new in old_names.items():
        assert f"  {old} -> {new}" in result.stdout


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_version_and_unknown_arguments_answer_without_starting(program: str) -> None:
    result = run_module(program, "--version")
    assert result.returncode == 0 and result.stdout.startswith(f"{program} "), result.stderr
    result = run_module(program, "--serve-please")
    assert result.returncode == 2, result.stderr
    assert "unknown argument" in result.stderr or "unrecognized arguments" in result.stderr


def readme_table(program: str) -> dict[str, str]:
    """The README's variable table of `## <program>`: variable -> its default column."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {program}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_readme_documents_every_variable_with_the_dataclass_default(program: str) -> None:
    """The README's tables are written by hand: each variable of the config is there, with its default."""
    config, _, _ = PROGRAMS[program]
    table = readme_table(program)
    missing = [s.env for s in describe(config) if s.env not in table]
    assert not missing, f"README's {program} table lacks {missing}"
    for f in fields(config):
        if "env" not in f.metadata or f.default is MISSING or f.default in ("", ()):
            continue
        shown = table[f.metadata["env"]]
        if isinstance(f.default, int | float):
            number = re.search(r"`(-?[0-9.]+)`", shown)
            assert number and float(number.group(1)) == f.default, (f.metadata["env"], shown, f.default)
        else:
            assert f"`{f.default}`" in shown, (f.metadata["env"], shown, f.default)
