"""bench_predict's scaling lines, sent by h2load (nghttp2's HTTP/2 load generator, in C) instead of Python.

On a machine of two cores the Python load generator needs about as much CPU as the server on the unary
lines, so "a server on two cores" would share them with its load. h2load sends the same gRPC calls (a
framed protobuf body, `content-type: application/grpc`) for a few percent of a core: the server on one core
gets CPU 0 with h2load on CPU 1, the server on two cores gets both with h2load beside it, and h2load's own
CPU time is measured and reported. h2load sends one body per line (the first texts of the run's tweets, the
same each call) and sees every answer as HTTP 200, so the server's own counters are read before and after:
a line counts only if every call it made was OK (or CANCELLED by h2load stopping at the end). The same
counters, by worker, tell where the texts were computed, and the processes' descriptors how the kernel
split h2load's few connections among WORKERS (`connections`). A line can also go to two one-core servers
at once, one h2load each with half the connections: what two one-core pods serve, no kernel split deciding.

`var/h2load/` is installed on first use from Debian's packages (`scripts/install_h2load.sh`).
"""

from __future__ import annotations

import os
import re
import resource
import struct
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import ROOT
from protos import predict_pb2

H2LOAD = ROOT / "var" / "h2load" / "bin" / "h2load"
# (line, rpc, texts a call (0: unary Predict), connections, streams a connection)
LINES = [
    ("Predict c=64", "Predict", 0, 8, 8),
    ("PredictBatch 64 c=4", "PredictBatch", 64, 4, 1),
    ("PredictBatch 256 c=4", "PredictBatch", 256, 4, 1),
    # Every caller on one connection, so on one worker: why a client opens several a pod (PREDICT_CONNECTIONS).
    ("PredictBatch 64 c=4, 1 connection", "PredictBatch", 64, 1, 4),
    ("PredictBatch 256 c=4, 1 connection", "PredictBatch", 256, 1, 4),
]
WARM_S = 2
ALLOWED = {"OK", "CANCELLED"}  # CANCELLED: the calls in flight when h2load stops


def ensure_h2load() -> Path:
    if not H2LOAD.is_file():
        print("installing h2load into var/h2load (benchmark only) ...", flush=True)
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install_h2load.sh"), str(H2LOAD.parents[1])], check=True
        )
    return H2LOAD


def write_bodies(texts: list[str], folder: Path) -> dict[str, Path]:
    """Each line's request body: one gRPC message frame (flag byte, big-endian length, protobuf)."""
    bodies = {}
    for line, _, batch, _, _ in LINES:
        message = (
            predict_pb2.PredictBatchRequest(texts=texts[:batch])
            if batch
            else predict_pb2.PredictRequest(text=texts[0])
        ).SerializeToString()
        path = folder / f"{re.sub(r'[^A-Za-z0-9]+', '_', line)}.grpc"
        path.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
        bodies[line] = path
    return bodies


