"""`backfill-buckets`: the time keys (`stream_svc.keys`) added to items written before they existed.

A parallel Scan reads only what the keys are computed from (`id`, `data`, `analyzed_at`) of the items that
lack `time_bucket` (a FilterExpression); each is updated with `UpdateItem ... SET` under the condition
that it still exists and still lacks the keys, so a tweet the stream rewrote meanwhile, or one `forget`
deleted, is left alone (counted `skipped`). Idempotent: a second run finds nothing to do. Resumable:
after each page the segment's position is saved to `state_path`, and a run that finds that file goes
on from there. Rate-limited to `rate_per_s` updates a second, across all segments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from stream_svc.dynamodb import THROTTLING_CODES, error_code, to_dynamodb
from stream_svc.keys import BUCKET, TableLayout, time_keys
from stream_svc.reads import flat

log = logging.getLogger(__name__)

_ATTRIBUTES = {"#i": "id", "#d": "data", "#a": "analyzed_at", "#b": BUCKET}


@dataclass
class BackfillProgress:
    scanned: int = 0  # items the Scan read (all of them, for the filter)
    found: int = 0  # items without the time keys
    updated: int = 0
    skipped: int = 0  # rewritten or deleted meanwhile: the condition failed
    segments_done: int = 0
    segments: int = 0
    resumed: bool = False


class RateLimiter:
    """At most `rate_per_s` acquisitions a second (evenly spaced), shared by every task that awaits it."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1.0 / rate_per_s
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval_s
        if wait > 0:
            await asyncio.sleep(wait)


def _load_state(state_path: Path, table: str, segments: int) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    if state.get("table") != table or state.get("segments") != segments:
        log.warning("%s is for another table or segment count; starting from the beginning", state_path)
        return None
    return state


async def backfill_buckets(
    client: Any,
    table: str,
    layout: TableLayout,
    *,
    rate_per_s: float = 200.0,
    segments: int = 4,
    state_path: Path = Path("backfill-buckets.state.json"),
    progress: Callable[[BackfillProgress], None] | None = None,
    page_items: int | None = None,
) -> BackfillProgress:
    """Add the time keys to every item that lacks them; `progress` is called after each page (of
    `page_items` items read at most, when given; else DynamoDB's 1 MB).

    The state file is removed once every segment is done."""
    state = _load_state(state_path, table, segments)
    done = BackfillProgress(segments=segments, resumed=state is not None)
    state = state or {"table": table, "segments": segments, "next": {}}
    limiter = RateLimiter(rate_per_s)

    def save() -> None:
        state_path.write_text(json.dumps(state))

    async def segment(number: int) -> None:
        position = state["next"].get(str(number), {})
        while position != "done":
            request: dict[str, Any] = {
                "TableName": table,
                "Segment": number,
                "TotalSegments": segments,
                "FilterExpression": "attribute_not_exists(#b)",
                "ProjectionExpression": "#i, #d, #a",
                "ExpressionAttributeNames": _ATTRIBUTES,
            }
            if position:
                request["ExclusiveStartKey"] = position
            if page_items:
                request["Limit"] = page_items
            page = await client.scan(**request)
            done.scanned += int(page.get("ScannedCount", 0))
            rows = [flat(raw) for raw in page.get("Items", [])]
            done.found += len(rows)
            await asyncio.gather(*(_add_keys(client, table, row, layout, limiter, done) for row in rows))
            position = page.get("LastEvaluatedKey") or "done"
            state["next"][str(number)] = position
            save()
            if progress is not None:
                progress(done)
        done.segments_done += 1

    await asyncio.gather(*(segment(n) for n in range(segments)))
    state_path.unlink(missing_ok=True)
    return done


async def _add_keys(
    client: Any,
    table: str,
    row: dict[str, str],
    layout: TableLayout,
    limiter: RateLimiter,
    done: BackfillProgress,
    attempts: int = 8,
) -> None:
    keys = to_dynamodb(time_keys(row, layout))  # BUCKET first: `#k0` is also the condition's
    names = {f"#k{i}": name for i, name in enumerate(keys)}
    values = {f":k{i}": value for i, value in enumerate(keys.values())}
    for attempt in range(1, attempts + 1):
        await limiter.acquire()
        try:
            await client.update_item(
                TableName=table,
                Key={"id": {"S": row["id"]}},
                UpdateExpression="SET " + ", ".join(f"#k{i} = :k{i}" for i in range(len(keys))),
                ConditionExpression="attribute_exists(#i) AND attribute_not_exists(#k0)",
                ExpressionAttributeNames={**names, "#i": "id"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            code, _ = error_code(exc)
            if code == "ConditionalCheckFailedException":
                done.skipped += 1
                return
            if code in THROTTLING_CODES and attempt < attempts:
                await asyncio.sleep(min(5.0, 0.05 * 2**attempt))
                continue
            raise
        done.updated += 1
        return
