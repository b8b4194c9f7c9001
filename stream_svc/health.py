"""stream_svc's probes, served beside /metrics (it has no gRPC health service): is it stuck, is it ready.

Liveness fails when a restart would help: the event loop has not turned for `stall_s` (it is wedged), or
the source is connected yet has heard nothing, not even X's 20-second keep-alive, for `stall_s`. A source
that is disconnected and backing off (a 429, a network error) is not stuck: restarting would only
reconnect sooner than X allows. Readiness: the source is connected (the replay is reading) and the table
takes writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Watched(Protocol):
    """What the probes read of a source."""

    @property
    def connected(self) -> bool: ...

    def silent_s(self) -> float: ...


class StreamHealth:
    """Liveness and readiness of one run; `beat()` is a task the run keeps on its event loop."""

    def __init__(self, source: Watched, stall_s: float, table_ok: Callable[[], bool] = lambda: True) -> None:
        self.source = source
        self.stall_s = stall_s
        self.table_ok = table_ok
        self._beat = time.monotonic()

    async def beat(self) -> None:
        """Mark the loop alive every fraction of `stall_s`, until cancelled."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(min(1.0, self.stall_s / 4))

    def liveness(self) -> tuple[bool, str]:
        """(alive, why), read from the metrics endpoint's thread."""
        loop_idle_s = time.monotonic() - self._beat
        if loop_idle_s > self.stall_s:
            return False, f"the event loop has not run for {loop_idle_s:.0f}s (STALL_S={self.stall_s:g})"
        silent_s = self.source.silent_s()
        if self.source.connected and silent_s > self.stall_s:
            return False, f"connected but nothing heard for {silent_s:.0f}s (STALL_S={self.stall_s:g})"
        return (
            True,
            f"last heard {silent_s:.0f}s ago, {'connected' if self.source.connected else 'reconnecting'}",
        )

    def readiness(self) -> tuple[bool, str]:
        if not self.source.connected:
            return False, "the source is not connected"
        if not self.table_ok():
            return False, "the table refuses writes"
        return True, "connected, the table takes writes"
