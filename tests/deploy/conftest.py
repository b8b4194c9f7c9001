"""The `overlay` fixture: each Kubernetes test runs once per overlay (skipped where kubectl is missing)."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import KUBECTL, OVERLAYS


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    if KUBECTL is None:
        pytest.skip("kubectl is not on PATH (CI installs it)")
    return str(request.param)
