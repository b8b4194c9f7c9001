"""`forget --ids FILE`: delete items by tweet id, as X's compliance rules require for tweets deleted upstream.

One `DeleteItem` per id (`ReturnValues=ALL_OLD`, so each is counted as deleted or already absent), at
most `concurrency` in flight, throttling retried with backoff. Idempotent: forgetting an id twice deletes
it once and counts it `absent` the second time. Ids are read one per line (blank lines and `#` comments
skipped, each id once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from botocore.exceptions import ClientError

from sentiment.retry import full_jitter_s
from stream_svc.dynamodb import THROTTLING_CODES, TRANSIENT_CODES, error_code

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
