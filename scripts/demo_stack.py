"""The programs of a demo run, started with scripts/programs.py and stopped in reverse order; for `make up`, the
state file that lets `make down` stop them from another process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from scripts.local_aws import LocalAws
from scripts.programs import Program, start


class Stack:
    """The demo's programs by module name, each logging to `<logs>/<module>.log`."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env  # read at each start: the AWS variables join it once the endpoint is up
        self.logs = logs
        self.programs: dict[str, Program] = {}

    def start(self, module: str, extra_env: dict[str, str], port: int | None = None) -> Program:
        program = start(module, {**self.env, **extra_env}, self.logs / f"{module}.log", port=port)
        self.programs[module] = program
        return program

    def stop(self, grace_s: float = 20) -> list[str]:
        """SIGTERM each, last started first, `grace_s` each before a kill; returns the ones that were killed."""
        killed = []
        for name, program in reversed(list(self.programs.items())):
            if program.running():
                program.stop(grace_s)
                if program.killed:
                    killed.append(name)
        return killed


def write_state(path: Path, stack: Stack, aws: LocalAws | None, summary: dict[str, Any]) -> dict[str, Any]:
    """What `stop_state` needs (the pids) and what a user needs (addresses, the AWS variables), as JSON."""
    state = {
        "pids": {name: p.pid for name, p in stack.programs.items() if p.running()},
        "aws_pid": aws._proc.pid if aws and aws._proc else None,
        "env": {k: v for k, v in stack.env.items() if k.startswith("AWS_")},
        **{k: summary[k] for k in ("train_addr", "model_addr", "model_version")},
    }
    path.write_text(json.dumps(state, indent=2))
    return state


def stop_state(path: Path, grace_s: float = 20) -> bool:
    """Stop what a state file names: SIGTERM to each, SIGKILL to any left after `grace_s`; False if none."""
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    pids = [pid for pid in [*state["pids"].values(), state.get("aws_pid")] if pid]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    path.unlink()
    return True
