"""The X API v2 filtered stream as a source: tweepy's `AsyncStreamingClient` bridged into a bounded queue.

Rules are synced at start; tweepy keeps its reconnect and backoff, except for a 401/403 (a rejected token,
an app without access), which is tried `auth_max_tries` times and then ends the stream with `failure`, and
a 429, which waits as X's "handling disconnections" asks (a minute, doubling, `rate_limit_wait_s`). The
client exports whether it is connected, each connect, each non-200 answer and when X last sent anything
(data or a keep-alive), and keeps `last_heard` (time.monotonic()) for the liveness probe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
from tweepy import StreamRule
from tweepy.asynchronous import AsyncStreamingClient
from tweepy.asynchronous.streaming import AsyncBaseStream
from tweepy.errors import HTTPException

from stream_svc.config import X_API_BASE_URL
from stream_svc.metrics import StreamMetrics
from stream_svc.tweets import SourceEvent, parse_message

log = logging.getLogger(__name__)

# What the filtered stream is asked for: the author's username and the tweet's date.
STREAM_PARAMS: dict[str, Any] = {"expansions": ["author_id"], "tweet_fields": ["created_at"]}
# The answers that retrying cannot fix without a person: a bad token, or an app without access.
REFUSALS = {
    401: "401 Unauthorized: the bearer token was rejected",
    403: "403 Forbidden: the app lacks access to the filtered stream",
}


class _RebasedSession:
    """An aiohttp session that sends tweepy's hard-coded `https://api.twitter.com` calls to `base_url`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    @property
    def closed(self) -> bool:
        return self._session.closed

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        url = str(url)
        if url.startswith(X_API_BASE_URL):
            url = self._base_url + url[len(X_API_BASE_URL) :]
        return self._session.request(method, url, **kwargs)


RATE_LIMITED = 429
MAX_RATE_LIMIT_WAIT_S = 960.0


def rate_limit_wait_s(in_a_row: int, first_s: float = 60.0) -> float:
    """The wait after the `in_a_row`-th 429 in a row: `first_s` (a minute), doubling, at most 16 minutes."""
    return min(MAX_RATE_LIMIT_WAIT_S, first_s * float(2 ** (in_a_row - 1)))


class _Refused(Exception):
    """Raised out of tweepy's connect loop on a 401/403 or a 429, so the waits and tries are ours."""

    def __init__(self, status: int) -> None:
        super().__init__(REFUSALS.get(status, f"HTTP {status}"))
        self.status = status


