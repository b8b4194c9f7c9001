"""WORKERS > 1: server processes sharing one port (SO_REUSEPORT), as grpc's examples/python/multiprocessing.

`supervise(config)` is what `python -m model_svc` runs then. This process reserves LISTEN_ADDR's port (a
socket bound with SO_REUSEPORT that never listens, so no connection is handed to it), starts WORKERS spawned
worker processes that each bind the same port and run the whole server (`start_server`: its own model,
batcher, hot reload polling models/CURRENT, health), and holds no model itself. The kernel spreads
connections over the workers, so any health check on the port answers from one of them.

- Start: every worker loads its first model, then all join the port together, so that none is handed
  the connections opened while another still loads (they would stay on it).
- CPUs: when this process may run on exactly WORKERS CPUs (a container given whole CPUs of its own, as the
  manifests' Guaranteed pods with the static CPU manager are, or `taskset`), each worker is pinned to one of
  them: its threads (gRPC's poller, the event loop, the inference thread) then share one core's caches and
  never meet another worker's. On a wider set (CPUs shared with other pods) the scheduler places them.
- Metrics: METRICS_PORT is served here; a scrape asks every worker for its page over its pipe and serves
  every series with a `worker` label ("0", "1", ...), plus `model_svc_workers`.
- SIGTERM / SIGINT: forwarded to every worker, each of which drains as a lone server does (NOT_SERVING,
  GRACE_S for calls in flight, the batcher drained); the exit code is 0 when every worker's is.
- A worker that exits on its own stops the others, and the program exits 1 (the pod restarts).
- A worker whose supervisor is gone (its pipe closes) stops itself the same way.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from model_svc.config import ModelConfig
from sentiment.logs import setup_logging
from sentiment.metrics import MetricsEndpoint

log = logging.getLogger("model_svc")

SCRAPE_TIMEOUT_S = 5.0
STOP_MARGIN_S = 20.0  # beyond GRACE_S: time for a worker to drain its batcher and exit


@contextmanager
def reserve_port(address: str) -> Iterator[int]:
    """Bind `host:port` (port 0: any) with SO_REUSEPORT without listening; yields the port."""
    host, _, port = address.rpartition(":")
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


class WorkerMetrics(Collector):
    """Collects every worker's series (asked over its pipe), each with a `worker` label added."""

    def __init__(self, pipes: list[Connection]) -> None:
        self._pipes = pipes
        self._lock = threading.Lock()  # the HTTP server may scrape from two threads at once

    def _page(self, pipe: Connection) -> str:
        pipe.send("metrics")
        if not pipe.poll(SCRAPE_TIMEOUT_S):
            raise TimeoutError("a worker did not answer the scrape")
        return pipe.recv_bytes().decode()

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        with self._lock:
            pages = []
            for index, pipe in enumerate(self._pipes):
                try:
                    pages.append((index, self._page(pipe)))
                except (OSError, EOFError, TimeoutError) as exc:
                    log.warning("worker %d left out of this scrape: %s", index, exc)
        for index, page in pages:
            for family in text_string_to_metric_families(page):
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": str(index)}, sample.value)
        yield from merged.values()


def supervise(config: ModelConfig) -> int:
    """Run `config.workers` worker processes on LISTEN_ADDR until SIGTERM / SIGINT; the exit code."""
    context = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    stopping = _forward_signals(procs)
    with reserve_port(config.listen_addr) as port:
        host = config.listen_addr.rpartition(":")[0]
        worker_config = replace(
            config, listen_addr=f"{host}:{port}", metrics_port=0, reuse_port=True, workers=1
        )
        pipes = []
        cpus = sorted(os.sched_getaffinity(0))
        pinned = len(cpus) == config.workers
        loaded = context.Barrier(config.workers)  # every worker's first load over: all join the port
        for index in range(config.workers):
            if stopping.is_set():
                break
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=worker_main,
                args=(worker_config, index, theirs, loaded, cpus[index] if pinned else None),
                name=f"worker-{index}",
            )
            proc.start()
            theirs.close()
            pipes.append(ours)
            procs.append(proc)
        log.info(
            "PredictService listening on port %d: %d worker processes%s",
            port,
            config.workers,
            f", one on each of CPUs {cpus}" if pinned else "",
        )
        registry = CollectorRegistry()
        registry.register(WorkerMetrics(pipes))
        live = Gauge("model_svc_workers", "Worker processes running", registry=registry)
        live.set_function(lambda: sum(p.is_alive() for p in procs))
        endpoint = MetricsEndpoint(registry, config.metrics_port).start()
        try:
            return _wait(procs, stopping, config.grace_s)
        finally:
            endpoint.close()


