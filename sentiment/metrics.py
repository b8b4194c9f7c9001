"""Prometheus plumbing the programs share: each program instance owns a registry (so tests that start
several servers in one process stay apart) and serves it on its own port."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    """`/metrics` of `registry` on `port` (0: off) from `start()`; `close()` stops it (safe twice)."""

    def __init__(self, registry: CollectorRegistry, port: int) -> None:
        self.registry = registry
        self.port = port
        self._http: Any = None

    def start(self) -> MetricsEndpoint:
        if self.port > 0 and self._http is None:
            self._http, _thread = start_http_server(self.port, registry=self.registry)
        return self

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
