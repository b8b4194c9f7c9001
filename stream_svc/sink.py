"""Where analysed tweets go: the `Sink` protocol and `DynamoSink`, which writes them with BatchWriteItem.

DynamoDB throttling is retried here, in `DynamoSink._write_chunk`, and nowhere else: botocore's own
retries are off (`stream_svc.dynamodb.client_config`), so there is one policy and every re-send is
counted. `UnprocessedItems`, throttling and transient server or connection errors are retried with
exponential backoff and full jitter (`WriteRetry`, through `sentiment.retry.full_jitter_s`). aioboto3's
`batch_writer` is not used because it re-sends unprocessed items at once, with no backoff. Items are keyed
by tweet `id`, so a re-sent item overwrites itself.

A request refused for its credentials, their permissions or a missing table says nothing about its items:
it is re-sent whole (never split), logged at ERROR, counted, and after `WriteRetry.auth_attempts` tries
raises `TableAccessError`, because every other write would fail the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import aioboto3
from botocore.exceptions import BotoCoreError, ClientError

from sentiment.retry import full_jitter_s
from stream_svc.dynamodb import (
    THROTTLING_CODES,
    TRANSIENT_CODES,
    TableAccessError,
    client_config,
    error_code,
    from_dynamodb,
    is_access_error,
    to_dynamodb,
)
from stream_svc.items import Item
from stream_svc.metrics import StreamMetrics

log = logging.getLogger(__name__)

BATCH_WRITE_MAX_ITEMS = 25


@dataclass(frozen=True)
class WriteFailure:
    item: Item
    reason: str


class Sink(Protocol):
    """Where the pipeline's items go; `retries` and `requests` only grow (the pipeline reports them)."""

    @property
    def retries(self) -> int:
        """Requests re-sent so far."""
        ...

    @property
    def requests(self) -> int:
        """Requests sent so far, re-sends included."""
        ...

    async def write(self, items: Sequence[Item]) -> list[WriteFailure]:
        """Write `items` (retrying as the sink sees fit); return those that could not be written, with why.

        Raises `TableAccessError` when the table refuses the request itself: no other write would land.
        """
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class WriteRetry:
    """`attempts` for what items can suffer (unprocessed, throttled, transient errors); `auth_attempts` for a
    request refused as a whole (its credentials, permissions or table), whose backoff starts higher:
    with the defaults, a refusal that persists raises within 3.5 s."""

    attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    auth_attempts: int = 4
    auth_initial_backoff_s: float = 0.5

    def backoff_s(self, attempt: int, initial_s: float | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]; base is `initial_backoff_s` unless given."""
        base = self.initial_backoff_s if initial_s is None else initial_s
        return full_jitter_s(attempt, base, self.max_backoff_s)


class DynamoSink:
    """BatchWriteItem to one table, `concurrency` requests in flight; `retries` counts every re-send.

    Duplicate ids inside one `write` are collapsed (last wins): BatchWriteItem rejects a request naming a
    key twice, and the table keeps one item per id anyway. A request rejected as invalid is split into
    single items, so one bad item does not fail its 24 neighbours. `write` raises `TableAccessError` when
    the table keeps refusing the credentials; `requests` counts every BatchWriteItem sent. Refusals are
    counted in `metrics`.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        concurrency: int = 8,
        retry: WriteRetry = WriteRetry(),
        metrics: StreamMetrics | None = None,
    ) -> None:
        self._client = client
        self.table = table
        self.retry = retry
        self.metrics = metrics or StreamMetrics()
        self.retries = 0
        self.requests = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._stack: AsyncExitStack | None = None

    @classmethod
    async def open(
        cls,
        table: str,
        concurrency: int = 8,
        retry: WriteRetry = WriteRetry(),
        endpoint_url: str | None = None,
        metrics: StreamMetrics | None = None,
    ) -> DynamoSink:
        """A sink with its own long-lived client (entered once; `aclose()` exits it)."""
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            aioboto3.Session().client(
                "dynamodb", endpoint_url=endpoint_url, config=client_config(max(10, concurrency * 2))
            )
        )
        sink = cls(client, table, concurrency, retry, metrics)
        sink._stack = stack
        return sink

    async def aclose(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    async def write(self, items: Sequence[Item]) -> list[WriteFailure]:
        unique = list({str(item["id"]): item for item in items}.values())
        chunks = [unique[i : i + BATCH_WRITE_MAX_ITEMS] for i in range(0, len(unique), BATCH_WRITE_MAX_ITEMS)]
        results = await asyncio.gather(*(self._write_chunk(chunk) for chunk in chunks))
        failed_ids = {str(f.item["id"]): f.reason for failures in results for f in failures}
        # A collapsed duplicate shares the fate of the item that stood for it.
        return [
            WriteFailure(item, failed_ids[str(item["id"])]) for item in items if str(item["id"]) in failed_ids
        ]

    async def _write_chunk(self, chunk: list[Item]) -> list[WriteFailure]:
        pending = {str(item["id"]): item for item in chunk}
        reason = ""
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1:
                self.retries += 1
                await asyncio.sleep(self.retry.backoff_s(attempt - 1))
            try:
                response = await self._send(pending)
            except ClientError as exc:
                code, message = error_code(exc)
                reason = f"{code}: {message}"
                if code in THROTTLING_CODES or code in TRANSIENT_CODES:
                    log.warning("BatchWriteItem %s; retry %d", code, attempt)
                    continue
                if len(pending) > 1:
                    return await self._write_singly(list(pending.values()))
                return [WriteFailure(item, reason) for item in pending.values()]
            except (TimeoutError, BotoCoreError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("BatchWriteItem failed (%s); retry %d", reason, attempt)
                continue
            unprocessed = response.get("UnprocessedItems", {}).get(self.table, [])
            if not unprocessed:
                return []
            left = {str(from_dynamodb(u["PutRequest"]["Item"])["id"]) for u in unprocessed}
            pending = {key: item for key, item in pending.items() if key in left}
            reason = f"still unprocessed after {attempt} attempts"
        return [
            WriteFailure(item, f"gave up after {self.retry.attempts} attempts: {reason}")
            for item in pending.values()
        ]

    async def _send(self, pending: Mapping[str, Item]) -> dict[str, Any]:
        """One BatchWriteItem of `pending`. A refusal of the request itself (credentials, permissions, a
        missing table) is retried here, the same request whole, and raises `TableAccessError` once
        `retry.auth_attempts` are spent; any other ClientError is the caller's."""
        request = [{"PutRequest": {"Item": to_dynamodb(item)}} for item in pending.values()]
        for refusal in range(1, self.retry.auth_attempts + 1):
            try:
                async with self._slots:
                    self.requests += 1
                    response: dict[str, Any] = await self._client.batch_write_item(
                        RequestItems={self.table: request}
                    )
                    return response
            except ClientError as exc:
                code, message = error_code(exc)
                if not is_access_error(exc, code):
                    raise
                self.metrics.dynamodb_auth_errors.labels(code=code).inc()
                log.error(
                    "BatchWriteItem to %s refused: %s: %s (the credentials, their permissions or the table, "
                    "not the items); try %d of %d",
                    self.table,
                    code,
                    message,
                    refusal,
                    self.retry.auth_attempts,
                )
                if refusal == self.retry.auth_attempts:
                    raise TableAccessError(self.table, code, message, refusal) from exc
            self.retries += 1
            await asyncio.sleep(self.retry.backoff_s(refusal, self.retry.auth_initial_backoff_s))
        raise AssertionError("unreachable")

    async def _write_singly(self, items: list[Item]) -> list[WriteFailure]:
        results = await asyncio.gather(*(self._write_chunk([item]) for item in items))
        return [failure for failures in results for failure in failures]