def _forward_signals(procs: list[Any]) -> threading.Event:
    """From now on the first SIGTERM / SIGINT is sent on to every worker as one SIGTERM (a second would
    cut its drain short); the event is set once it came."""
    stopping = threading.Event()

    def forward(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s received; stopping %d workers", signal.Signals(signum).name, len(procs))
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return stopping


def _wait(procs: list[Any], stopping: threading.Event, grace_s: float) -> int:
    """Until every worker exits; all are stopped when one exits on its own, killed past the grace."""
    failed = False
    running = list(procs)
    deadline: float | None = None
    while running:
        wait([p.sentinel for p in running], timeout=1.0)
        for proc in [p for p in running if not p.is_alive()]:
            running.remove(proc)
            if not stopping.is_set():
                log.error("%s exited with %s; stopping the others", proc.name, proc.exitcode)
                failed = True
                os.kill(os.getpid(), signal.SIGTERM)
        if stopping.is_set() and deadline is None:
            deadline = time.monotonic() + grace_s + STOP_MARGIN_S
        if deadline is not None and time.monotonic() > deadline:
            for proc in running:
                log.error("%s did not stop in time; killed", proc.name)
                proc.kill()
                proc.join()
            failed, running = True, []
    codes = [p.exitcode for p in procs]
    log.info("model_svc stopped (worker exit codes %s)", codes)
    return 1 if failed or any(codes) else 0


def worker_main(
    config: ModelConfig, index: int, pipe: Connection, loaded: Any, cpu: int | None = None
) -> None:
    """One worker process: a whole server on the shared port until SIGTERM (or its supervisor is gone),
    on `cpu` alone when one is given."""
    from model_svc.__main__ import SWITCH_INTERVAL_S

    os.setpgrp()  # out of the terminal's process group: a Ctrl-C reaches the supervisor, which forwards it
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    setup_logging(config.log_level)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    uvloop.run(_serve(config, index, pipe, loaded))  # the event loop model_svc runs on (__main__)


async def _serve(config: ModelConfig, index: int, pipe: Connection, loaded: Any) -> None:
    from prometheus_client import generate_latest

    from model_svc.server import ModelServer, start_server
    from sentiment.rpc import serve_until_signal

    loop = asyncio.get_running_loop()

    def answer() -> None:
        try:
            pipe.recv()
        except (EOFError, OSError):  # the supervisor is gone: stop as if it had sent SIGTERM
            loop.remove_reader(pipe.fileno())
            os.kill(os.getpid(), signal.SIGTERM)
            return
        pipe.send_bytes(generate_latest(server.metrics.registry) if server else b"")

    server: ModelServer | None = None
    loop.add_reader(pipe.fileno(), answer)

    async def loaded_together() -> None:
        """Until every worker's first load is over (each is bounded by LOAD_TIMEOUT_S); past that, or when a
        worker died first, this one joins the port alone."""
        try:
            await asyncio.to_thread(loaded.wait, config.load_timeout_s + STOP_MARGIN_S)
        except threading.BrokenBarrierError:
            log.warning("worker %d: the other workers did not finish loading; serving without them", index)

    async def start() -> ModelServer:
        nonlocal server
        server = await start_server(config, loaded_together)
        return server

    await serve_until_signal(start, config.grace_s)
    log.info("worker %d stopped", index)
