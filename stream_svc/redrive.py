"""`redrive <file|folder|s3://bucket/prefix>`: dead-lettered tweets sent back through Predict and the sink.

`DeadLetterSource` reads dead-letter lines (`stream_svc.deadletter`, either stage) as tweets, each tweet id
once (a tweet dead-lettered twice is redriven once: counted in `duplicates`), and feeds the same
`Pipeline` as `run`: so a redriven tweet is cleaned, predicted by the current model, keyed in time and
written like any other, idempotently by id, and the counters balance the same way. What fails again
is dead-lettered to a new file of its own beside DEAD_LETTER_PATH (`<stem>.redrive-<stamp>.jsonl`, shipped
like the others when DEAD_LETTER_URI is s3://), never appended to what is being read. The input is only
read: an interrupted redrive can be run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aioboto3

from sentiment.store import split_s3_uri
from stream_svc.config import StreamConfig
from stream_svc.counters import Counters
from stream_svc.deadletter import parse_dead_letter
from stream_svc.metrics import StreamMetrics
from stream_svc.shipper import shipped_dead_letters
from stream_svc.tweets import SourceEvent, Tweet
from stream_svc.wiring import open_pipeline


class DeadLetterSource:
    """The tweets of dead-letter files, each id once: `location` is a file, a folder (its `*.jsonl`, in
    name order) or `s3://bucket/key-or-prefix` (every object under it, in key order)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.files: list[str] = []  # what was read, in order
        self.duplicates = 0
        self._seen: set[str] = set()
        self._stopped = asyncio.Event()
        # The Source contract's health: a batch job, always "connected", never stalled or failed here
        # (a read error is raised to the caller).
        self.connected = True
        self.failure = ""

    @property
    def failed(self) -> bool:
        return False

    def silent_s(self) -> float:
        return 0.0

    async def __aiter__(self) -> AsyncIterator[SourceEvent]:
        async for name, text in self._contents():
            self.files.append(name)
            for line in text.splitlines():
                if self._stopped.is_set():
                    return
                if not line.strip():
                    continue
                event = parse_dead_letter(line)
                if isinstance(event, Tweet):
                    if event.id in self._seen:
                        self.duplicates += 1
                        continue
                    self._seen.add(event.id)
                yield event

    async def _contents(self) -> AsyncIterator[tuple[str, str]]:
        if self.location.startswith("s3://"):
            async for entry in _s3_objects(self.location):
                yield entry
            return
        path = Path(self.location)
        if not path.exists():
            raise FileNotFoundError(f"no dead-letter file or folder at {path}")
        for file in sorted(path.glob("*.jsonl")) if path.is_dir() else [path]:
            yield str(file), await asyncio.to_thread(file.read_text, encoding="utf-8")

    async def aclose(self) -> None:
        self._stopped.set()

    def take_buffered(self) -> list[SourceEvent]:
        """None: what was not yielded is still in the files."""
        return []


async def _s3_objects(uri: str) -> AsyncIterator[tuple[str, str]]:
    bucket, _ = split_s3_uri(uri)
    found = False
    async with aioboto3.Session().client("s3") as s3:
        async for key, text in shipped_dead_letters(s3, uri):
            found = True
            yield f"s3://{bucket}/{key}", text
    if not found:
        raise FileNotFoundError(f"no dead-letter objects under {uri}")


@dataclass(frozen=True)
class RedriveResult:
    counters: Counters
    files: list[str]
    duplicates: int
    failed_to: str  # where what failed again was dead-lettered


def failures_path(config: StreamConfig) -> Path:
    """A new file beside DEAD_LETTER_PATH for what a redrive fails again."""
    spool = Path(config.dead_letter_path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return spool.with_name(f"{spool.stem}.redrive-{stamp}{spool.suffix}")


async def redrive(config: StreamConfig, location: str) -> RedriveResult:
    """Run the dead letters at `location` through Predict and the sink (no metrics endpoint: a redrive
    can run beside the stream)."""
    source = DeadLetterSource(location)
    metrics = StreamMetrics()
    failed_to = failures_path(config)
    async with AsyncExitStack() as stack:
        pipeline = await open_pipeline(config, source, metrics, stack, dead_letter_path=failed_to)
        counters = await pipeline.run()
    where = config.dead_letter_uri if config.dead_letters_to_s3 else str(failed_to)
    return RedriveResult(counters, source.files, source.duplicates, where)
