"""`make demo`'s script, reduced in size, against the session's local AWS endpoint: what landed is checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import boto3

from scripts.local_aws import LocalAws

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_pipeline(aws: LocalAws, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    table, bucket = f"demo-{suffix}", f"demo-{suffix}"
    env = {
        **{k: v for k, v in os.environ.items() if k != "XLA_MAX_ROWS"},  # model_svc as shipped
        **aws.env,
        "LOCAL_AWS": "0",  # use the session's endpoint, so the table can be read after the demo stops
        "DEMO_VAR_DIR": str(tmp_path),
        "DEMO_BUCKET": bucket,
        "DYNAMODB_TABLE": table,
        "DEMO_ROWS": "3000",
        "DEMO_TWEETS": "150",
    }
    result = subprocess.run(
        [sys.executable, "-m", "scripts.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[6/6]" in result.stdout and "demo finished" in result.stdout

    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    version = summary["model_version"]
    current = boto3.client("s3").get_object(Bucket=bucket, Key="store/models/CURRENT")["Body"].read().decode()
    assert current == version

    items = boto3.client("dynamodb").scan(TableName=table)["Items"]
    assert len(items) == summary["items"] == 150 - summary["dead_lettered"]
    assert {item["model_version"]["S"] for item in items} == {version}
    assert all("N" in item["score"] for item in items)

    report = summary["report"]
    assert report["total"] == len(items)
    assert sum(report["by_sentiment"].values()) == len(items)
    chart = tmp_path / "demo" / "sentiment.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logs = {p.name for p in (tmp_path / "logs").iterdir()}
    assert {"train_svc.log", "model_svc.log", "stream_svc.log"} <= logs


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_ctrl_c_stops_every_program(aws: LocalAws, tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_VAR_DIR": str(tmp_path), "DEMO_ROWS": "3000", "DEMO_TWEETS": "50"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the local AWS endpoint and both servers are up once the job is queued
        seen.append(line)
        if line.strip().startswith("job "):
            break
    children = _children(proc.pid)
    assert len(children) >= 3, "".join(seen)  # moto, train_svc, model_svc (+ grpcurl)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert not [pid for pid in children if _alive(pid)]
