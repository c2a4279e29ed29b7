"""How long a batch of ``n`` rows takes to run: ``per_call_s + per_row_s * n``, learned as it serves.

A batcher needs this to tell a caller, before queueing it, whether its deadline can be met. The two
parameters are a least-squares line through exponentially weighted moments of the measured batches
(an EWMA regression), so the estimate follows a model that slows down under load, and recent batches
count most. The line always passes through the weighted mean (rows, seconds), so batches of the size
being served are predicted well even when the split between per-call and per-row cost is not known.

That split needs batches of different sizes. While the sizes seen are (nearly) all the same, the
slope keeps the last value it had when they were not, or the prior's; with neither, all the cost is
taken as per-row, which over-estimates larger batches: the safe side for refusing deadlines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.errors import InvalidArgument

#: Below this weighted variance of batch sizes (rows squared) the slope is not re-fitted: the sizes
#: seen are too alike to separate per-call from per-row cost, and the fit would be noise over noise.
MIN_ROWS_VARIANCE = 1.0


@dataclass(frozen=True, slots=True)
class ComputeCost:
    """Seconds per call plus seconds per row; e.g. from a segment's profile at batch 1 and 32."""

    per_call_s: float
    per_row_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_call_s) and math.isfinite(self.per_row_s)):
            raise InvalidArgument(f"compute cost must be finite, got {self.per_call_s}, {self.per_row_s}")
        if self.per_call_s < 0 or self.per_row_s < 0:
            raise InvalidArgument(f"compute cost must be >= 0, got {self.per_call_s}, {self.per_row_s}")

    def batch_s(self, rows: int) -> float:
        """Expected seconds to run one batch of ``rows`` rows (0 for no rows)."""
        return self.per_call_s + self.per_row_s * rows if rows > 0 else 0.0

    def rows_s(self, rows: int, max_batch_size: int) -> float:
        """Expected seconds to run ``rows`` rows in as few batches of at most ``max_batch_size``."""
        if rows <= 0:
            return 0.0
        batches = -(-rows // max(max_batch_size, 1))
        return self.per_call_s * batches + self.per_row_s * rows

    @classmethod
    def from_two_points(cls, rows_a: int, seconds_a: float, rows_b: int, seconds_b: float) -> ComputeCost:
        """The line through two measured batch sizes (e.g. a profile's batch 1 and batch 32),
        clamped to non-negative parameters."""
        if rows_a == rows_b:
            return cls(0.0, max(seconds_a, 0.0) / max(rows_a, 1))
        slope = max((seconds_b - seconds_a) / (rows_b - rows_a), 0.0)
        intercept = seconds_a - slope * rows_a
        if intercept < 0:
            return cls(0.0, max(seconds_a, seconds_b, 0.0) / max(rows_a, rows_b, 1))
        return cls(intercept, slope)


class CostEstimator:
    """EWMA regression of batch compute time on batch rows. Not thread-safe (one owner: a batcher)."""

    def __init__(self, *, alpha: float = 0.2, prior: ComputeCost | None = None, prior_rows: int = 32) -> None:
        if not 0.0 < alpha <= 1.0:
            raise InvalidArgument(f"alpha must be within (0, 1], got {alpha}")
        self._alpha = alpha
        self._seen = False
        # Weighted moments: E[n], E[t], E[n^2], E[n t].
        self._n = self._t = self._nn = self._nt = 0.0
        self._slope: float | None = None
        self._cost: ComputeCost | None = None  # ``cost``, made once per change: it is read per request
        self.batches = 0  # measured batches observed (the prior does not count)
        if prior is not None:
            # The prior stands for two batches, at 1 row and at ``prior_rows``, as a profile measures.
            big = max(prior_rows, 2)
            t1, tb = prior.batch_s(1), prior.batch_s(big)
            self._n, self._t = (1 + big) / 2, (t1 + tb) / 2
            self._nn, self._nt = (1 + big * big) / 2, (t1 + big * tb) / 2
            self._slope = prior.per_row_s
            self._seen = True

    def observe(self, rows: int, seconds: float) -> None:
        """Fold in one measured batch (ignored when rows < 1 or the time is not a finite >= 0)."""
        if rows < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        self.batches += 1
        n, t = float(rows), seconds
        if not self._seen:
            self._n, self._t, self._nn, self._nt = n, t, n * n, n * t
            self._seen = True
        else:
            a = self._alpha
            self._n += a * (n - self._n)
            self._t += a * (t - self._t)
            self._nn += a * (n * n - self._nn)
            self._nt += a * (n * t - self._nt)
        variance = self._nn - self._n * self._n
        if variance >= MIN_ROWS_VARIANCE:
            self._slope = (self._nt - self._n * self._t) / variance
        self._cost = None

    @property
    def cost(self) -> ComputeCost | None:
        """The current estimate, or None before the first batch (and without a prior)."""
        if self._cost is None and self._seen:
            self._cost = self._fit()
        return self._cost

    def _fit(self) -> ComputeCost:
        mean_n, mean_t = max(self._n, 1e-9), max(self._t, 0.0)
        slope = mean_t / mean_n if self._slope is None else max(self._slope, 0.0)
        intercept = mean_t - slope * mean_n
        if intercept < 0:
            intercept, slope = 0.0, mean_t / mean_n
        return ComputeCost(intercept, slope)
