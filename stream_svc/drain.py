"""What a stopping pipeline still owes: the tweets it accepted but has not finished, and when to give up.

The pipeline registers each tweet it accepts in `Unfinished`, replaces the entry once the tweet is
predicted, and discards it once written or dead-lettered. When the drain is abandoned (`Abandon`: its
deadline passed, or the table refused the credentials) the workers are cancelled and `Unfinished.take()`
hands back exactly the tweets that would otherwise be lost, wherever they were: in a queue, in a
PredictBatch or in a write in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Unfinished(Generic[T]):
    """Entries by sequence number, in the order accepted; every method is O(1) but `take`."""

    def __init__(self) -> None:
        self._entries: dict[int, T] = {}
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: T) -> int:
        """Register an accepted tweet; returns the sequence number that names it from now on."""
        seq = self._next_seq
        self._next_seq += 1
        self._entries[seq] = entry
        return seq

    def replace(self, seq: int, entry: T) -> None:
        """The tweet moved on (predicted): what it is owed as changes, the debt does not."""
        self._entries[seq] = entry

    def discard(self, seq: int) -> None:
        """Written or dead-lettered: nothing more is owed for it (a second discard is a no-op)."""
        self._entries.pop(seq, None)

    def take(self) -> list[T]:
        """Everything still owed, oldest first; the registry is left empty."""
        entries = list(self._entries.values())
        self._entries.clear()
        return entries


class Abandon:
    """A one-shot trigger that abandons the drain; the first reason (and error, for a fatal one) wins.

    `after(delay_s, reason)` arms a deadline on the running loop; `now(reason, error)` fires at once.
    `wait()` returns once fired; `disarm()` cancels a pending deadline.
    """

    def __init__(self) -> None:
        self._fired = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.reason = ""
        self.label = ""
        self.error: Exception | None = None

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def now(self, label: str, reason: str, error: Exception | None = None) -> None:
        """Abandon the drain: `label` names the cause for metrics, `reason` goes to each dead letter."""
        if self._fired.is_set():
            return
        self.label, self.reason, self.error = label, reason, error
        self._fired.set()
        self.disarm()

    def after(self, delay_s: float, label: str, reason: str) -> None:
        """Abandon in `delay_s` unless it happens sooner; a second deadline never moves the first."""
        if self._timer is None and not self.fired:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self.now, label, reason)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    async def wait(self) -> None:
        await self._fired.wait()


async def drain_or_abandon(
    drain: asyncio.Task[None], workers: Sequence[asyncio.Task[Any]], abandon: Abandon
) -> None:
    """Wait until `drain` is done or `abandon` fires, whichever comes first (a pending deadline is then
    disarmed). Once `abandon` has fired, `drain` and every worker are cancelled and waited for; their
    errors are not raised, `drain`'s are the caller's when it was not abandoned."""
    fired = asyncio.ensure_future(abandon.wait())
    try:
        await asyncio.wait([drain, fired], return_when=asyncio.FIRST_COMPLETED)
    finally:
        fired.cancel()
        abandon.disarm()
    if abandon.fired:
        tasks = [drain, *workers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
