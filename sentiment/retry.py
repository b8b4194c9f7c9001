"""The one backoff policy of this project: exponential, capped, with full jitter (AWS's "full jitter")."""

from __future__ import annotations

import random


def full_jitter_s(attempt: int, initial_s: float, max_s: float, multiplier: float = 2.0) -> float:
    """Seconds to wait before retry number `attempt` (1-based): uniform in
    [0, min(max_s, initial_s * multiplier ** (attempt - 1))], so retrying callers spread out."""
    return random.uniform(0.0, min(max_s, initial_s * multiplier ** max(attempt - 1, 0)))