class XStreamClient(AsyncStreamingClient):  # type: ignore[misc]  # tweepy is untyped
    """tweepy's AsyncStreamingClient with a configurable API host, bridged into a bounded asyncio.Queue.

    tweepy keeps its reconnect and backoff; each message is parsed here and put on `queue`, so a slow
    pipeline stops tweepy reading the socket (backpressure down to TCP). A message whose `put` was
    interrupted by `disconnect()` is kept in `leftover`, not lost.

    A 401 or 403 (which tweepy would retry forever) is tried `auth_max_tries` times in a row, waiting
    `auth_retry_wait_s`, doubled after each; then the stream ends with `failure` naming the status.
    Every non-200 answer is counted in `metrics`' `stream_x_http_errors_total{status}`.
    """

    def __init__(
        self,
        bearer_token: str,
        queue: asyncio.Queue[SourceEvent],
        base_url: str = X_API_BASE_URL,
        max_retries: float = math.inf,
        auth_max_tries: int = 3,
        auth_retry_wait_s: float = 5.0,
        metrics: StreamMetrics | None = None,
        rate_limit_wait_s: float = 60.0,
    ) -> None:
        super().__init__(bearer_token, max_retries=max_retries)
        self.metrics = metrics or StreamMetrics()
        self.base_url = base_url.rstrip("/")
        self.queue = queue
        self.leftover: list[SourceEvent] = []
        self.connects = 0
        self.session: Any = None
        self.auth_max_tries = auth_max_tries
        self.auth_retry_wait_s = auth_retry_wait_s
        self.refusals = 0  # 401/403 answers in a row (a successful connect resets it)
        self.rate_limit_wait_s = rate_limit_wait_s
        self.rate_limited = 0  # 429 answers in a row (a successful connect resets it)
        self.connected = False
        self.last_heard = time.monotonic()  # a tweet, a malformed message or a keep-alive; start counts
        self.failure = ""  # why the X API is given up on; empty while it is not
        self._refused: _Refused | None = None

    async def _connect(self, method: str, endpoint: str, **kwargs: Any) -> None:
        url = f"{self.base_url}/2/tweets/{endpoint}/stream"
        headers = {"Authorization": f"Bearer {self.bearer_token}"}
        while True:
            await AsyncBaseStream._connect(self, method, url, headers=headers, **kwargs)
            refused, self._refused = self._refused, None
            if refused is None:
                return
            if refused.status == RATE_LIMITED:
                await self._wait_rate_limit()
            elif not await self.count_refusal(refused.status, "stream connect"):
                return

    async def _wait_rate_limit(self) -> None:
        """A minute after the first 429 in a row, doubling after each (at most 16 minutes), as X documents."""
        self.rate_limited += 1
        wait_s = rate_limit_wait_s(self.rate_limited, self.rate_limit_wait_s)
        log.warning(
            "X stream connect rate-limited (429, %d in a row); retrying in %.0fs", self.rate_limited, wait_s
        )
        await asyncio.sleep(wait_s)

    async def count_refusal(self, status: int, what: str) -> bool:
        """Count a 401/403 answer to `what`; wait and return True while tries remain, else set `failure`."""
        self.refusals += 1
        if self.refusals >= self.auth_max_tries:
            self.failure = f"X API refused the {what} {self.refusals} times in a row: {REFUSALS[status]}"
            return False
        wait_s = self.auth_retry_wait_s * 2 ** (self.refusals - 1)
        log.warning(
            "X API refused the %s: %s (try %d of %d); retrying in %.2fs",
            what,
            REFUSALS[status],
            self.refusals,
            self.auth_max_tries,
            wait_s,
        )
        await asyncio.sleep(wait_s)
        return True

    async def on_request_error(self, status_code: int) -> None:
        self._set_connected(False)
        self.metrics.x_http_errors.labels(status=str(status_code)).inc()
        if status_code in REFUSALS or status_code == RATE_LIMITED:
            raise _Refused(status_code)  # ends tweepy's loop: these waits and tries are ours
        log.warning("X stream connect answered HTTP %d; tweepy retries with backoff", status_code)

    async def on_exception(self, exception: Exception) -> None:
        if isinstance(exception, _Refused):
            self._refused = exception
            return
        await super().on_exception(exception)

    async def request(
        self, method: str, route: str, params: Any = None, json: Any = None, user_auth: bool = False
    ) -> Any:
        """tweepy's REST call (the rules endpoints) with the host swapped; not used while streaming."""
        async with aiohttp.ClientSession() as session:
            previous, self.session = self.session, _RebasedSession(session, self.base_url)
            try:
                return await super().request(method, route, params=params, json=json, user_auth=user_auth)
            finally:
                self.session = previous

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.metrics.x_connected.set(1 if connected else 0)

    def _heard(self) -> None:
        self.last_heard = time.monotonic()
        self.metrics.last_message.set_to_current_time()

    async def on_connect(self) -> None:
        self.connects += 1
        self.refusals = self.rate_limited = 0
        self._set_connected(True)
        self._heard()
        self.metrics.x_connects.inc()
        log.info("X stream connected (connection %d)", self.connects)

    async def on_closed(self, response: Any) -> None:
        self._set_connected(False)
        await super().on_closed(response)

    async def on_connection_error(self) -> None:
        self._set_connected(False)
        await super().on_connection_error()

    async def on_disconnect(self) -> None:
        self._set_connected(False)
        await super().on_disconnect()

    async def on_keep_alive(self) -> None:
        self._heard()

    async def on_data(self, raw_data: bytes) -> None:
        # Replaces tweepy's on_data, whose json.loads would end the stream on one invalid message.
        self._heard()
        event = parse_message(raw_data)
        try:
            await self.queue.put(event)
        except asyncio.CancelledError:
            self.leftover.append(event)
            raise


