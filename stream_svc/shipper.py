"""Durable dead letters: closed segments of the local dead-letter file shipped to `s3://bucket/prefix`.

The pipeline writes dead letters to a local spool file (`DeadLetterFile`, synchronous and flushed, so a
failure is recorded the moment it happens); the shipper uploads each segment once it rolls over (by
time or size) and deletes the local copy only after S3 took it. At start it ships what an earlier
process left (a restarted container keeps its emptyDir); `aclose()` rolls the file and ships everything
before the program exits, retrying for `close_timeout_s`: that is how the tweets dead-lettered at the
GRACE_S deadline reach S3. A segment S3 still refuses stays on disk, named in an ERROR line.
`shipped_dead_letters` reads them back (for `redrive` and `forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

from sentiment.errors import TooLarge
from sentiment.retry import full_jitter_s
from sentiment.store import S3Store, split_s3_uri
from stream_svc.config import StreamConfig
from stream_svc.deadletter import DeadLetterFile
from stream_svc.metrics import StreamMetrics

log = logging.getLogger(__name__)

# The most of one dead-letter object read back into memory (segments roll over at DEAD_LETTER_ROLL_MB, 64).
MAX_SEGMENT_BYTES = 1 << 30


async def shipped_dead_letters(s3: Any, uri: str) -> AsyncIterator[tuple[str, str]]:
    """(key, text) of every object under `uri` (s3://bucket/key-or-prefix), in key order, through the
    aioboto3 S3 client `s3`; an object listed larger than MAX_SEGMENT_BYTES raises TooLarge, unread."""
    bucket, prefix = split_s3_uri(uri)
    sizes: dict[str, int] = {}
    async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes.update((obj["Key"], int(obj["Size"])) for obj in page.get("Contents", []))
    for key in sorted(sizes):
        if sizes[key] > MAX_SEGMENT_BYTES:
            raise TooLarge(f"s3://{bucket}/{key} is larger than {MAX_SEGMENT_BYTES:,} bytes")
        answer = await s3.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            yield key, (await body.read()).decode("utf-8")


class DeadLetterShipper:
    """Ships `spool`'s closed segments to `store` as `<segment stem>.<host>.jsonl` (host: the pod name)."""

    def __init__(
        self,
        spool: DeadLetterFile,
        store: S3Store,
        metrics: StreamMetrics | None = None,
        poll_s: float = 5.0,
        close_timeout_s: float = 15.0,
    ) -> None:
        self.spool = spool
        self.store = store
        self.metrics = metrics or StreamMetrics()
        self.poll_s = poll_s
        self.close_timeout_s = close_timeout_s
        self.shipped: list[str] = []  # keys written, in order
        self._host = socket.gethostname() or "host"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        spool.on_roll = lambda _segment: self._wake.set()

    @classmethod
    async def open(
        cls, uri: str, spool: DeadLetterFile, metrics: StreamMetrics | None = None
    ) -> DeadLetterShipper:
        """A shipper to `uri` with its own S3 client, running: what an earlier process left is shipped."""
        shipper = cls(spool, await S3Store.open(uri), metrics)
        spool.roll()  # a file left by an earlier process is a closed segment now
        await shipper.ship_pending()
        shipper._task = asyncio.create_task(shipper._run())
        return shipper

    async def ship_pending(self) -> int:
        """Upload every closed segment (oldest first), deleting each once stored; returns how many
        remain (those S3 refused this time: they are tried again)."""
        left = 0
        for segment in self.spool.segments():
            key = f"{segment.stem}.{self._host}{segment.suffix}"
            try:
                await self.store.put_bytes(key, await asyncio.to_thread(segment.read_bytes))
            except Exception as exc:
                left += 1
                self.metrics.dead_letter_ship_errors.inc()
                log.warning("dead-letter segment %s not shipped yet: %s", segment.name, exc)
                continue
            segment.unlink()
            self.shipped.append(key)
            self.metrics.dead_letter_files_shipped.inc()
        return left

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            self.spool.roll_if_due()
            await self.ship_pending()

    async def aclose(self) -> None:
        """Stop the loop, roll the spool file and ship every segment, retrying for `close_timeout_s`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.spool.roll()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout_s
        attempt = 0
        while (left := await self.ship_pending()) and loop.time() < deadline:
            attempt += 1
            await asyncio.sleep(min(full_jitter_s(attempt, 0.2, 2.0), max(0.0, deadline - loop.time())))
        if left:
            names = ", ".join(p.name for p in self.spool.segments())
            log.error(
                "%d dead-letter segments could not be shipped to %s; they stay in %s: %s",
                left,
                self.store.uri,
                Path(self.spool.path).parent,
                names,
            )
        await self.store.aclose()


async def open_dead_letters(
    config: StreamConfig, stack: AsyncExitStack, metrics: StreamMetrics, path: str | Path | None = None
) -> DeadLetterFile:
    """The dead-letter file of `config` (at `path` instead of DEAD_LETTER_PATH when given), entered on
    `stack`: with an s3:// DEAD_LETTER_URI its shipper is running and ships everything as the stack closes."""
    spool = DeadLetterFile(
        path or config.dead_letter_path,
        roll_s=config.dead_letter_roll_s,
        roll_bytes=int(config.dead_letter_roll_mb * 2**20),
    )
    if config.dead_letters_to_s3:
        shipper = await DeadLetterShipper.open(config.dead_letter_uri, spool, metrics)
        stack.push_async_callback(shipper.aclose)
    else:
        stack.enter_context(closing(spool))
    return spool
