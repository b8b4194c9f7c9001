"""The replay source: tweets from a file (JSONL of X API v2 stream messages, or a Sentiment140 CSV)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterator
from itertools import islice
from pathlib import Path

from sentiment.dataset import iter_tweets, parse_twitter_date
from stream_svc.tweets import Malformed, SourceEvent, Tweet, parse_message

_READ_CHUNK = 512  # lines a replay file hands over per trip to its reader thread


class ReplaySource:
    """Tweets from a file: JSONL of X API v2 stream messages, or a Sentiment140 CSV (.csv / .csv.gz).

    `rate` > 0 paces the replay at that many tweets per second; 0 goes as fast as the consumer takes them.
    The file is read in chunks in a worker thread, so a large or gzipped file never blocks the event loop.

    It reports like the X source: `connected` while it is reading, `done` once the file has ended, and
    `failure` (with `failed`) when the file could not be read to its end; then the iteration ends after
    the events read before the error, and the run exits 1 naming the cause.
    """

    def __init__(self, path: str | Path, rate: float = 0.0) -> None:
        self.path = Path(path)
        self.rate = rate
        self.connected = False
        self.done = False
        self.failure = ""
        self._last_yield = time.monotonic()
        self._stopped = asyncio.Event()

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    def silent_s(self) -> float:
        """Seconds since the last event was handed over (or since the source was made)."""
        return time.monotonic() - self._last_yield

    def _events(self) -> Generator[SourceEvent, None, None]:
        name = self.path.name.lower()
        if name.endswith((".csv", ".csv.gz")):
            for row in iter_tweets(self.path):
                if not row.id:  # the table is keyed by id
                    yield Malformed("no_id", row.text[:120])
                    continue
                yield Tweet(id=row.id, user=row.user, text=row.text, date=parse_twitter_date(row.date))
            return
        with self.path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield parse_message(line)

    async def __aiter__(self) -> AsyncIterator[SourceEvent]:
        events = self._events()
        started = time.monotonic()
        sent = 0
        self.connected = True
        try:
            while not self._stopped.is_set():
                chunk, error = await asyncio.to_thread(_take, events, _READ_CHUNK)
                if not chunk and error is None:
                    self.done = True
                    return
                for event in chunk:  # what was read before an error still goes through
                    if self._stopped.is_set():
                        return
                    if self.rate > 0:
                        delay = started + sent / self.rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    sent += 1
                    self._last_yield = time.monotonic()
                    yield event
                if error is not None:  # ends the stream as a failed X connection does: the run says why
                    self.failure = f"cannot read {self.path.name}: {error}"
                    return
        finally:
            self.connected = False
            events.close()

    async def aclose(self) -> None:
        self._stopped.set()

    def take_buffered(self) -> list[SourceEvent]:
        """None: what was not yielded is still in the file."""
        return []


def _take(events: Iterator[SourceEvent], n: int) -> tuple[list[SourceEvent], Exception | None]:
    """Up to `n` events, and the error that cut the read short (the events before it are kept)."""
    chunk: list[SourceEvent] = []
    try:
        chunk.extend(islice(events, n))
    except Exception as exc:
        return chunk, exc
    return chunk, None
