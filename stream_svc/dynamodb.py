"""DynamoDB plumbing of the analysis table: client config, typed JSON, error codes, and the admin calls.

`python -m stream_svc create-table` and `report` use `create_table` and `scan_items`; `app.run` checks
`table_exists` before it starts. Writing, and retrying throttled writes, is the sink's (`stream_svc.sink`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import aioboto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

from stream_svc.items import Item

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
