"""The shared metrics endpoint: /metrics from the program's own registry, HTTP probes beside it."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from scripts.local_aws import free_port
from sentiment.metrics import MetricsEndpoint, build_info


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_probes_on_one_port_and_closed_after() -> None:
    registry = CollectorRegistry()
    Counter("demo_things_total", "things", registry=registry).inc(3)
    build_info(registry, "demo", "1.2.3", "abc123")
    state = {"live": True}

    def broken() -> tuple[bool, str]:
        raise RuntimeError("no state yet")

    port = free_port()
    endpoint = MetricsEndpoint(
        registry,
        port,
        {"/livez": lambda: (state["live"], "heard from X 3s ago"), "/readyz": broken},
    ).start()
    try:
        code, page = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and "demo_things_total 3.0" in page
        assert 'demo_build_info{revision="abc123",version="1.2.3"} 1.0' in page
        assert get(f"http://127.0.0.1:{port}/livez") == (200, "ok: heard from X 3s ago\n")
        state["live"] = False
        assert get(f"http://127.0.0.1:{port}/livez") == (503, "failing: heard from X 3s ago\n")
        code, body = get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and "RuntimeError: no state yet" in body
    finally:
        endpoint.close()
        endpoint.close()
    try:
        get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        pass
    else:
        raise AssertionError("the endpoint still answers after close()")
