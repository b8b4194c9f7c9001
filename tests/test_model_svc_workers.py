"""WORKERS=2 as `python -m model_svc` runs it: two server processes on one port, each reloading, one scrape
seeing both, SIGTERM draining both; a worker that dies takes the program down."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from scripts.local_aws import free_port
from scripts.programs import Program, start
from sentiment.predict_client import PredictClient
from tests.fixtures_model import add_version

CONNECTIONS = 16  # the kernel picks a worker per connection: all 16 on one has odds of 1 in 32768


def start_workers(store: Path, log: Path, metrics_port: int = 0) -> Program:
    env = {
        **os.environ,
        "STORE_URI": str(store),
        "WORKERS": "2",
        "METRICS_PORT": str(metrics_port),
        "RELOAD_INTERVAL_S": "0.2",
        "GRACE_S": "2",
        "TF_INTRA_OP_THREADS": "1",
        "TF_INTER_OP_THREADS": "1",
        "LOG_LEVEL": "INFO",
    }
    return start("model_svc", env, log, port=0)


def worker_pids(program: Program) -> list[int]:
    children = Path(f"/proc/{program.pid}/task/{program.pid}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def versions_served(address: str) -> list[str]:
    """The version each of a PredictClient's CONNECTIONS connections is answered with (one call each)."""
    async with PredictClient(address, timeout_s=20, connections=CONNECTIONS) as client:
        replies = await asyncio.gather(*(client.predict("what a lovely day") for _ in range(CONNECTIONS)))
    return [reply.model_version for reply in replies]


async def scrape(port: int) -> dict[str, dict[str, float]]:
    """sample name -> worker label -> value summed over the sample's other labels, of a filtered name set."""
    url = f"http://127.0.0.1:{port}/metrics"
    page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            labels = dict(sample.labels)
            worker = labels.pop("worker", "-")
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(labels.items()))
            out[key][worker] += sample.value
    return out


async def test_two_workers_share_the_port_each_reloads_and_both_drain(
    model_store: Path, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    metrics_port = free_port()
    program = start_workers(model_store, tmp_path / "model_svc.log", metrics_port)
    try:
        await program.wait_serving("sentiment.v1.PredictService", timeout_s=180)
        assert await versions_served(program.address) == ["v1"] * CONNECTIONS
        metrics = await scrape(metrics_port)
        served = metrics["model_svc_requests_total,code=OK,rpc=Predict"]
        assert set(served) == {"0", "1"} and sum(served.values()) == CONNECTIONS, served
        assert all(v > 0 for v in served.values()), "both workers answered on the one port"
        assert dict(metrics["model_svc_model_info,version=v1"]) == {"0": 1.0, "1": 1.0}
        assert metrics["model_svc_workers"]["-"] == 2.0
        # On exactly as many CPUs as workers, one worker a CPU; on more, the scheduler places them.
        cpus = os.sched_getaffinity(0)
        placed = [os.sched_getaffinity(pid) for pid in worker_pids(program)]
        if len(cpus) == 2:
            assert sorted(placed, key=min) == [{c} for c in sorted(cpus)], placed
        else:
            assert placed == [cpus, cpus], placed

        add_version(model_store, tiny_bundle_dir, "v2")  # each worker polls CURRENT on its own
        for _ in range(300):
            if set(await versions_served(program.address)) == {"v2"}:
                break
            await asyncio.sleep(0.1)
        assert set(await versions_served(program.address)) == {"v2"}
        metrics = await scrape(metrics_port)
        assert dict(metrics["model_svc_model_info,version=v2"]) == {"0": 1.0, "1": 1.0}
        assert "model_svc_model_info,version=v1" not in metrics

        code = await asyncio.to_thread(program.stop, 60)
    finally:
        program.kill()
    log = program.log_text()
    assert code == 0 and not program.killed, log
    assert log.count('"model_svc stopped"') == 2, "each worker drained and stopped"
    assert "worker exit codes [0, 0]" in log


async def test_a_worker_that_dies_stops_the_program_with_exit_1(model_store: Path, tmp_path: Path) -> None:
    program = start_workers(model_store, tmp_path / "model_svc.log")
    try:
        await program.wait_serving("sentiment.v1.PredictService", timeout_s=180)
        workers = worker_pids(program)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        code = await asyncio.to_thread(program.wait, 60)
    finally:
        program.kill()
    assert code == 1, program.log_text()
    assert "exited with -9; stopping the others" in program.log_text()
