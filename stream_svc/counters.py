"""The run's own tally, which the summary line prints: every received tweet is written, dead-lettered or skipped."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counters:
    received: int = 0
    predicted: int = 0
    written: int = 0
    dead_lettered: int = 0
    skipped_empty: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    predict_retries: int = 0
    write_retries: int = 0
    write_requests: int = 0
    abandoned: int = 0  # dead-lettered unfinished when the drain was abandoned (part of dead_lettered)

    def balanced(self) -> bool:
        """Every received tweet is accounted for."""
        return self.received == self.written + self.dead_lettered + self.skipped_empty

    def summary(self) -> str:
        malformed = sum(self.malformed.values())
        return (
            f"received={self.received} written={self.written} dead_lettered={self.dead_lettered} "
            f"skipped_empty={self.skipped_empty} malformed={malformed} predicted={self.predicted} "
            f"predict_retries={self.predict_retries} write_retries={self.write_retries} "
            f"write_requests={self.write_requests} abandoned={self.abandoned} balanced={self.balanced()}"
        )
