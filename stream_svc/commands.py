"""The table and dead-letter commands of `python -m stream_svc` (all but `run`): each prints what it did.

`report` reads a time window with Queries of the `by_time` index (`--since`), or the whole table with a
parallel Scan (`--all`, and `report` alone); both fold pages as they come (`report.Aggregate`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aioboto3
from botocore.exceptions import ClientError

from sentiment.errors import ConfigError
from sentiment.timefmt import utc_iso
from stream_svc import report
from stream_svc.backfill import BackfillProgress, backfill_buckets
from stream_svc.config import StreamConfig
from stream_svc.dynamodb import client_config, create_table, error_code
from stream_svc.forget import forget, read_ids, scrub_dead_letters
from stream_svc.keys import INDEX_NAME
from stream_svc.reads import get_items, query_window, scan_table


@asynccontextmanager
async def dynamodb_client(concurrency: int = 16) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("dynamodb", config=client_config(max(10, concurrency))) as client:
        yield client


async def create_table_command(config: StreamConfig) -> int:
    setup = await create_table(config.dynamodb_table)
    for step in setup.steps:
        print(step)
    if config.retention_days > 0:
        print(
            f"items written from now on expire {config.retention_days:g} days after analysis (RETENTION_DAYS)"
        )
    else:
        print("items are kept for ever (RETENTION_DAYS=0: no expires_at is written)")
    return 0


@dataclasses.dataclass(frozen=True)
class ReportRequest:
    since: datetime | None  # None: the whole table
    until: datetime
    model_version: str | None = None
    recent: int = 5
    segments: int = 4
    concurrency: int = 8


async def build_report(config: StreamConfig, request: ReportRequest) -> report.Summary:
    """The figures of a window (Queries, no Scan) or of the whole table (parallel Scan)."""
    aggregate = report.Aggregate(recent=request.recent)
    started = time.perf_counter()
    async with dynamodb_client(max(request.concurrency, request.segments) * 2) as client:
        if request.since is not None:
            await _check_index(client, config.dynamodb_table)
            stats = await query_window(
                client,
                config.dynamodb_table,
                request.since,
                request.until,
                aggregate.fold,
                shards=config.bucket_shards,
                model_version=request.model_version,
                concurrency=request.concurrency,
            )
        else:
            stats = await scan_table(
                client,
                config.dynamodb_table,
                aggregate.fold,
                segments=request.segments,
                model_version=request.model_version,
            )
        recent_items = await get_items(client, config.dynamodb_table, aggregate.newest_ids())
    window = {
        "since": utc_iso(request.since) if request.since else None,
        "until": utc_iso(request.until) if request.since else None,
        "model_version": request.model_version,
    }
    reads = {
        "requests": dict(stats.requests),
        "items_read": stats.items_read + len(recent_items),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return aggregate.finish(recent_items, window=window, reads=reads)


async def _check_index(client: Any, table: str) -> None:
    described = (await client.describe_table(TableName=table))["Table"]
    if not any(i["IndexName"] == INDEX_NAME for i in described.get("GlobalSecondaryIndexes", [])):
        raise ConfigError(
            f"table {table!r} has no {INDEX_NAME} index: run `python -m stream_svc create-table` (it adds it), "
            "then `backfill-buckets` for the items written before it"
        )


def print_report(summary: report.Summary, plot_path: str | None, json_path: str | None) -> None:
    print(report.render(summary))
    if plot_path:
        print(f"plot written to {report.plot(summary, plot_path)}")
    if json_path:
        Path(json_path).write_text(json.dumps(dataclasses.asdict(summary), indent=2, default=str))


def _progress_printer(out: IO[str], every_s: float = 2.0) -> Callable[..., None]:
    last = [0.0]
    started = time.monotonic()

    def show(progress: BackfillProgress, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - last[0] < every_s:
            return
        last[0] = now
        rate = progress.updated / max(now - started, 1e-9)
        print(
            f"backfill: scanned {progress.scanned}, updated {progress.updated}, skipped {progress.skipped}, "
            f"segments done {progress.segments_done}/{progress.segments} ({rate:.0f} updates/s)",
            file=out,
            flush=True,
        )

    return show


async def backfill_command(config: StreamConfig, rate_per_s: float, segments: int, state: Path) -> int:
    show = _progress_printer(sys.stdout)
    async with dynamodb_client(segments * 4) as client:
        progress = await backfill_buckets(
            client,
            config.dynamodb_table,
            config.layout,
            rate_per_s=rate_per_s,
            segments=segments,
            state_path=state,
            progress=show,
        )
    show(progress, final=True)
    resumed = " (resumed)" if progress.resumed else ""
    print(
        f"backfill done{resumed}: {progress.updated} items given time keys, {progress.skipped} skipped "
        f"(rewritten or deleted meanwhile), {progress.scanned} items read"
    )
    return 0


async def redrive_command(config: StreamConfig, location: str) -> int:
    from stream_svc.redrive import redrive  # gRPC: imported by the one command that predicts

    result = await redrive(config, location)
    c = result.counters
    malformed = sum(c.malformed.values())
    files = f"{len(result.files)} file{'' if len(result.files) == 1 else 's'}"
    print(
        f"redrive of {location}: {c.received + result.duplicates} dead letters in {files}; "
        f"{result.duplicates} duplicate ids skipped, {malformed} lines not dead letters"
    )
    print(
        f"written {c.written}, failed again {c.dead_lettered}, empty after cleaning {c.skipped_empty}; "
        f"balanced={c.balanced()}"
    )
    if c.dead_lettered:
        print(f"what failed again is in {result.failed_to}")
    return 0 if c.balanced() and not c.dead_lettered else 1


async def forget_command(config: StreamConfig, ids_path: str, dead_letters: str | None = None) -> int:
    """Delete the ids from the table, then from the dead letters (`dead_letters`, default DEAD_LETTER_URI;
    "" skips them)."""
    handle = sys.stdin if ids_path == "-" else open(ids_path, encoding="utf-8")
    with handle:
        ids = set(read_ids(handle))
    async with dynamodb_client(32) as client:
        counts = await forget(client, config.dynamodb_table, ids)
    print(
        f"forget: {counts.requested} ids, {counts.deleted} deleted, {counts.absent} not in the table, "
        f"{len(counts.failed)} failed"
    )
    for tweet_id in counts.failed:
        print(f"failed: {tweet_id}")
    location = config.dead_letter_uri if dead_letters is None else dead_letters
    if location:
        try:
            scrubbed = await scrub_dead_letters(location, ids)
        except ClientError as exc:
            code, message = error_code(exc)
            print(f"dead letters at {location}: cannot scrub them: {code}: {message}", file=sys.stderr)
            return 1
        print(
            f"dead letters at {location}: {scrubbed.files} files read, {scrubbed.rewritten} rewritten; "
            f"forgotten tweets' lines removed: {scrubbed.removed}"
        )
    return 0 if not counts.failed else 1
