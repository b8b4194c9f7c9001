"""Where analysed tweets go: the `Sink` protocol and the DynamoDB sink (BatchWriteItem, retried, idempotent).

Retries are ours, not botocore's (its own retries are off), so they have one policy and are counted:
`UnprocessedItems`, throttling and transient server or connection errors are retried with exponential
backoff and full jitter. aioboto3's `batch_writer` is not used because it re-sends unprocessed items at
once, with no backoff. Items are keyed by tweet `id`, so a re-sent item overwrites itself.

A request refused for its credentials, their permissions or a missing table says nothing about its items:
it is re-sent whole (never split), logged at ERROR, counted, and after `WriteRetry.auth_attempts` tries
raises `TableAccessError`, because every other write would fail the same way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import aioboto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from stream_svc import metrics

log = logging.getLogger(__name__)

Item = Mapping[str, Any]  # attribute name -> str | Decimal (numbers are Decimal, as DynamoDB wants)
BATCH_WRITE_MAX_ITEMS = 25
THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
TRANSIENT_CODES = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})
# The request, not its items: the credentials, what they may do, or the table itself.
ACCESS_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "AccessDeniedException",
        "AccessDenied",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "ResourceNotFoundException",
    }
)
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


class TableAccessError(Exception):
    """The table refused every try for a reason no item can fix: credentials rejected or expired,
    permission denied, or the table missing. `code` is DynamoDB's error code."""

    def __init__(self, table: str, code: str, message: str, attempts: int) -> None:
        super().__init__(f"DynamoDB refused table {table!r} {attempts} times: {code}: {message}")
        self.table = table
        self.code = code
        self.attempts = attempts


def error_code(exc: ClientError) -> tuple[str, str]:
    """(code, message) of a ClientError.

    An endpoint that answers DynamoDB's JSON protocol with an XML ErrorResponse (moto's IAM check does)
    leaves botocore with the HTTP status as the code and the XML as the message: its fields are read.
    """
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if code.isdigit() and "<ErrorResponse>" in message:
        fields = dict(_XML_FIELD.findall(message))
        return fields.get("Code", code), fields.get("Message", message)
    return code, message


def is_access_error(exc: ClientError, code: str) -> bool:
    """Refused for the credentials, permissions or table (a 401/403 is, whatever its code)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ACCESS_CODES or status in (401, 403)


@dataclass(frozen=True)
class WriteFailure:
    item: Item
    reason: str


class Sink(Protocol):
    async def write(self, items: Sequence[Item]) -> list[WriteFailure]:
        """Write `items` (retrying as the sink sees fit); return those that could not be written, with why."""
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
        return random.uniform(0, min(self.max_backoff_s, base * 2 ** (attempt - 1)))


_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_dynamodb(item: Item) -> dict[str, Any]:
    """DynamoDB's typed JSON; strings and Decimals (the item schema) take a fast path."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if type(value) is str:
            out[key] = {"S": value}
        elif type(value) is Decimal:
            out[key] = {"N": str(value)}
        else:
            out[key] = _serializer.serialize(value)
    return out


def from_dynamodb(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in raw.items()}


def client_config(max_pool_connections: int = 10) -> Config:
    """botocore retries off (ours are counted and jittered), a connection pool sized for the concurrency.

    Parameter validation is off: the sink builds every request itself, and validating 25 items costs
    about as much CPU as serialising them.
    """
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        parameter_validation=False,
        max_pool_connections=max_pool_connections,
        connect_timeout=5,
        read_timeout=30,
    )


class DynamoSink:
    """BatchWriteItem to one table, `concurrency` requests in flight; `retries` counts every re-send.

    Duplicate ids inside one `write` are collapsed (last wins): BatchWriteItem rejects a request naming a
    key twice, and the table keeps one item per id anyway. A request rejected as invalid is split into
    single items, so one bad item does not fail its 24 neighbours. `write` raises `TableAccessError` when
    the table keeps refusing the credentials; `requests` counts every BatchWriteItem sent.
    """

    def __init__(
        self, client: Any, table: str, concurrency: int = 8, retry: WriteRetry = WriteRetry()
    ) -> None:
        self._client = client
        self.table = table
        self.retry = retry
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
    ) -> DynamoSink:
        """A sink with its own long-lived client (entered once; `aclose()` exits it)."""
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            aioboto3.Session().client(
                "dynamodb", endpoint_url=endpoint_url, config=client_config(max(10, concurrency * 2))
            )
        )
        sink = cls(client, table, concurrency, retry)
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
            left = {str(_deserializer.deserialize(u["PutRequest"]["Item"]["id"])) for u in unprocessed}
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
                metrics.DYNAMODB_AUTH_ERRORS.labels(code=code).inc()
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


async def create_table(table: str, endpoint_url: str | None = None) -> bool:
    """Create the analysis table (partition key `id`, PAY_PER_REQUEST) unless it exists; True if created."""
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint_url) as client:
        try:
            await client.create_table(
                TableName=table,
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceInUseException":
                return False
            raise
        await client.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        return True


async def table_exists(table: str, endpoint_url: str | None = None) -> bool:
    """Whether `table` exists; raises `TableAccessError` when the credentials are refused."""
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint_url) as client:
        try:
            await client.describe_table(TableName=table)
        except ClientError as exc:
            code, message = error_code(exc)
            if code == "ResourceNotFoundException":
                return False
            if is_access_error(exc, code):
                raise TableAccessError(table, code, message, 1) from exc
            raise
        return True


async def scan_items(table: str, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """Every item of the table (paginated Scan), deserialised (numbers as Decimal)."""
    items: list[dict[str, Any]] = []
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint_url) as client:
        paginator = client.get_paginator("scan")
        async for page in paginator.paginate(TableName=table):
            items.extend(from_dynamodb(raw) for raw in page.get("Items", []))
    return items
