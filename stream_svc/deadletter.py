"""The dead-letter file: one JSON object per tweet that could not be predicted or written, with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from sentiment.timefmt import utc_iso


class DeadLetterFile:
    """Appends `{"id", "stage", "reason", "at", "record"}` lines, flushed after each call to `add`.

    The file is opened on the first `add`; `close()` closes it (safe twice, and when never opened).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None

    def add(self, stage: str, entries: list[tuple[dict[str, Any], str]]) -> None:
        """Record each (record, reason); `record` must hold the tweet's `id`."""
        if not entries:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        at = utc_iso()
        for record, reason in entries:
            line = {"id": record.get("id"), "stage": stage, "reason": reason, "at": at, "record": record}
            self._handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
