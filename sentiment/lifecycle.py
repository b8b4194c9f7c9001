"""One lifecycle for the servers: everything a start acquires is pushed on one AsyncExitStack as it is
acquired, so a start that fails part-way and a stop release the same things in the same (reverse) order."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from grpc_health.v1 import health

log = logging.getLogger(__name__)


@dataclass
class Grace:
    """What in-flight calls get when the server stops: 0 for a start that failed, GRACE_S for a stop.

    The grpc server's stop callback, pushed at start, reads it when the stack unwinds."""

    seconds: float = 0.0


class Lifecycle:
    """The release of a started server. `stop(grace_s)` turns every health service NOT_SERVING for good
    (`enter_graceful_shutdown`), sets the grace, and unwinds the resources; a second call does nothing."""

    def __init__(
        self, name: str, health_servicer: health.aio.HealthServicer, grace: Grace, resources: AsyncExitStack
    ) -> None:
        self.name = name
        self.stopped = False
        self._health = health_servicer
        self._grace = grace
        self._resources = resources

    async def stop(self, grace_s: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self._health.enter_graceful_shutdown()
        self._grace.seconds = grace_s
        await self._resources.aclose()
        log.info("%s stopped", self.name)
