"""Dynamic batching: callers submit items (one or many); one worker runs them in batches on one dedicated thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from sentiment.errors import DeadlineExpired, ModelNotReady, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(ModelNotReady):
    """The batcher is closed (the server is shutting down): UNAVAILABLE, try another replica."""


@dataclass(slots=True)
class _Entry(Generic[T, R]):
    """One submission: its items share one future, resolved with their results in order."""

    items: Sequence[T]
    future: asyncio.Future[list[R]]
    enqueued_at: float  # loop.time()
    deadline: float | None  # time.monotonic(); None = no deadline


class Batcher(Generic[T, R]):
    """Gathers items submitted concurrently into batches for `fn(items) -> results`.

    Contract:
    - `await submit(item)` returns `fn`'s result for that item; `await submit_many(items)` returns one
      result per item, in order. Each submission has one future, resolved exactly once
      (`if not fut.done()` guards every resolution, so a caller that gave up is simply skipped); its
      items are never split between two batches unless they alone exceed `max_batch_size`.
    - A batch is taken when `max_batch_size` items are queued, when as many submissions are queued as
      were active in the last round (the last batch's submissions plus those that queued while it ran:
      callers served together come back together), or when the oldest queued submission has waited
      `max_wait_s`, whichever comes first. So a lone caller pays no batching delay, and callers served
      together are served together again (on one core, the event loop reads their requests meanwhile).
    - `fn` runs on ONE dedicated thread (`self.executor`), one batch at a time, off the event loop, with at
      most `max_batch_size` items a call (a larger submission runs in several calls). It must return
      exactly one result per item, in order; a wrong length fails every submission of the batch with
      RuntimeError, and an exception from `fn` fails every submission of that batch with that exception.
    - Admission is bounded: when more than `max_queued` items would be waiting or running, a submission
      raises Overloaded at once (admitted whole or not at all).
    - A submission whose `deadline` (time.monotonic()) cannot be met is not computed; it fails with
      DeadlineExpired. "Cannot be met" uses `expected_run_s(n)`, the least time a batch of n items takes:
      a submission with less time left than that is refused at once, and one with less time left than
      its batch's expected run when the batch starts is dropped from it.
    - `aclose()` refuses new items (BatcherClosed); with `drain=True` it first runs what is queued,
      otherwise it fails the queued submissions with BatcherClosed. Either way no future is left pending.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        max_wait_s: float,
        max_queued: int | None = None,
        name: str = "batcher",
        expected_run_s: Callable[[int], float] = lambda n: 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._fn = fn
        self.expected_run_s = expected_run_s
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: deque[_Entry[T, R]] = deque()
        self._queued_items = 0
        self._running = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        # Submissions active in the last round; before any round, unknown: wait up to max_wait_s.
        self._companions = max_batch_size

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch now running)."""
        return self._queued_items

    @property
    def in_flight(self) -> int:
        """Items accepted and not yet resolved: queued plus the running batch."""
        return self._queued_items + self._running

    async def submit(self, item: T, deadline: float | None = None) -> R:
        return (await self._enqueue((item,), deadline))[0]

    async def submit_many(self, items: Sequence[T], deadline: float | None = None) -> list[R]:
        return await self._enqueue(items, deadline)

    def _enqueue(self, items: Sequence[T], deadline: float | None) -> asyncio.Future[list[R]]:
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        n = len(items)
        if deadline is not None and deadline - time.monotonic() < self.expected_run_s(n):
            raise DeadlineExpired("the deadline leaves less time than computing the texts takes")
        if self.max_queued is not None and self.in_flight + n > self.max_queued:
            raise Overloaded(
                f"server overloaded: {self.in_flight} texts queued, {n} more would pass the limit "
                f"of {self.max_queued}; retry later"
            )
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = loop.create_task(self._work(), name="batcher-worker")
        future: asyncio.Future[list[R]] = loop.create_future()
        self._queue.append(_Entry(items, future, loop.time(), deadline))
        self._queued_items += n
        # The worker sleeps only while the queue is empty or while it fills a batch.
        queued = len(self._queue)
        if queued == 1 or queued >= self._companions or self._queued_items >= self.max_batch_size:
            self._wake.set()
        return future

    async def aclose(self, drain: bool = True) -> None:
        """Refuse new items; run (drain=True) or fail (drain=False) the queued ones; then stop the worker."""
        self._closed = True
        if not drain:
            self._fail_queued(BatcherClosed("the server is shutting down"))
        self._wake.set()
        if self._worker is not None:
            try:
                await self._worker
            finally:
                self._fail_queued(BatcherClosed("the server is shutting down"))
        self.executor.shutdown(wait=False)

    def _fail_queued(self, exc: Exception) -> None:
        while self._queue:
            future = self._queue.popleft().future
            if not future.done():
                future.set_exception(exc)
        self._queued_items = 0

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill(loop)
            batch = self._take()
            if batch:
                await self._run(batch, loop)
                # Who was served, and who queued meanwhile: the callers of the next round.
                self._companions = max(1, len(batch) + len(self._queue))

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the batch is full, the last round's submissions are back, or the oldest has waited
        max_wait_s."""
        until = self._queue[0].enqueued_at + self.max_wait_s
        while (
            self._queued_items < self.max_batch_size
            and len(self._queue) < self._companions
            and not self._closed
        ):
            remaining = until - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            timer = loop.call_later(remaining, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _take(self) -> list[_Entry[T, R]]:
        """Whole submissions, oldest first, up to max_batch_size items (the first is always taken)."""
        batch: list[_Entry[T, R]] = []
        size = 0
        while self._queue:
            entry = self._queue[0]
            if batch and size + len(entry.items) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_items -= len(entry.items)
            if not entry.future.done():  # its caller was cancelled: nothing to compute
                batch.append(entry)
                size += len(entry.items)
        return batch

    async def _run(self, batch: list[_Entry[T, R]], loop: asyncio.AbstractEventLoop) -> None:
        self._running = sum(len(entry.items) for entry in batch)
        try:
            live, results = await loop.run_in_executor(self.executor, self._call, batch)
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            self._running = 0
        offset = 0
        for entry in live:
            n = len(entry.items)
            if not entry.future.done():
                entry.future.set_result(results[offset : offset + n])
            offset += n
        if len(live) < len(batch):
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(
                        DeadlineExpired("deadline passed before the text was computed")
                    )

    def _call(self, batch: list[_Entry[T, R]]) -> tuple[list[_Entry[T, R]], list[R]]:
        """On the inference thread: drop submissions whose deadline the batch would miss, run fn on the rest."""
        done_at = time.monotonic() + self.expected_run_s(sum(len(e.items) for e in batch))
        live = [e for e in batch if e.deadline is None or e.deadline > done_at]
        items: list[T] = []
        for entry in live:
            items.extend(entry.items)
        results: list[R] = []
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start : start + self.max_batch_size]
            out = self._fn(chunk)
            if len(out) != len(chunk):
                raise RuntimeError(f"batch function returned {len(out)} results for {len(chunk)} items")
            results.extend(out)
        return live, results
