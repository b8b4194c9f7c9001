"""Prometheus plumbing the programs share: each program instance owns a registry (so tests that start
several servers in one process stay apart) and serves it on its own port, with the HTTP probes a program
without a gRPC health service needs (stream_svc's /livez and /readyz) beside /metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app

# A probe answers (healthy, a short reason shown in the body).
Probe = Callable[[], tuple[bool, str]]


def package_version() -> str:
    """The installed version of this project ("unknown" from a bare checkout)."""
    try:
        return metadata.version("tweet-sentiment")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def build_info(registry: CollectorRegistry, program: str, version: str, revision: str) -> Gauge:
    """`<program>_build_info{version,revision} 1`: which build a series came from (Prometheus practice)."""
    gauge = Gauge(
        f"{program}_build_info",
        f"The {program} build: version and revision",
        ["version", "revision"],
        registry=registry,
    )
    gauge.labels(version=version or "unknown", revision=revision or "unknown").set(1)
    return gauge


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds would flood the log."""


class MetricsEndpoint:
    """`/metrics` of `registry` on `port` (0: off) from `start()`, plus each of `probes` at its path
    (200 "ok: <reason>" when healthy, 503 "failing: <reason>" otherwise); `close()` stops it (safe twice).

    It serves from its own threads, so it answers while the program's event loop is busy; a probe that
    must notice a wedged loop checks a heartbeat the loop keeps.
    """

    def __init__(
        self, registry: CollectorRegistry, port: int, probes: Mapping[str, Probe] | None = None
    ) -> None:
        self.registry = registry
        self.port = port
        self.probes = dict(probes or {})
        self._server: _Server | None = None

    def start(self) -> MetricsEndpoint:
        if self.port > 0 and self._server is None:
            self._server = make_server("", self.port, self._app, _Server, handler_class=_Quiet)
            threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        return self

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        probe = self.probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            metrics: Iterable[bytes] = make_wsgi_app(self.registry)(environ, start_response)
            return metrics
        try:
            healthy, reason = probe()
        except Exception as exc:  # a probe that breaks is a failing probe, with its reason
            healthy, reason = False, f"probe error: {type(exc).__name__}: {exc}"
        status = "200 OK" if healthy else "503 Service Unavailable"
        body = f"{'ok' if healthy else 'failing'}: {reason}\n".encode()
        start_response(
            status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
