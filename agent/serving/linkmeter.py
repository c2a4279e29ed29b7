"""Links measured from real traffic: what a hop to a pool costs, as the planner should see it.

Every partitioned request measures its hop to the next pool: the RunSegment round trip less what
the later hops report for themselves (queue, compute, their own transfers). That is the link as the
request experienced it — network round trip, serialisation, the peer's gRPC and tensor handling —
which is what the planner's ``rtt + bytes / bandwidth`` must predict. ``LinkMeter`` keeps the latest
samples per pool (bounded), subtracts the wire time of the bytes at the link's known bandwidth, and
offers a ``LinkMeasurement`` (median and p95 round trip) when it has enough samples and the figure
moved enough to matter (a re-plan is not free: small wobbles are not reported), at most once per
``min_interval_s``.

Deterministic given the clock; not thread-safe (the agent's event loop owns it).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Mapping

from common.types import LinkMeasurement

#: Samples kept per pool (the latest), and needed before a link is reported.
WINDOW = 256
MIN_SAMPLES = 20
#: A new figure is reported when it differs from the last reported one by both this fraction and
#: this many milliseconds.
MIN_CHANGE_FRACTION = 0.2
MIN_CHANGE_MS = 0.5
#: Bandwidth assumed for a pool nobody told the device about (Mbit/s): the bytes' share of a hop is
#: then small and the round trip carries the measurement.
DEFAULT_BANDWIDTH_MBPS = 1000.0


class LinkMeter:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        bandwidth_mbps: Mapping[str, float] | None = None,
        min_interval_s: float = 10.0,
    ) -> None:
        self._clock = clock
        self._bandwidth = dict(bandwidth_mbps or {})
        self._min_interval_s = min_interval_s
        self._samples: dict[str, deque[float]] = {}
        self._reported: dict[str, LinkMeasurement] = {}
        self._reported_at: dict[str, float] = {}

    def record(self, pool: str, transfer_ms: float, nbytes: int) -> None:
        """One hop to ``pool``: ``transfer_ms`` for ``nbytes`` there and back."""
        if not pool or transfer_ms < 0:
            return
        bandwidth = self._bandwidth.get(pool, DEFAULT_BANDWIDTH_MBPS)
        wire_ms = nbytes * 8.0 / (bandwidth * 1000.0)
        samples = self._samples.get(pool)
        if samples is None:
            samples = self._samples[pool] = deque(maxlen=WINDOW)
        samples.append(max(0.0, transfer_ms - wire_ms))

    def due(self) -> tuple[LinkMeasurement, ...]:
        """The links worth reporting now (and remembered as reported)."""
        now = self._clock()
        out: list[LinkMeasurement] = []
        for pool, samples in self._samples.items():
            if len(samples) < MIN_SAMPLES:
                continue
            if now - self._reported_at.get(pool, -1e18) < self._min_interval_s:
                continue
            ordered = sorted(samples)
            rtt = statistics.median(ordered)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            measured = LinkMeasurement(
                pool=pool,
                bandwidth_mbps=self._bandwidth.get(pool, DEFAULT_BANDWIDTH_MBPS),
                rtt_ms=round(rtt, 3),
                rtt_p95_ms=round(max(p95, rtt), 3),
            )
            last = self._reported.get(pool)
            if last is not None and not _moved(last.rtt_ms, measured.rtt_ms):
                continue
            self._reported[pool], self._reported_at[pool] = measured, now
            out.append(measured)
        return tuple(out)


def _moved(before: float, after: float) -> bool:
    change = abs(after - before)
    return change >= MIN_CHANGE_MS and change >= MIN_CHANGE_FRACTION * max(before, 1e-9)
