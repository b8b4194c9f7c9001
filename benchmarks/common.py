"""What the benchmarks share: percentiles, a process's memory and CPU, a bench bundle trained in a child process,
model_svc started as users run it (on chosen CPUs), the machine they ran on, and the results file.

Nothing here imports TensorFlow: bench_predict's load generator processes import this module.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts.local_aws import free_port
from scripts.programs import Program, start

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Run in a child process, so TensorFlow never loads into the process whose memory or CPU a benchmark measures.
TRAIN_SCRIPT = """
import json
import sys
from pathlib import Path
from train_svc.params import TrainParams
from train_svc.trainer import train
params = TrainParams(**json.loads(sys.argv[3]))
train(Path(sys.argv[1]), params, Path(sys.argv[2]), progress=lambda event: None)
"""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by rank, without interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib() -> float:
    """This process's resident memory, MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_mib(pid: int) -> dict[str, float]:
    """Another process's resident memory and its peak so far, MiB (rounded to 0.1)."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mib": out.get("VmRSS", 0.0), "peak_rss_mib": out.get("VmHWM", 0.0)}


def cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_bundle(dataset: Path, out: Path, params: Mapping[str, Any]) -> None:
    """Train a bundle into `out` with TrainParams(**params), in a child process (raises if it fails)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(dataset), str(out), json.dumps(dict(params))],
        check=True,
        cwd=ROOT,
        env=env,
    )


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block on `cpus` (None: as it is). A process started inside inherits them, threads and children
    included: how a benchmark puts a server on its own cores (`taskset` without the extra process)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_model_svc(store: Path, log_path: Path, cpus: set[int] | None = None, **env: str) -> Program:
    """`python -m model_svc` on a free loopback port serving `store`, logging warnings only (more `env` on top),
    on `cpus` (None: any)."""
    environ = {**os.environ, "STORE_URI": str(store), "LOG_LEVEL": "WARNING", **env}
    with pinned(cpus):
        return start("model_svc", environ, log_path, port=free_port())


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def machine(*fields: str) -> dict[str, Any]:
    """The machine a result was measured on: `cpus` (usable), `python`, `platform`, those asked for, in order."""
    known = {
        "cpus": lambda: len(os.sched_getaffinity(0)),
        "python": platform.python_version,
        "platform": platform.platform,
    }
    return {field: known[field]() for field in fields}


def write_results(path: Path, result: dict[str, Any]) -> None:
    """The result as indented JSON (the folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
