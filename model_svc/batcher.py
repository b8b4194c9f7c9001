"""Dynamic batching: callers submit one item each; one worker runs them in batches on one dedicated thread."""

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

GAP_SMOOTHING = 0.2  # weight of the newest gap in the moving average

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(ModelNotReady):
    """The batcher is closed (the server is shutting down): UNAVAILABLE, try another replica."""


@dataclass(slots=True)
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued_at: float  # loop.time()
    deadline: float | None  # time.monotonic(); None = no deadline


class Batcher(Generic[T, R]):
    """Gathers items submitted concurrently into batches for `fn(items) -> results`.

    Contract:
    - `await submit(item)` returns `fn`'s result for that item; `await submit_many(items)` returns one
      result per item, in order. Every item has its own future, resolved exactly once
      (`if not fut.done()` guards every resolution, so a caller that gave up is simply skipped).
    - A batch is taken when `max_batch_size` items are queued or when the oldest queued item has waited
      `max_wait_s`, whichever comes first; items queued while a batch runs form the next batch at once.
      When submissions arrive further apart than `max_wait_s` on average (a moving average of the gaps),
      waiting would gather nobody, so the batch is taken at once: a lone caller pays no batching delay.
    - `fn` runs on ONE dedicated thread (`self.executor`), one batch at a time, off the event loop. It must
      return exactly one result per item, in order; a wrong length fails every item of the batch with
      RuntimeError, and an exception from `fn` fails every item of that batch with that exception.
    - Admission is bounded: when more than `max_queued` items would be waiting or running, `submit` raises
      Overloaded at once (a batch of items is admitted whole or not at all).
    - An item whose `deadline` (time.monotonic()) cannot be met is not computed; its future fails with
      DeadlineExpired. "Cannot be met" uses `expected_run_s(n)`, the least time a batch of n items takes:
      a submission with less time left than that is refused at once, and an item with less time left than
      its batch's expected run when the batch starts is dropped from it.
    - `aclose()` refuses new items (BatcherClosed); with `drain=True` it first runs what is queued,
      otherwise it fails the queued items with BatcherClosed. Either way no future is left pending.
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
        self._running = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._last_arrival = 0.0
        self._mean_gap_s = 0.0  # moving average of the time between submissions

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch now running)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items accepted and not yet resolved: queued plus the running batch."""
        return len(self._queue) + self._running

    async def submit(self, item: T, deadline: float | None = None) -> R:
        (future,) = self._enqueue([item], deadline)
        return await future

    async def submit_many(self, items: Sequence[T], deadline: float | None = None) -> list[R]:
        futures = self._enqueue(items, deadline)
        return list(await asyncio.gather(*futures))

    def _enqueue(self, items: Sequence[T], deadline: float | None) -> list[asyncio.Future[R]]:
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if deadline is not None and deadline - time.monotonic() < self.expected_run_s(len(items)):
            raise DeadlineExpired("the deadline leaves less time than computing the texts takes")
        if self.max_queued is not None and self.in_flight + len(items) > self.max_queued:
            raise Overloaded(
                f"server overloaded: {self.in_flight} texts queued, {len(items)} more would pass the limit "
                f"of {self.max_queued}; retry later"
            )
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = loop.create_task(self._work(), name="batcher-worker")
        was_empty = not self._queue
        now = loop.time()
        if self._last_arrival:
            self._mean_gap_s += GAP_SMOOTHING * (now - self._last_arrival - self._mean_gap_s)
        self._last_arrival = now
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._queue.append(_Entry(item, future, now, deadline))
            futures.append(future)
        # The worker sleeps only while the queue is empty or while it fills a batch.
        if was_empty or len(self._queue) >= self.max_batch_size:
            self._wake.set()
        return futures

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

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the batch is full or its oldest item has waited max_wait_s."""
        if self._mean_gap_s > self.max_wait_s:
            return
        until = self._queue[0].enqueued_at + self.max_wait_s
        while len(self._queue) < self.max_batch_size and not self._closed:
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
        batch: list[_Entry[T, R]] = []
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if not entry.future.done():  # its caller was cancelled: nothing to compute
                batch.append(entry)
        return batch

    async def _run(self, batch: list[_Entry[T, R]], loop: asyncio.AbstractEventLoop) -> None:
        self._running = len(batch)
        try:
            live, results = await loop.run_in_executor(self.executor, self._call, batch)
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            self._running = 0
        for entry, result in zip(live, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        if len(live) < len(batch):
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(
                        DeadlineExpired("deadline passed before the text was computed")
                    )

    def _call(self, batch: list[_Entry[T, R]]) -> tuple[list[_Entry[T, R]], Sequence[R]]:
        """On the inference thread: drop items whose deadline the batch would miss, run fn on the rest."""
        done_at = time.monotonic() + self.expected_run_s(len(batch))
        live = [e for e in batch if e.deadline is None or e.deadline > done_at]
        if not live:
            return live, []
        results = self._fn([e.item for e in live])
        if len(results) != len(live):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        return live, results
