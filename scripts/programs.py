"""Run a program as users do: `python -m <package>` in a child process, SERVING on grpc.health, SIGTERM to stop.

The one way the demo, the benchmarks and the tests start train_svc, model_svc and stream_svc:

    program = start("model_svc", {**os.environ, "STORE_URI": store}, log_path, port=0)
    await program.wait_serving("sentiment.v1.PredictService")   # the port is read from its log line
    ...
    code = program.stop(grace_s=20)                             # SIGTERM; SIGKILL at the deadline

Each program's stdout and stderr go to a log file that is kept after it stops. Waiting is async (a test's
event loop or a benchmark's keeps running); a synchronous caller wraps it in `asyncio.run`. `stop` blocks:
async callers run it with `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]

# The line a server logs once it is bound, with the port it got (LISTEN_ADDR may ask for port 0):
# train_svc "serving on <addr> (port N)", model_svc "listening on port N" (both at INFO).
PORT_LINE = re.compile(r"serving on \S+ \(port (\d+)\)|listening on port (\d+)")
POLL_S = 0.1
CHECK_TIMEOUT_S = 2.0


class ProgramError(RuntimeError):
    """A program exited, or did not bind or serve in time; the message names its log."""


class Program:
    """One started program: its process, its log (this run's part of the file) and its gRPC port once known."""

    def __init__(
        self, module: str, proc: subprocess.Popen[bytes], log_path: Path, log_offset: int, port: int
    ):
        self.module = module
        self.proc = proc
        self.log_path = log_path
        self.port = port
        self.started = time.monotonic()
        self.killed = False
        self._log_offset = log_offset
        self._terminated = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        if not self.port:
            raise ProgramError(f"{self.module}: port not known yet (await wait_port() first)")
        return f"127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        """What this run wrote to its log so far (an earlier run's lines in the same file are left out)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _failed(self, what: str) -> ProgramError:
        if not self.running():
            what = f"exited with {self.proc.returncode} {what}"
        return ProgramError(f"{self.module} {what}; read {self.log_path}")

    async def wait_port(self, timeout_s: float = 60) -> int:
        """The port it serves on: the one it was given, or the one its log line names (it was given 0)."""
        deadline = time.monotonic() + timeout_s
        while not self.port:
            if found := PORT_LINE.search(self.log_text()):
                self.port = int(next(group for group in found.groups() if group))
            elif not self.running():
                raise self._failed("before it logged a bound port")
            elif time.monotonic() > deadline:
                raise self._failed(f"logged no bound port within {timeout_s:.0f}s")
            else:
                await asyncio.sleep(POLL_S)
        return self.port

    async def wait_serving(self, service: str = "", timeout_s: float = 120) -> float:
        """Poll grpc.health Check until `service` is SERVING; returns the seconds since the start.

        Raises ProgramError as soon as the program exits, or once `timeout_s` has passed.
        """
        deadline = time.monotonic() + timeout_s
        await self.wait_port(timeout_s)
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            while True:
                if not self.running():
                    raise self._failed("before it was SERVING")
                try:
                    reply = await health.Check(request, timeout=CHECK_TIMEOUT_S)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - self.started
                except grpc.aio.AioRpcError:
                    pass  # not bound yet, or still starting
                if time.monotonic() > deadline:
                    raise self._failed(f"was not SERVING on {self.address} within {timeout_s:.0f}s")
                await asyncio.sleep(POLL_S)

    def terminate(self) -> None:
        """Send SIGTERM once (a second one could cut short the graceful stop the first began)."""
        if self.running() and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def wait(self, timeout_s: float) -> int:
        """Its exit code, once it exits; raises subprocess.TimeoutExpired after `timeout_s`."""
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL its whole session (a trainer child with it) and reap it."""
        if self.running():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.killed = True
        self.proc.wait()

    def stop(self, grace_s: float = 20) -> int:
        """SIGTERM, then up to `grace_s` for it to exit; killed at that deadline. Returns its exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def __enter__(self) -> Program:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    module: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    port: int | None = 0,
    args: Sequence[str] = (),
    cwd: Path = ROOT,
) -> Program:
    """Start `python -m module *args` with exactly `env`; its output is appended to `log_path`.

    `port`: LISTEN_ADDR becomes 127.0.0.1:<port> (0: the program picks one, read from its log line);
    None for a program that serves nothing (stream_svc). It runs in a session of its own, so a Ctrl-C in
    the terminal reaches only the caller, which stops it in order.
    """
    environ = {"PYTHONUNBUFFERED": "1", **env}
    if port is not None:
        environ["LISTEN_ADDR"] = f"127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Program(module, proc, log_path, offset, port or 0)