async def sync_rules(client: AsyncStreamingClient, wanted: Sequence[str]) -> tuple[int, int]:
    """Make the stream's rules exactly `wanted`: delete stale ones, add missing ones. Returns (added, deleted)."""
    response = await client.get_rules()
    existing: list[StreamRule] = list(response.data or [])
    stale = [rule.id for rule in existing if rule.value not in wanted]
    present = {rule.value for rule in existing}
    missing = [StreamRule(value=value) for value in dict.fromkeys(wanted) if value not in present]
    if stale:
        await client.delete_rules(stale)
    if missing:
        added = await client.add_rules(missing)
        if added.errors:
            raise ValueError(f"X rejected stream rules: {added.errors}")
    log.info("X stream rules synced: %d added, %d deleted", len(missing), len(stale))
    return len(missing), len(stale)


class XStreamSource:
    """The X API v2 filtered stream: rules synced at start, `expansions=author_id`, `tweet.fields=created_at`.

    `failed` is true when the stream ended on its own rather than through `aclose()`; `failure` then says
    why: the X API refused the token or the app's access (401/403, `auth_max_tries` times in a row, on
    the rules calls or the stream connect), or tweepy gave up or hit an unexpected error. Non-200 answers
    are counted in `metrics`.
    """

    def __init__(
        self,
        bearer_token: str,
        rules: Sequence[str],
        base_url: str = X_API_BASE_URL,
        queue_size: int = 1000,
        max_retries: float = math.inf,
        auth_max_tries: int = 3,
        auth_retry_wait_s: float = 5.0,
        metrics: StreamMetrics | None = None,
        rate_limit_wait_s: float = 60.0,
    ) -> None:
        self.rules = list(rules)
        self.queue: asyncio.Queue[SourceEvent] = asyncio.Queue(maxsize=queue_size)
        self.client = XStreamClient(
            bearer_token,
            self.queue,
            base_url,
            max_retries,
            auth_max_tries,
            auth_retry_wait_s,
            metrics,
            rate_limit_wait_s,
        )
        self.failure = ""
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    @property
    def connected(self) -> bool:
        """Connected to the filtered stream now (readiness)."""
        return self.client.connected

    def silent_s(self) -> float:
        """Seconds since X last sent anything (a tweet or a keep-alive); since the start before that."""
        return time.monotonic() - self.client.last_heard

    @property
    def refused(self) -> bool:
        """The X API refused the token or the app's access (the failure is a 401/403)."""
        return bool(self.client.failure)

    async def _sync_rules(self) -> bool:
        """Sync the rules, a 401/403 tried like a connect; False (with `failure` set) once X keeps refusing."""
        while True:
            try:
                await sync_rules(self.client, self.rules)
                self.client.refusals = 0
                return True
            except HTTPException as exc:
                status = int(getattr(exc.response, "status", 0))
                self.client.metrics.x_http_errors.labels(status=str(status)).inc()
                if status not in REFUSALS:
                    raise
                if not await self.client.count_refusal(status, "rules request"):
                    self.failure = self.client.failure
                    return False
                if self._closing:
                    return False

    async def __aiter__(self) -> AsyncIterator[SourceEvent]:
        if not await self._sync_rules() or self._closing:
            return
        self._task = task = self.client.filter(**STREAM_PARAMS)
        getter: asyncio.Future[SourceEvent] | None = None
        try:
            while True:
                if task.done() and self.queue.empty():
                    break
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    event, getter = getter.result(), None
                    yield event
                else:
                    getter.cancel()
            while self.client.leftover:
                yield self.client.leftover.pop(0)
        finally:
            if getter is not None and getter.done() and not getter.cancelled():
                self.client.leftover.append(getter.result())  # taken as the iteration was abandoned
            elif getter is not None:
                getter.cancel()
            if not task.done():
                task.cancel()
        if self._closing:
            return
        if self.client.failure:
            self.failure = self.client.failure  # the app logs it, once, as it exits
        else:
            self.failure = "X stream ended without being asked to stop"
            log.error(self.failure)

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self.client.disconnect()
            await asyncio.gather(self._task, return_exceptions=True)

    def take_buffered(self) -> list[SourceEvent]:
        """The messages parsed and queued (or cut short by a disconnect) but not yet yielded."""
        events, self.client.leftover = self.client.leftover, []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events
