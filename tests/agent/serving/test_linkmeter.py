"""Links measured from traffic (agent.serving.linkmeter): what is reported, and when."""

from __future__ import annotations

import pytest

from agent.serving.linkmeter import MIN_SAMPLES, LinkMeter
from common.types import LinkMeasurement

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_link_is_reported_once_it_has_enough_samples_net_of_the_bytes_wire_time() -> None:
    clock = Clock()
    meter = LinkMeter(clock=clock, bandwidth_mbps={"edge": 8.0}, min_interval_s=10.0)
    # 8 Mbit/s: 1000 bytes take 1 ms on the wire; each hop took 3..4 ms in all.
    for i in range(MIN_SAMPLES - 1):
        meter.record("edge", 3.0 + (i % 10) / 10, 1000)
        assert meter.due() == ()
    meter.record("edge", 3.5, 1000)
    (link,) = meter.due()
    assert link.pool == "edge" and link.bandwidth_mbps == 8.0
    assert link.rtt_ms == pytest.approx(2.5, abs=0.06)  # the median less the wire time
    assert link.rtt_p95_ms is not None and link.rtt_ms <= link.rtt_p95_ms <= 3.0


def test_small_changes_are_not_reported_and_reports_are_spaced() -> None:
    clock = Clock()
    meter = LinkMeter(clock=clock, min_interval_s=10.0)
    for _ in range(MIN_SAMPLES):
        meter.record("cloud", 5.0, 0)
    assert [m.rtt_ms for m in meter.due()] == [5.0]
    for _ in range(300):
        meter.record("cloud", 5.3, 0)  # 6%: a wobble, not news
    clock.now = 100.0
    assert meter.due() == ()
    for _ in range(300):
        meter.record("cloud", 9.0, 0)  # the path got worse
    clock.now = 105.0  # long after the last report (at 0)
    assert [m.rtt_ms for m in meter.due()] == [9.0]
    for _ in range(300):
        meter.record("cloud", 2.0, 0)
    clock.now = 106.0  # a second change, too soon after the last report
    assert meter.due() == ()
    clock.now = 116.0
    assert [m.rtt_ms for m in meter.due()] == [2.0]


def test_pools_are_measured_apart_and_unknown_pools_ignored() -> None:
    meter = LinkMeter(clock=Clock())
    for _ in range(MIN_SAMPLES):
        meter.record("edge", 1.0, 0)
        meter.record("cloud", 7.0, 0)
        meter.record("", 99.0, 0)
    assert sorted(meter.due(), key=lambda m: m.pool) == [
        LinkMeasurement("cloud", 1000.0, 7.0, 7.0),
        LinkMeasurement("edge", 1000.0, 1.0, 1.0),
    ]
