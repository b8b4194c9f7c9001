"""Reading the analysis table without holding it: a time window as parallel Queries of the `by_time`
index, the whole table as a parallel Scan, and a few items by id.

Each page is handed to a `fold` callback as it arrives and then dropped, so memory is bounded by the
pages in flight (`concurrency` Queries, `segments` Scan segments), never by the table. Items come as
plain dicts of attribute -> string (DynamoDB's S and N values as sent: the caller converts numbers).
`ReadStats` counts the requests by operation (a botocore `before-call` hook on the client) and the
items read (`ScannedCount`: what DynamoDB read and bills, before any filter).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stream_svc.dynamodb import from_dynamodb
from stream_svc.keys import BUCKET, INDEX_NAME, SORT, sort_time, window_buckets

Row = dict[str, str]
Fold = Callable[[list[Row]], None]
BATCH_GET_MAX_KEYS = 100
# What the report needs of an item; `data` and `analyzed_at` date items written before the time keys.
SCAN_ATTRIBUTES = ("id", "sentiment", "score", "model_version", SORT, "data", "analyzed_at")
QUERY_ATTRIBUTES = ("id", "sentiment", "score", "model_version", SORT)


@dataclass
class ReadStats:
    """`requests` by operation name; `items_read` (ScannedCount) and `items_returned` (Count)."""

    requests: Counter[str] = field(default_factory=Counter)
    items_read: int = 0
    items_returned: int = 0

    def watch(self, client: Any) -> None:
        """Count every API call `client` makes from now on, by operation."""

        def count(model: Any, **_: Any) -> None:
            self.requests[model.name] += 1

        client.meta.events.register("before-call.dynamodb", count)

    def add_page(self, page: Mapping[str, Any]) -> None:
        self.items_read += int(page.get("ScannedCount", page.get("Count", 0)))
        self.items_returned += int(page.get("Count", 0))


def flat(raw: Mapping[str, Any]) -> Row:
    """An item of DynamoDB's typed JSON as attribute -> value string (S and N; other types as text)."""
    return {key: str(next(iter(value.values()))) for key, value in raw.items()}


def _projection(names: Sequence[str]) -> tuple[str, dict[str, str]]:
    """A ProjectionExpression with a placeholder per name (`data`, `user` are reserved words)."""
    placeholders = {f"#p{i}": name for i, name in enumerate(names)}
    return ", ".join(placeholders), placeholders


def _placeholder(names: Mapping[str, str], name: str) -> str:
    """The placeholder already standing for `name` (DynamoDB wants one placeholder per name)."""
    return next(key for key, value in names.items() if value == name)


async def _paginate(call: Callable[..., Any], request: dict[str, Any], fold: Fold, stats: ReadStats) -> None:
    while True:
        page = await call(**request)
        stats.add_page(page)
        fold([flat(raw) for raw in page.get("Items", [])])
        if "LastEvaluatedKey" not in page:
            return
        request = {**request, "ExclusiveStartKey": page["LastEvaluatedKey"]}


async def query_window(
    client: Any,
    table: str,
    since: datetime,
    until: datetime,
    fold: Fold,
    *,
    shards: int = 1,
    model_version: str | None = None,
    concurrency: int = 8,
) -> ReadStats:
    """Every item whose time is in `[since, until)`: one paginated Query of the `by_time` index per
    bucket (hour, and shard), `concurrency` at once. No Scan. `model_version` filters on the server
    (a FilterExpression: the window's items are still read, and counted in `items_read`)."""
    stats = ReadStats()
    stats.watch(client)
    expression, names = _projection(QUERY_ATTRIBUTES)
    values = {":lo": {"S": sort_time(since)}, ":hi": {"S": sort_time(until)}}
    base: dict[str, Any] = {
        "TableName": table,
        "IndexName": INDEX_NAME,
        # `<time>#<id>` BETWEEN `<since>` AND `<until>`: since is in, until is out (its items sort after it).
        "KeyConditionExpression": f"#b = :b AND {_placeholder(names, SORT)} BETWEEN :lo AND :hi",
        "ProjectionExpression": expression,
        "ExpressionAttributeNames": {**names, "#b": BUCKET},
    }
    if model_version is not None:
        base["FilterExpression"] = "#mv = :mv"
        base["ExpressionAttributeNames"]["#mv"] = "model_version"
        values[":mv"] = {"S": model_version}
    slots = asyncio.Semaphore(concurrency)

    async def one(bucket: str) -> None:
        request = {**base, "ExpressionAttributeValues": {**values, ":b": {"S": bucket}}}
        async with slots:
            await _paginate(client.query, request, fold, stats)

    await asyncio.gather(*(one(bucket) for bucket in window_buckets(since, until, shards)))
    return stats


async def scan_table(
    client: Any,
    table: str,
    fold: Fold,
    *,
    segments: int = 4,
    model_version: str | None = None,
) -> ReadStats:
    """Every item (of `model_version`, when given: a FilterExpression), by a parallel Scan of `segments`
    segments (Segment/TotalSegments), each paginated."""
    stats = ReadStats()
    stats.watch(client)
    expression, names = _projection(SCAN_ATTRIBUTES)
    base: dict[str, Any] = {
        "TableName": table,
        "TotalSegments": segments,
        "ProjectionExpression": expression,
        "ExpressionAttributeNames": names,
    }
    if model_version is not None:
        base["FilterExpression"] = "#mv = :mv"
        base["ExpressionAttributeNames"] = {**names, "#mv": "model_version"}
        base["ExpressionAttributeValues"] = {":mv": {"S": model_version}}
    await asyncio.gather(
        *(_paginate(client.scan, {**base, "Segment": s}, fold, stats) for s in range(segments))
    )
    return stats


async def get_items(client: Any, table: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The full items of `ids` (BatchGetItem, at most 100 keys a request; missing ones are left out)."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), BATCH_GET_MAX_KEYS):
        keys = [{"id": {"S": i}} for i in ids[start : start + BATCH_GET_MAX_KEYS]]
        request: dict[str, Any] = {table: {"Keys": keys}}
        while request:
            answer = await client.batch_get_item(RequestItems=request)
            found.extend(from_dynamodb(raw) for raw in answer.get("Responses", {}).get(table, []))
            request = answer.get("UnprocessedKeys") or {}
            if request:
                await asyncio.sleep(0.05)  # throttled: the keys it did not read come back
    return found
