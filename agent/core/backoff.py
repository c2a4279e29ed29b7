"""Capped exponential backoff with full jitter.

Thousands of devices losing the controller at once must not come back in lock-step: each delay is
drawn uniformly from [0, min(cap, base * 2**attempt)] (the "full jitter" scheme), and a server's
retry-after, when given, is a floor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 32)))
        drawn = rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > drawn:
            return min(retry_after, self.cap_s * 4)
        return drawn
