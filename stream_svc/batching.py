"""Taking batches off a pipeline queue: `take_batch`, and the `END` marker that closes a queue's stream."""

from __future__ import annotations

import asyncio
import enum
from typing import TypeVar

T = TypeVar("T")


class EndOfStream(enum.Enum):
    """The type of `END`: put once per consumer, after the last entry, to end that consumer's loop."""

    END = "end"


END = EndOfStream.END


async def take_batch(
    queue: asyncio.Queue[T | EndOfStream], max_items: int, max_wait_s: float
) -> tuple[list[T], bool]:
    """Wait for an entry, then take more until there are `max_items`, `END` is taken, or `max_wait_s` has
    passed since the first: returns (batch, ended).

    `ended` is True once `END` was taken (it is not in the batch, which may then be empty); the caller
    stops taking. With `max_wait_s` 0 the batch is the first entry and whatever is queued behind it.
    """
    first = await queue.get()
    if isinstance(first, EndOfStream):
        return [], True
    batch = [first]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while len(batch) < max_items:
        try:
            entry = queue.get_nowait()
        except asyncio.QueueEmpty:
            if loop.time() >= deadline:
                break
            try:
                async with asyncio.timeout_at(deadline):
                    entry = await queue.get()
            except TimeoutError:
                break
        if isinstance(entry, EndOfStream):
            return batch, True
        batch.append(entry)
    return batch, False
