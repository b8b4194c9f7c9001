"""A local AWS endpoint (moto in server mode) on a free loopback port, speaking S3 and DynamoDB.

Used by the test suite and by `make demo` / `make up`. Run alone: `python -m scripts.local_aws [port]`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalAws:
    """`with LocalAws() as aws:` starts moto on 127.0.0.1; `aws.env` holds the variables that point at it.

    `extra_env` is added to the server's own environment (moto's settings, e.g. `INITIAL_NO_AUTH_ACTION_COUNT`
    to enforce IAM authentication after that many requests).
    """

    server_module = "moto.server"  # run as `python -m <server_module> -H 127.0.0.1 -p <port>`

    def __init__(
        self, port: int = 0, log_path: Path | None = None, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # moto's S3 does not speak the newer default checksums of botocore.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def start(self, timeout_s: float = 30.0) -> LocalAws:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.server_module, "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=Path(__file__).resolve().parents[1],  # where a server module of this repository is found
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_CALL_RESET_API": "false", **self.extra_env},
            start_new_session=True,  # a Ctrl-C in the terminal reaches the owner, which stops it
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server did not answer on {self.endpoint} within {timeout_s}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    with LocalAws(int(sys.argv[1]) if len(sys.argv) > 1 else 0) as aws:
        print("\n".join(f"export {k}={v}" for k, v in aws.env.items()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
