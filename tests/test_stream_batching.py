"""`take_batch`: up to N entries off a queue, ending at the END marker or a deadline after the first."""

from __future__ import annotations

import asyncio
import time

from stream_svc.batching import END, EndOfStream, take_batch


def queue_of(*entries: int | EndOfStream) -> asyncio.Queue[int | EndOfStream]:
    queue: asyncio.Queue[int | EndOfStream] = asyncio.Queue()
    for entry in entries:
        queue.put_nowait(entry)
    return queue


async def test_takes_at_most_max_items_and_leaves_the_rest() -> None:
    queue = queue_of(1, 2, 3, 4, 5)
    assert await take_batch(queue, max_items=3, max_wait_s=10) == ([1, 2, 3], False)
    assert queue.qsize() == 2


async def test_end_closes_the_batch_and_is_taken_with_it() -> None:
    queue = queue_of(1, 2, END, 3)
    assert await take_batch(queue, max_items=10, max_wait_s=10) == ([1, 2], True)
    assert queue.get_nowait() == 3  # what follows the marker is another consumer's
    assert await take_batch(queue_of(END, 1), max_items=10, max_wait_s=10) == ([], True)


async def test_waits_for_the_first_entry_however_long_it_takes() -> None:
    queue = queue_of()
    taking = asyncio.ensure_future(take_batch(queue, max_items=5, max_wait_s=0))
    done, _ = await asyncio.wait([taking], timeout=0.05)
    assert not done
    queue.put_nowait(7)
    assert await asyncio.wait_for(taking, 5) == ([7], False)


async def test_a_batch_that_fills_before_the_deadline_goes_at_once() -> None:
    queue = queue_of(1)
    taking = asyncio.ensure_future(take_batch(queue, max_items=2, max_wait_s=30))
    done, _ = await asyncio.wait([taking], timeout=0.05)
    assert not done, "one entry of two, and the deadline is far: it waits"
    queue.put_nowait(2)
    assert await asyncio.wait_for(taking, 5) == ([1, 2], False)


async def test_the_deadline_counts_from_the_first_entry() -> None:
    queue = queue_of(1)
    started = time.monotonic()
    assert await asyncio.wait_for(take_batch(queue, max_items=10, max_wait_s=0.05), 5) == ([1], False)
    assert time.monotonic() - started >= 0.05


async def test_no_wait_takes_only_what_is_queued_already() -> None:
    queue = queue_of(1, 2)
    assert await asyncio.wait_for(take_batch(queue, max_items=10, max_wait_s=0), 1) == ([1, 2], False)