def server_counts(metrics_port: int) -> tuple[Counter[str], Counter[str]]:
    """From one scrape: the server's calls so far by status code, and the texts its model scored by worker
    ("-" for a server of one process)."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    codes: Counter[str] = Counter()
    texts: Counter[str] = Counter()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "model_svc_requests_total":
                codes[sample.labels["code"]] += int(sample.value)
            elif sample.name == "model_svc_texts_total":
                texts[sample.labels.get("worker", "-")] += int(sample.value)
    return codes, texts


def _command(
    port: int, rpc: str, body: Path, conns: int, streams: int, seconds: float, cpus: str
) -> list[str]:
    return [
        "taskset", "-c", cpus, str(H2LOAD), "-D", str(max(1, round(seconds))), "-c", str(conns), "-m", str(streams),
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}/sentiment.v1.PredictService/{rpc}",
    ]  # fmt: skip


def _h2load(
    peers: Sequence[Any],
    rpc: str,
    body: Path,
    conns: int,
    streams: int,
    seconds: float,
    cpus: str,
    split: bool,
) -> tuple[list[str], list[list[int]]]:
    """One h2load a peer, all at once: their reports, and (with `split`) how many of its connections each
    process of each peer held a second into the run."""
    runs = [
        subprocess.Popen(
            _command(peer.program.port, rpc, body, conns, streams, seconds, cpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for peer in peers
    ]
    held = []
    try:
        if split:
            time.sleep(min(1.0, seconds / 2))
            held = [connections_held(peer.program.port, peer.pids()) for peer in peers]
        outs = []
        for run in runs:
            out, err = run.communicate(timeout=seconds + 60)
            if run.returncode != 0:
                raise RuntimeError(f"h2load exited {run.returncode}: {out[-800:]} {err[-800:]}")
            outs.append(out)
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    return outs, held


def connections_held(port: int, pids: Sequence[int]) -> list[int]:
    """Established TCP connections to `port` held by each process of `pids` (the kernel's split)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(f"socket:[{fields[9]}]")
    held = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or a descriptor closed while listed
            links = []
        held.append(sum(link in inodes for link in links))
    return held


def _figures(out: str) -> tuple[float, float, float]:
    """(seconds, calls a second, mean ms) from h2load's report."""
    finished = re.search(r"finished in ([0-9.]+)s, ([0-9.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded", out)  # the line is there
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not (finished and done and mean):
        raise RuntimeError(f"h2load printed no figures:\n{out}")
    return float(finished.group(1)), float(finished.group(2)), _ms(mean.group(1))


def line_row(peers: Sequence[Any], line: str, body: Path, seconds: float, load_cpus: str) -> dict[str, Any]:
    """One line against `peers` (ModelSvcPeers) at once, the line's connections shared evenly among them:
    calls and texts a second (summed), mean latency, h2load's CPU. One peer gets the whole line; two
    one-core peers side by side are what two one-core pods serve, each its own share of the callers: no
    kernel split decides it."""
    _, rpc, batch, conns, streams = next(spec for spec in LINES if spec[0] == line)
    if conns % len(peers):
        raise ValueError(f"{line}: {conns} connections cannot be shared evenly by {len(peers)} servers")
    conns //= len(peers)
    _h2load(peers, rpc, body, conns, streams, WARM_S, load_cpus, split=False)
    before = [server_counts(peer.metrics_port) for peer in peers]
    used_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outs, held = _h2load(peers, rpc, body, conns, streams, seconds, load_cpus, split=True)
    used_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = [server_counts(peer.metrics_port) for peer in peers]
    texts: list[int] = []
    ok_calls = 0
    for peer, (codes_before, texts_before), (codes_after, texts_after) in zip(
        peers, before, after, strict=True
    ):
        bad = {code: n for code, n in (codes_after - codes_before).items() if code not in ALLOWED}
        if bad:
            raise RuntimeError(f"{peer.name} {line}: calls that were not OK: {bad}")
        ok_calls += (codes_after - codes_before)["OK"]
        texts += (texts_after - texts_before).values()
    figures = [_figures(out) for out in outs]
    calls_per_s = sum(rate for _, rate, _ in figures)
    elapsed = max(took for took, _, _ in figures)
    cpu_s = (used_after.ru_utime + used_after.ru_stime) - (used_before.ru_utime + used_before.ru_stime)
    return {
        "name": line,
        "calls_per_s": calls_per_s,
        "tweets_per_s": round(calls_per_s * max(1, batch), 1),
        "mean_ms": round(sum(rate * ms for _, rate, ms in figures) / max(calls_per_s, 1e-9), 3),
        "ok_calls": ok_calls,
        # The kernel gives each of h2load's connections to one worker (the supervisor holds none), and a
        # worker computes what its connections bring.
        "connections": sorted((n for counts in held for n in counts if n), reverse=True),
        "busiest_worker_texts": round(max(texts, default=0) / max(1, sum(texts)), 3),
        "load_generator_cores": round(cpu_s / elapsed, 3),
    }


def _ms(text: str) -> float:
    """h2load's durations: `850us`, `12.34ms`, `1.2s`."""
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return round(float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)
