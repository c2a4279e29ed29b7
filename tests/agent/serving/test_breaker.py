"""The partitioned path's circuit breaker (agent.serving.breaker): fallback, probes, recovery."""

from __future__ import annotations

import random

import pytest

from agent.core.backoff import BackoffPolicy
from agent.serving.breaker import Outcome, PathBreaker, PathState

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(seed: int = 0) -> tuple[PathBreaker, Clock]:
    clock = Clock()
    return PathBreaker(
        clock=clock, rng=random.Random(seed), backoff=BackoffPolicy(0.5, 30.0), name="t"
    ), clock


def test_a_failure_opens_the_path_until_the_probe_is_due() -> None:
    b, clock = breaker()
    t = b.allow()
    assert t is not None and not t.probe
    assert b.done(t, Outcome.FAILURE, "edge unreachable")  # partitioned -> fallback: an event
    assert b.state is PathState.OPEN and b.last_failure == "edge unreachable"
    assert b.probe_at is not None and clock.now < b.probe_at <= clock.now + 0.5
    # Until then every request falls back at once.
    clock.now = (clock.now + b.probe_at) / 2
    assert b.allow() is None
    clock.now = b.probe_at
    probe = b.allow()
    assert probe is not None and probe.probe and b.state is PathState.HALF_OPEN
    # While the probe is out, the others fall back.
    assert b.allow() is None
    assert b.done(probe, Outcome.SUCCESS)  # fallback -> partitioned: an event
    assert b.state is PathState.CLOSED and b.attempts == 0 and b.probe_at is None


def test_failed_probes_back_off_exponentially_with_jitter_and_a_cap() -> None:
    ceilings = []
    for seed in range(200):
        b, clock = breaker(seed)
        t = b.allow()
        assert t is not None
        b.done(t, Outcome.FAILURE)
        for _ in range(8):
            assert b.probe_at is not None
            clock.now = b.probe_at
            probe = b.allow()
            assert probe is not None and probe.probe
            assert not b.done(probe, Outcome.FAILURE)  # still fallback: no new event
        assert b.attempts == 8
        assert b.probe_at is not None
        ceilings.append(b.probe_at - clock.now)
    # Attempt 8: min(30, 0.5 * 2**8) = 30 s ceiling, drawn uniformly below it (full jitter).
    assert max(ceilings) <= 30.0
    assert min(ceilings) < 10.0 < max(ceilings)


def test_late_answers_from_before_a_transition_change_nothing() -> None:
    b, clock = breaker()
    first, second = b.allow(), b.allow()  # two requests in flight when the edge dies
    assert first is not None and second is not None
    b.done(first, Outcome.FAILURE)
    before = (b.state, b.probe_at, b.attempts)
    assert not b.done(second, Outcome.FAILURE)  # its failure is the same news: no longer backoff
    assert not b.done(second, Outcome.SUCCESS)  # nor does a late success close the path
    assert (b.state, b.probe_at, b.attempts) == before
    assert b.probe_at is not None
    clock.now = b.probe_at
    probe = b.allow()
    assert probe is not None
    b.done(probe, Outcome.SUCCESS)
    assert not b.done(first, Outcome.FAILURE)  # stale again
    assert b.state is PathState.CLOSED


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    b, clock = breaker()
    t = b.allow()
    assert t is not None
    b.done(t, Outcome.FAILURE)
    assert b.probe_at is not None
    clock.now = b.probe_at
    probe = b.allow()
    assert probe is not None
    b.done(probe, Outcome.ABANDONED)  # the caller cancelled: nothing learned
    assert b.state is PathState.OPEN and b.attempts == 0
    again = b.allow()
    assert again is not None and again.probe


def test_fallbacks_and_failures_are_counted() -> None:
    b, _ = breaker()
    t = b.allow()
    assert t is not None
    b.done(t, Outcome.FAILURE)
    for _ in range(5):
        b.allow()
    assert (b.failures, b.fallbacks) == (1, 5)
