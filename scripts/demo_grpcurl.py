"""The demo's calls, made with the real grpcurl binary as the README shows users: Train, WatchJob, GetModel."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.programs import Program

GRPCURL = str(Path(sys.executable).with_name("grpcurl"))


def grpcurl(address: str, method: str, body: dict[str, Any] | None = None, *, max_time_s: float = 30) -> str:
    """Run the real grpcurl binary as a user would; returns stdout, raises with its stderr."""
    command = [GRPCURL, "-plaintext", "-max-time", str(max_time_s)]
    if body is not None:
        command += ["-d", json.dumps(body)]
    command += [address, method]
    result = subprocess.run(command, capture_output=True, text=True, timeout=max_time_s + 10)
    if result.returncode != 0:
        raise RuntimeError(f"grpcurl {method} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def progress_line(update: dict[str, Any]) -> str:
    """One WatchJob update as the demo prints it: state, stage, epoch and accuracy when fitting."""
    epoch = (
        f" epoch {update.get('epoch', 0)}/{update.get('epochs', 0)}" if update.get("stage") == "fit" else ""
    )
    acc = f" val_accuracy {update['accuracy']:.3f}" if "accuracy" in update else ""
    return f"    {update.get('state', '?')} {update.get('stage', '')}{epoch}{acc}"


def follow_job(address: str, job_id: str) -> dict[str, Any]:
    """Follow WatchJob with grpcurl, printing each stage/epoch; returns the final job."""
    command = [
        GRPCURL,
        "-plaintext",
        "-d",
        json.dumps({"job_id": job_id}),
        address,
        "sentiment.v1.TrainService/WatchJob",
    ]
    last: dict[str, Any] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        buffer = ""
        for line in proc.stdout:  # grpcurl prints each message as an indented object ending in "}"
            buffer += line
            if line.rstrip() != "}":
                continue
            last = json.loads(buffer)
            buffer = ""
            print(progress_line(last), flush=True)
    return last


def wait_model(model_svc: Program, version: str, timeout_s: float = 120) -> None:
    """Until GetModel answers `version` (model_svc polls CURRENT); raises if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not model_svc.running():
            raise RuntimeError(f"model_svc exited; read {model_svc.log_path}")
        try:
            reply = grpcurl(model_svc.address, "sentiment.v1.PredictService/GetModel", {}, max_time_s=5)
            if json.loads(reply).get("version") == version:
                return
        except (RuntimeError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"model_svc did not load {version} within {timeout_s:.0f}s; read {model_svc.log_path}")
