"""moto's server with an index under its DynamoDB, for bench_report: `python -m benchmarks.moto_indexed -p PORT`.

Stock moto (5.2) answers every Query, even of one index partition, by a pass over the whole table
(`Table.query` loops over `self.all_items()`, which sorts every item), and every Scan page by a pass up
to its ExclusiveStartKey: its cost grows with the table, where DynamoDB's grows with what is read. That
is the endpoint, not the key design, so bench_report measures both: stock moto, and this one, where a
table tagged `bench-index=on` answers a Query from a hash-partitioned index of its items and a Scan from
a sorted copy, bisected to the start key; and its Query and Scan answers are written as the typed JSON
moto already holds, where stock moto converts every item to plain JSON and back through its generic
serializer (about 1 ms an item here). The answers are moto's own (its query and scan code runs, on only
the items that can match), so nothing but the cost changes. The cache is rebuilt after any write to
the table (put, delete, update).
"""

from __future__ import annotations

import bisect
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.core.responses import ActionResult, BaseResponse
from moto.dynamodb import responses
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

from scripts.local_aws import LocalAws

TAG = {"Key": "bench-index", "Value": "on"}
_local = threading.local()
_lock = threading.Lock()


class _Cache:
    """What a table's reads need, built once per table generation (each write bumps it)."""

    def __init__(self, table: Table, generation: int) -> None:
        self.generation = generation
        self.items = _ORIGINAL["all_items"](table)  # sorted by hash key, as moto sorts them
        self.partitions: dict[tuple[str, Any], list[Any]] = {}
        self.segments: dict[tuple[int, int], tuple[list[Any], list[Any]]] = {}

    def partition(self, attr: str, value: Any) -> list[Any]:
        with _lock:
            if (attr, None) not in self.partitions:
                for item in self.items:
                    found = item.attrs.get(attr)
                    if found is not None:
                        self.partitions.setdefault((attr, found.value), []).append(item)
                self.partitions[(attr, None)] = []  # marks the attribute as indexed
            return self.partitions.get((attr, value.value), [])

    def segment(self, segments: tuple[Any, Any]) -> tuple[list[Any], list[Any]]:
        """The items of a Scan segment, in scan order, and their hash key values (to bisect)."""
        with _lock:
            if segments not in self.segments:
                items = [item for item in self.items if item.is_within_segment(segments)]
                self.segments[segments] = (items, [item.hash_key.value for item in items])
            return self.segments[segments]


def _enabled(table: Table) -> bool:
    return TAG in (table.tags or [])


def _cache(table: Table) -> _Cache:
    generation = getattr(table, "_bench_generation", 0)
    with _lock:
        cache: _Cache | None = getattr(table, "_bench_cache", None)
        if cache is None or cache.generation != generation:
            cache = _Cache(table, generation)
            table._bench_cache = cache  # type: ignore[attr-defined]
        return cache


@contextmanager
def _only(table: Table, items: list[Any]) -> Iterator[None]:
    """`table.all_items()` returns `items` in this thread while the block runs."""
    _local.view = (table, items)
    try:
        yield
    finally:
        _local.view = None


def _all_items(self: Table) -> list[Any]:
    view = getattr(_local, "view", None)
    if view is not None and view[0] is self:
        items: list[Any] = view[1]
        return items
    result: list[Any] = _ORIGINAL["all_items"](self)
    return result


def _query(self: Table, *args: Any, **kwargs: Any) -> Any:
    conditions = kwargs.get("hash_key_conditions") or []
    index_name = args[7] if len(args) > 7 else kwargs.get("index_name")
    if not (_enabled(self) and index_name and len(conditions) == 1):
        return _ORIGINAL["query"](self, *args, **kwargs)
    attr, value = conditions[0]
    with _only(self, _cache(self).partition(attr, value)):
        return _ORIGINAL["query"](self, *args, **kwargs)


def _scan(self: Table, filters: Any, limit: Any, exclusive_start_key: Any, *args: Any, **kwargs: Any) -> Any:
    index_name = args[1] if len(args) > 1 else kwargs.get("index_name")
    if not _enabled(self) or index_name:
        return _ORIGINAL["scan"](self, filters, limit, exclusive_start_key, *args, **kwargs)
    items, keys = _cache(self).segment(kwargs.get("segments", (None, None)))
    if exclusive_start_key:
        start = bisect.bisect_right(keys, next(iter(exclusive_start_key[self.hash_key_attr].values())))
        items = items[start:]
    with _only(self, items):
        return _ORIGINAL["scan"](self, filters, limit, None, *args, **kwargs)


def _bumping(name: str) -> Any:
    original = getattr(Table, name)

    def method(self: Table, *args: Any, **kwargs: Any) -> Any:
        self._bench_generation = getattr(self, "_bench_generation", 0) + 1  # type: ignore[attr-defined]
        return original(self, *args, **kwargs)

    return method


def _update_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
    table = self.get_table(table_name)
    table._bench_generation = getattr(table, "_bench_generation", 0) + 1  # type: ignore[attr-defined]
    return _ORIGINAL["update_item"](self, table_name, *args, **kwargs)


class _TypedResult(ActionResult):
    """A Query or Scan answer kept as moto's DynamoType values, written out as DynamoDB's typed JSON."""


class _Result:
    """Stands for `responses.DynamoResult`: a `_TypedResult` inside a Query or Scan of a tagged table."""

    def __new__(cls, result: object) -> Any:
        if getattr(_local, "typed", False):
            return _TypedResult(result)
        return _ORIGINAL["DynamoResult"](result)


def _typed(value: Any) -> Any:
    if isinstance(value, DynamoType):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _serialized(self: BaseResponse, action_result: ActionResult) -> Any:
    if isinstance(action_result, _TypedResult):
        body = json.dumps(action_result.result, default=_typed)
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
    return _ORIGINAL["serialized"](self, action_result)


def _typed_answers(method: Any) -> Any:
    def handler(self: Any) -> Any:
        try:
            _local.typed = _enabled(self.dynamodb_backend.get_table(self.body["TableName"]))
        except Exception:  # moto's own handler answers a missing table
            _local.typed = False
        try:
            return method(self)
        finally:
            _local.typed = False

    return handler


_ORIGINAL: dict[str, Any] = {}


class IndexedLocalAws(LocalAws):
    """`scripts.local_aws.LocalAws`, its server run as `python -m benchmarks.moto_indexed`."""

    server_module = "benchmarks.moto_indexed"


def install() -> None:
    _ORIGINAL.update(
        all_items=Table.all_items,
        query=Table.query,
        scan=Table.scan,
        update_item=DynamoDBBackend.update_item,
        DynamoResult=responses.DynamoResult,
        serialized=BaseResponse.serialized,
    )
    responses.DynamoResult = _Result  # type: ignore[misc]
    BaseResponse.serialized = _serialized  # type: ignore[method-assign]
    responses.DynamoHandler.query = _typed_answers(responses.DynamoHandler.query)  # type: ignore[method-assign]
    responses.DynamoHandler.scan = _typed_answers(responses.DynamoHandler.scan)  # type: ignore[method-assign]
    Table.all_items = _all_items  # type: ignore[method-assign]
    Table.query = _query  # type: ignore[method-assign]
    Table.scan = _scan  # type: ignore[method-assign]
    Table.put_item = _bumping("put_item")  # type: ignore[method-assign]
    Table.delete_item = _bumping("delete_item")  # type: ignore[method-assign]
    DynamoDBBackend.update_item = _update_item  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from moto.server import main

    main(sys.argv[1:])
