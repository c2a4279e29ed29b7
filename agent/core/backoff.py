"""Capped exponential backoff with full jitter.

Thousands of devices losing the controller at once must not come back in lock-step: each delay is
drawn uniformly from [0, min(cap, base * 2**attempt)] (the "full jitter" scheme). A server's
retry-after, when given, is a floor that the jitter is added on top of: a controller shedding load
tells every device the same retry-after, and without jitter they would all return at that instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: A retry-after is honoured up to this many times the cap (a bound against absurd server values).
RETRY_AFTER_CAP_FACTOR = 4


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 32)))
        jitter = rng.uniform(0.0, ceiling)
        if retry_after is None or retry_after <= 0:
            return jitter
        return min(retry_after, self.cap_s * RETRY_AFTER_CAP_FACTOR) + jitter
