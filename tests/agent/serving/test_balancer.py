"""Balancer: smooth weighted round robin and consecutive-failure outlier ejection, with a fake clock
and a seeded rng (so every run makes the same picks)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agent.serving.balancer import Balancer, Endpoint
from common.errors import InvalidArgument

pytestmark = pytest.mark.timeout(20)

A, B, C, D = (Endpoint(n, f"10.0.0.{i}:7502", 1.0) for i, n in enumerate("abcd", start=1))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(endpoints: list[Endpoint], seed: int = 0, **kwargs: float) -> tuple[Balancer, FakeClock]:
    clock = FakeClock()
    return Balancer(endpoints, rng=random.Random(seed), clock=clock, **kwargs), clock  # type: ignore[arg-type]


def fail(balancer: Balancer, endpoint: Endpoint, times: int) -> None:
    for _ in range(times):
        balancer.report(endpoint, ok=False)


def state(balancer: Balancer, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in balancer.snapshot() if s.endpoint.name == name)


def picks(balancer: Balancer, n: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        e = balancer.pick()
        out[e.name if e else None] += 1  # type: ignore[index]
    return out


# --- weights ---------------------------------------------------------------------------------


def test_picks_follow_the_weights_and_interleave() -> None:
    eps = [Endpoint("a", "x:1", 1.0), Endpoint("b", "x:2", 2.0), Endpoint("c", "x:3", 5.0)]
    balancer, _ = make(eps, seed=3)
    sequence = [balancer.pick() for _ in range(8000)]
    counts = Counter(e.name for e in sequence if e)
    for e in eps:
        assert abs(counts[e.name] - 8000 * e.weight / 8.0) <= 2
    # Smooth: in every window of one cycle (8 picks) each endpoint appears its weight's times, +-1.
    for start in range(0, 800):
        window = Counter(e.name for e in sequence[start : start + 8] if e)
        assert all(abs(window[e.name] - e.weight) <= 1 for e in eps), (start, window)


def test_fractional_weights_are_respected_within_tolerance() -> None:
    eps = [Endpoint("a", "x:1", 0.3), Endpoint("b", "x:2", 1.7)]
    balancer, _ = make(eps, seed=1)
    counts = picks(balancer, 10_000)
    assert abs(counts["a"] - 1500) <= 2 and abs(counts["b"] - 8500) <= 2


def test_clients_start_at_different_endpoints() -> None:
    """Thousands of phones given the same pool must not all send their first request to one worker."""
    firsts = Counter(make([A, B, C], seed=seed)[0].pick().name for seed in range(300))  # type: ignore[union-attr]
    assert set(firsts) == {"a", "b", "c"} and min(firsts.values()) > 50


def test_zero_weight_is_drained_and_no_endpoints_means_none() -> None:
    balancer, _ = make([A, Endpoint("z", "x:9", 0.0)])
    assert picks(balancer, 50) == Counter({"a": 50})
    empty, _ = make([])
    assert empty.pick() is None
    drained, _ = make([Endpoint("z", "x:9", 0.0)])
    assert drained.pick() is None


def test_same_seed_same_picks() -> None:
    def sequence(seed: int) -> list[str]:
        balancer, clock = make([A, B, C, D], seed=seed)
        names = []
        for i in range(200):
            e = balancer.pick()
            assert e is not None
            names.append(e.name)
            balancer.report(e, ok=(i % 7 != 0 or e.name != "b"))
            clock.now += 0.05
        return names

    assert sequence(5) == sequence(5)
    assert sequence(5) != sequence(6)


# --- ejection --------------------------------------------------------------------------------


def test_consecutive_failures_eject_and_the_endpoint_returns_as_a_probe() -> None:
    balancer, clock = make([A, B, C], consecutive_failures=3, base_ejection_s=1.0)
    fail(balancer, A, 2)
    balancer.report(A, ok=True)  # not consecutive: the count starts again
    fail(balancer, A, 2)
    assert not state(balancer, "a").ejected
    balancer.report(A, ok=False)
    s = state(balancer, "a")
    assert s.ejected and s.ejections == 1 and s.consecutive_failures == 3
    assert s.ejected_until is not None and clock.now + 0.75 <= s.ejected_until <= clock.now + 1.0
    assert "a" not in picks(balancer, 100)
    clock.now = s.ejected_until
    assert balancer.pick() == A  # the probe, out of turn
    assert state(balancer, "a").probing
    balancer.report(A, ok=True)
    s = state(balancer, "a")
    assert not s.probing and s.ejections == 0 and s.consecutive_failures == 0
    assert picks(balancer, 300)["a"] == 100  # back to its share


def test_a_failed_probe_ejects_again_for_longer_up_to_the_cap() -> None:
    balancer, clock = make([A, B, C], base_ejection_s=1.0, max_ejection_s=30.0, jitter=0.25)
    fail(balancer, A, 3)
    durations = []
    for k in range(1, 10):
        s = state(balancer, "a")
        assert s.ejected and s.ejections == k
        assert s.ejected_until is not None
        duration = s.ejected_until - clock.now
        ceiling = min(30.0, 2.0 ** (k - 1))
        assert 0.75 * ceiling <= duration <= ceiling
        durations.append(duration)
        clock.now = s.ejected_until
        assert balancer.pick() == A
        balancer.report(A, ok=False)  # one failure while probing is enough
    assert durations[0] < durations[3] < durations[5]
    assert max(durations) <= 30.0 and durations[-1] >= 22.5


def test_a_success_resets_the_ejection_count() -> None:
    balancer, clock = make([A, B, C], base_ejection_s=1.0)
    for _ in range(3):  # three ejections in a row: the next would be 4 s
        fail(balancer, A, 3 if state(balancer, "a").ejections == 0 else 1)
        until = state(balancer, "a").ejected_until
        assert until is not None
        clock.now = until
        assert balancer.pick() == A
    balancer.report(A, ok=True)
    fail(balancer, A, 3)
    s = state(balancer, "a")
    assert s.ejections == 1 and s.ejected_until is not None and s.ejected_until - clock.now <= 1.0


def test_jitter_spreads_ejections_within_its_bounds() -> None:
    durations = []
    for seed in range(200):
        balancer, clock = make([A, B, C], seed=seed, base_ejection_s=2.0, jitter=0.25)
        fail(balancer, A, 3)
        until = state(balancer, "a").ejected_until
        assert until is not None
        durations.append(until - clock.now)
    assert all(1.5 <= d <= 2.0 for d in durations)
    assert max(durations) - min(durations) > 0.4  # spread, not one value


def test_late_reports_about_an_ejected_endpoint_change_nothing() -> None:
    balancer, _ = make([A, B, C])
    fail(balancer, A, 3)
    until = state(balancer, "a").ejected_until
    fail(balancer, A, 5)  # answers to requests sent before the ejection
    balancer.report(A, ok=True)
    s = state(balancer, "a")
    assert s.ejected and s.ejected_until == until and s.ejections == 1
    assert s.failures == 8 and s.successes == 1


def test_never_more_than_the_max_fraction_ejected_keeping_the_least_bad() -> None:
    balancer, _ = make([A, B, C, D], max_ejected_fraction=0.5)
    fail(balancer, A, 3)
    fail(balancer, B, 3)
    fail(balancer, C, 3)  # as bad as the ejected ones: it keeps serving
    assert [s.endpoint.name for s in balancer.snapshot() if s.ejected] == ["a", "b"]
    balancer.report(C, ok=False)  # now worse than a and b: it takes the place of the least bad
    ejected = [s.endpoint.name for s in balancer.snapshot() if s.ejected]
    assert len(ejected) == 2 and "c" in ejected
    returned = next(s for s in balancer.snapshot() if s.endpoint.name in "ab" and not s.ejected)
    assert returned.probing
    assert balancer.pick() == returned.endpoint  # its probe comes first


def test_a_pool_of_one_is_never_ejected() -> None:
    balancer, _ = make([A])
    fail(balancer, A, 20)
    assert not state(balancer, "a").ejected
    assert balancer.pick() == A


def test_all_ejected_with_fraction_one_gives_none_until_one_returns() -> None:
    balancer, clock = make([A, B], max_ejected_fraction=1.0, base_ejection_s=1.0)
    fail(balancer, A, 3)
    fail(balancer, B, 3)
    assert balancer.pick() is None
    clock.now += 1.0
    assert balancer.pick() in (A, B)


# --- updates ---------------------------------------------------------------------------------


def test_update_keeps_the_state_of_endpoints_still_present() -> None:
    balancer, _ = make([A, B, C, D])
    fail(balancer, A, 3)
    fail(balancer, B, 2)
    heavier_a = Endpoint("a", A.address, 5.0)
    moved_b = Endpoint("b", "10.9.9.9:7502", 1.0)  # another address: another worker, fresh state
    e = Endpoint("e", "10.0.0.5:7502", 1.0)
    balancer.update([heavier_a, moved_b, C, e])
    by_name = {s.endpoint.name: s for s in balancer.snapshot()}
    assert list(by_name) == ["a", "b", "c", "e"]
    assert by_name["a"].ejected and by_name["a"].endpoint.weight == 5.0
    assert by_name["b"].consecutive_failures == 0
    assert by_name["e"].picks == 0
    balancer.report(D, ok=False)  # no longer assigned: ignored
    assert "d" not in {s.endpoint.name for s in balancer.snapshot()}


def test_update_to_fewer_endpoints_returns_ejected_ones_over_the_limit() -> None:
    balancer, clock = make([A, B, C, D], max_ejected_fraction=0.5)
    fail(balancer, A, 3)
    until = state(balancer, "a").ejected_until
    assert until is not None
    clock.now = until
    assert balancer.pick() == A
    balancer.report(A, ok=False)  # its probe fails: a is worse (4 in a row, second ejection)
    fail(balancer, B, 3)
    balancer.update([A, B])  # limit 1 of 2: the less bad (b) returns
    states = {s.endpoint.name: s for s in balancer.snapshot()}
    assert states["a"].ejected and not states["b"].ejected and states["b"].probing


@pytest.mark.parametrize(
    "endpoints",
    [
        [Endpoint("a", "x:1", 1.0), Endpoint("a", "x:2", 1.0)],
        [Endpoint("a", "x:1", -1.0)],
        [Endpoint("a", "x:1", float("nan"))],
        [Endpoint("", "x:1", 1.0)],
    ],
)
def test_bad_endpoint_lists_are_refused(endpoints: list[Endpoint]) -> None:
    with pytest.raises(InvalidArgument):
        make(endpoints)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        make([A], consecutive_failures=0)
    with pytest.raises(InvalidArgument):
        make([A], base_ejection_s=10.0, max_ejection_s=1.0)
    with pytest.raises(InvalidArgument):
        make([A], max_ejected_fraction=1.5)
