"""The dead-letter file: one JSON object per tweet that could not be predicted or written, with the reason.

A line is `{"id", "stage", "reason", "at", "record"}`: `record` is what the tweet was when it failed (its
tweet attributes at the `predict` stage, the whole item at `write`). `parse_dead_letter` reads a line
back as the tweet, for `redrive`. The file rolls over (`roll_s`, `roll_bytes`) to a closed segment beside
it, `<stem>.<UTC stamp>.jsonl`; `stream_svc.shipper` ships closed segments to S3.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sentiment.timefmt import utc_iso
from stream_svc.tweets import Malformed, SourceEvent, Tweet

_STAMP = r"\d{8}T\d{6}\.\d{6}Z"


class DeadLetterFile:
    """Appends `{"id", "stage", "reason", "at", "record"}` lines to `path`, flushed after each call to `add`.

    The file is opened on the first `add`. With `roll_s` / `roll_bytes` (0: never), an `add` that finds it
    older or larger than that first closes it (fsync'ed) as a segment beside it and calls `on_roll` with
    the segment's path. `close()` fsyncs and closes it (safe twice, and when never opened); `roll()`
    closes the file as a segment now.
    """

    def __init__(
        self,
        path: str | Path,
        roll_s: float = 0.0,
        roll_bytes: int = 0,
        on_roll: Callable[[Path], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.roll_s = roll_s
        self.roll_bytes = roll_bytes
        self.on_roll = on_roll
        self.written = 0  # lines written by this instance
        self._handle: IO[str] | None = None
        self._opened_at = 0.0

    def add(self, stage: str, entries: list[tuple[dict[str, Any], str]]) -> None:
        """Record each (record, reason); `record` must hold the tweet's `id`."""
        if not entries:
            return
        self.roll_if_due()
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
            self._opened_at = time.monotonic()
        at = utc_iso()
        for record, reason in entries:
            line = {"id": record.get("id"), "stage": stage, "reason": reason, "at": at, "record": record}
            self._handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()
        self.written += len(entries)

    def roll_if_due(self) -> Path | None:
        if self._handle is None:
            return None
        aged = self.roll_s > 0 and time.monotonic() - self._opened_at >= self.roll_s
        grown = self.roll_bytes > 0 and self._handle.tell() >= self.roll_bytes
        return self.roll() if aged or grown else None

    def roll(self) -> Path | None:
        """Close the file as a segment `<stem>.<stamp>.jsonl` (also a file left by an earlier process);
        None when there is nothing in it."""
        self.close()
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        segment = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
        self.path.rename(segment)
        _fsync_dir(self.path.parent)
        if self.on_roll is not None:
            self.on_roll(segment)
        return segment

    def segments(self) -> list[Path]:
        """The closed segments beside the file, oldest first."""
        pattern = re.compile(rf"^{re.escape(self.path.stem)}\.{_STAMP}{re.escape(self.path.suffix)}$")
        if not self.path.parent.is_dir():
            return []
        return sorted(p for p in self.path.parent.iterdir() if pattern.match(p.name))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def parse_dead_letter(line: str | bytes) -> SourceEvent:
    """A dead-letter line as the tweet it holds (either stage); Malformed when it is not one."""
    try:
        letter = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return Malformed("invalid_json", str(line)[:120])
    record = letter.get("record") if isinstance(letter, dict) else None
    if not isinstance(record, dict):
        return Malformed("not_a_dead_letter", str(line)[:120])
    tweet_id, text = record.get("id"), record.get("twitter_raw")
    if not isinstance(tweet_id, str) or not tweet_id or not isinstance(text, str) or not text:
        return Malformed("not_a_dead_letter", f"record without id or twitter_raw: {str(line)[:120]}")
    return Tweet(id=tweet_id, user=str(record.get("user", "")), text=text, date=str(record.get("data", "")))
