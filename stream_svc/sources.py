"""The `Source` protocol: an async iterator of Tweet | Malformed that can be asked to stop.

The sources: `stream_svc.replay.ReplaySource` (a JSONL or Sentiment140 CSV file) and
`stream_svc.x_stream.XStreamSource` (the X API v2 filtered stream). A source never stops on a bad message:
it yields `Malformed(kind)` and goes on. `aclose()` asks it to stop; iteration then ends promptly, and
nothing already yielded is lost. When the consumer abandons iteration instead, `take_buffered()` hands over
what the source had received and not yet yielded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from stream_svc.tweets import SourceEvent


class Source(Protocol):
    """An async iterator of tweets (and malformed-message records) with a way to stop it."""

    def __aiter__(self) -> AsyncIterator[SourceEvent]: ...

    async def aclose(self) -> None:
        """Stop taking in tweets; iteration ends soon after (what was yielded stays yielded)."""
        ...

    @property
    def connected(self) -> bool:
        """Taking in now: the X stream connected, the replay reading (readiness)."""
        ...

    @property
    def failed(self) -> bool:
        """It ended on its own, for `failure`, rather than by `aclose()` or the end of its input."""
        ...

    failure: str  # why it failed; "" while it has not

    def silent_s(self) -> float:
        """Seconds since it last heard anything from upstream (liveness)."""
        ...

    def take_buffered(self) -> list[SourceEvent]:
        """Events received from upstream and not yet yielded, each handed over once: for a consumer
        that abandoned iteration to account for them rather than lose them."""
        ...
