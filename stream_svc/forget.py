"""`forget --ids FILE`: delete tweets by id, as X's compliance rules require for tweets deleted upstream:
their items in the table, and their lines in the dead letters (so no redrive can write them back).

One `DeleteItem` per id (`ReturnValues=ALL_OLD`, so each is counted as deleted or already absent), at
most `concurrency` in flight, throttling retried with backoff. Idempotent: forgetting an id twice deletes
it once and counts it `absent` the second time. Ids are read one per line (blank lines and `#` comments
skipped, each id once). Then `scrub_dead_letters` rewrites each dead-letter file or object that holds
one of the ids without those lines (a local file atomically, by a rename; an S3 object by a put of the
same key); the others are left untouched. A stream still running may dead-letter a forgotten tweet after
the scrub: forget is idempotent, run it again before a redrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aioboto3
from botocore.exceptions import ClientError

from sentiment.retry import full_jitter_s
from sentiment.store import split_s3_uri
from stream_svc.dynamodb import THROTTLING_CODES, TRANSIENT_CODES, error_code
from stream_svc.shipper import shipped_dead_letters

log = logging.getLogger(__name__)


@dataclass
class ForgetCounts:
    requested: int = 0
    deleted: int = 0
    absent: int = 0  # not in the table (never written, or forgotten before)
    failed: list[str] = field(default_factory=list)  # ids whose delete still failed: run again for them


def read_ids(handle: IO[str]) -> Iterator[str]:
    """Tweet ids, one per line, each once; blank lines and `#` comments skipped."""
    seen: set[str] = set()
    for line in handle:
        tweet_id = line.split("#", 1)[0].strip()
        if tweet_id and tweet_id not in seen:
            seen.add(tweet_id)
            yield tweet_id


async def forget(
    client: Any, table: str, ids: Iterable[str], concurrency: int = 16, attempts: int = 6
) -> ForgetCounts:
    counts = ForgetCounts()
    slots = asyncio.Semaphore(concurrency)

    async def delete(tweet_id: str) -> None:
        async with slots:
            for attempt in range(1, attempts + 1):
                try:
                    answer = await client.delete_item(
                        TableName=table, Key={"id": {"S": tweet_id}}, ReturnValues="ALL_OLD"
                    )
                except ClientError as exc:
                    code, message = error_code(exc)
                    if (code in THROTTLING_CODES or code in TRANSIENT_CODES) and attempt < attempts:
                        await asyncio.sleep(full_jitter_s(attempt, 0.05, 2.0))
                        continue
                    log.error("forget %s failed: %s: %s", tweet_id, code, message)
                    counts.failed.append(tweet_id)
                    return
                if answer.get("Attributes"):
                    counts.deleted += 1
                else:
                    counts.absent += 1
                return

    tasks: set[asyncio.Task[None]] = set()
    for tweet_id in ids:
        counts.requested += 1
        tasks.add(asyncio.create_task(delete(tweet_id)))
        if len(tasks) >= concurrency * 4:  # bounded: an ids file of millions is never all in memory
            finished, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                task.result()
    await asyncio.gather(*tasks)
    return counts


@dataclass
class ScrubCounts:
    files: int = 0  # dead-letter files or objects read
    rewritten: int = 0  # of which held a forgotten tweet and were written again without it
    removed: int = 0  # lines removed


def without_ids(text: str, ids: Collection[str]) -> tuple[str, int]:
    """`text` (dead-letter lines) less the lines of the tweets in `ids`, and how many went; a line that
    does not parse is kept as it is (it names no tweet)."""
    kept: list[str] = []
    removed = 0
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and str(record.get("id", "")) in ids:
            removed += 1
        else:
            kept.append(line)
    return "".join(kept), removed


def local_dead_letter_files(location: str) -> list[Path]:
    """A folder's `*.jsonl`; for a file, the file and every file beside it named `<stem>.*<suffix>`: its
    closed segments (`DeadLetterFile.segments`) and what redrives failed again (`<stem>.redrive-*`), with
    theirs."""
    path = Path(location)
    if path.is_dir():
        return sorted(path.glob("*.jsonl"))
    found = [path] if path.is_file() else []
    if path.parent.is_dir():
        found += sorted(p for p in path.parent.glob(f"{path.stem}.*{path.suffix}") if p.is_file())
    return found


async def scrub_dead_letters(location: str, ids: Collection[str]) -> ScrubCounts:
    """Remove the tweets `ids` from the dead letters at `location` (s3://bucket/prefix or a local path)."""
    counts = ScrubCounts()
    if location.startswith("s3://"):
        await _scrub_s3(location, ids, counts)
        return counts
    for file in local_dead_letter_files(location):
        text = await asyncio.to_thread(file.read_text, encoding="utf-8")
        counts.files += 1
        kept, removed = without_ids(text, ids)
        if removed:
            await asyncio.to_thread(_replace, file, kept)
            counts.rewritten += 1
            counts.removed += removed
    return counts


def _replace(file: Path, text: str) -> None:
    """Write `text` to `file` by a rename: a reader sees the old file or the new one, never half of it."""
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".scrub")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


async def _scrub_s3(uri: str, ids: Collection[str], counts: ScrubCounts) -> None:
    bucket, _ = split_s3_uri(uri)
    async with aioboto3.Session().client("s3") as s3:
        async for key, text in shipped_dead_letters(s3, uri):
            counts.files += 1
            kept, removed = without_ids(text, ids)
            if removed:
                await s3.put_object(Bucket=bucket, Key=key, Body=kept.encode("utf-8"))
                counts.rewritten += 1
                counts.removed += removed
