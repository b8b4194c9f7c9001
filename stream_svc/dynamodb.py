"""DynamoDB plumbing of the analysis table: client config, typed JSON, error codes, and the admin calls.

`python -m stream_svc create-table` runs `create_table` (the key design of `stream_svc.keys`: the `by_time`
index, TTL, point-in-time recovery); `app.run` checks `table_exists` before it starts. Writing, and
retrying throttled writes, is the sink's (`stream_svc.sink`); reading windows and the whole table is
`stream_svc.reads`'.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aioboto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

from stream_svc.items import Item
from stream_svc.keys import BUCKET, EXPIRES, INDEX_NAME, INDEX_PROJECTION, SORT

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


@dataclass(frozen=True)
class TableSetup:
    """What `create_table` found and did: `created` (the table was new) and one line per step."""

    created: bool
    steps: list[str]


KEY_ATTRIBUTES = [{"AttributeName": name, "AttributeType": "S"} for name in ("id", BUCKET, SORT)]
INDEX_DEFINITION = {
    "IndexName": INDEX_NAME,
    "KeySchema": [{"AttributeName": BUCKET, "KeyType": "HASH"}, {"AttributeName": SORT, "KeyType": "RANGE"}],
    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(INDEX_PROJECTION)},
}


async def create_table(table: str, endpoint_url: str | None = None) -> TableSetup:
    """Create the analysis table (partition key `id`, PAY_PER_REQUEST) with the `by_time` index, TTL on
    `expires_at` and point-in-time recovery; on an existing table, add whichever of those is missing.

    Safe to run again. Point-in-time recovery is skipped, and said so, where the endpoint lacks it.
    """
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint_url) as client:
        try:
            await client.create_table(
                TableName=table,
                AttributeDefinitions=KEY_ATTRIBUTES,
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[INDEX_DEFINITION],
                BillingMode="PAY_PER_REQUEST",
            )
            created, steps = True, [f"table {table} created (partition key id, PAY_PER_REQUEST)"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
            created, steps = False, [f"table {table} already exists"]
        await client.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        steps.append(await _ensure_index(client, table, created))
        steps.append(await _ensure_ttl(client, table))
        steps.append(await _ensure_pitr(client, table))
        return TableSetup(created, steps)


async def _ensure_index(client: Any, table: str, created: bool, wait_s: float = 120.0) -> str:
    """The `by_time` index, added with UpdateTable when missing (DynamoDB then builds it from the items)."""
    shape = f"index {INDEX_NAME} ({BUCKET} HASH, {SORT} RANGE; projects {', '.join(INDEX_PROJECTION)})"
    described = (await client.describe_table(TableName=table))["Table"]
    if any(i["IndexName"] == INDEX_NAME for i in described.get("GlobalSecondaryIndexes", [])):
        return f"{shape} {'created' if created else 'present'}"
    await client.update_table(
        TableName=table,
        AttributeDefinitions=KEY_ATTRIBUTES,
        GlobalSecondaryIndexUpdates=[{"Create": INDEX_DEFINITION}],
    )
    deadline = asyncio.get_running_loop().time() + wait_s
    status = "CREATING"
    while status != "ACTIVE" and asyncio.get_running_loop().time() < deadline:
        indexes = (await client.describe_table(TableName=table))["Table"].get("GlobalSecondaryIndexes", [])
        status = next((i.get("IndexStatus", "") for i in indexes if i["IndexName"] == INDEX_NAME), "")
        if status != "ACTIVE":
            await asyncio.sleep(1)
    if status != "ACTIVE":
        return f"{shape} added, still {status or 'CREATING'}: window reports see it once it is ACTIVE"
    return f"{shape} added (UpdateTable)"


async def _ensure_ttl(client: Any, table: str) -> str:
    described = (await client.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
    status, attribute = described.get("TimeToLiveStatus", "DISABLED"), described.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attribute != EXPIRES:
            return f"TTL is on {attribute!r}, not {EXPIRES!r}: left as it is (RETENTION_DAYS has no effect)"
        return f"TTL on {EXPIRES} present"
    await client.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES}
    )
    return f"TTL on {EXPIRES} enabled"


async def _ensure_pitr(client: Any, table: str) -> str:
    try:
        described = await client.describe_continuous_backups(TableName=table)
        pitr = described["ContinuousBackupsDescription"].get("PointInTimeRecoveryDescription", {})
        if pitr.get("PointInTimeRecoveryStatus") == "ENABLED":
            return "point-in-time recovery present"
        await client.update_continuous_backups(
            TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    except ClientError as exc:
        code, message = error_code(exc)
        if is_access_error(exc, code):
            raise
        return f"point-in-time recovery not turned on: this endpoint answered {code}: {message}"
    return "point-in-time recovery enabled"


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
