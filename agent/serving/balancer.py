"""Spread a device's requests over the workers of a pool by weight, and back off failing ones.

**Picking** is smooth weighted round robin (nginx's): every pick adds each endpoint's weight to its
running credit, takes the endpoint with the most credit and charges it the total weight. Over any
window the picks follow the weights within one pick per endpoint, and they interleave (weights 2:1
give a, b, a, not a, a, b), so no worker gets bursts. The credits start at random offsets from the
injected rng: thousands of phones given the same pool must not all send their first request to the
same (heaviest) worker.

**Outlier ejection** follows Envoy's consecutive-failure detector: ``consecutive_failures`` failures
in a row eject an endpoint for ``base_ejection_s * 2**(k-1)`` seconds on its k-th ejection in a row,
capped at ``max_ejection_s`` and jittered down by up to ``jitter`` (so endpoints ejected together do
not return together). When its time is up it comes back as a *probe*: the next pick goes to it, and
while it is probing one failure ejects it again (for longer) while a success restores it fully and
resets its ejection count. Reports about an endpoint that is ejected (answers to requests sent
before) change nothing but its counters.

**Never eject too many.** At most ``floor(max_ejected_fraction * len(endpoints))`` endpoints are out
at once; a pool of one is never ejected (the caller gets the real error instead of none). When the
limit is reached, an endpoint due for ejection replaces the least bad ejected one only if it is
worse (more consecutive failures), so the ones kept serving are always the least bad.

Deterministic given the rng and clock; not thread-safe (one owner, e.g. the agent's event loop).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One worker of a pool; ``weight`` is its share (e.g. its capacity in slots); 0 drains it."""

    name: str
    address: str
    weight: float


@dataclass(frozen=True, slots=True)
class EndpointState:
    """What status and telemetry show about one endpoint."""

    endpoint: Endpoint
    ejected: bool
    ejected_until: float | None  # on the balancer's clock, while ejected
    probing: bool  # back from an ejection, not yet answered well: one failure ejects it again
    consecutive_failures: int
    ejections: int  # ejections in a row (since its last success); sets the next ejection's length
    picks: int
    successes: int
    failures: int


class _Tracked:
    __slots__ = (
        "consecutive",
        "credit",
        "ejected_until",
        "ejections",
        "endpoint",
        "failures",
        "picks",
        "probe_due",
        "probing",
        "returned_at",
        "successes",
    )

    def __init__(self, endpoint: Endpoint, credit: float) -> None:
        self.endpoint = endpoint
        self.credit = credit
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until: float | None = None
        self.probing = False
        self.probe_due = False
        self.returned_at = 0.0
        self.picks = self.successes = self.failures = 0

    @property
    def badness(self) -> tuple[int, int]:
        return (self.consecutive, self.ejections)


class Balancer:
    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        rng: random.Random,
        clock: Callable[[], float],
        consecutive_failures: int = 3,
        base_ejection_s: float = 1.0,
        max_ejection_s: float = 30.0,
        max_ejected_fraction: float = 0.5,
        jitter: float = 0.25,
    ) -> None:
        if consecutive_failures < 1:
            raise InvalidArgument(f"consecutive_failures must be at least 1, got {consecutive_failures}")
        if not (0 < base_ejection_s <= max_ejection_s) or not math.isfinite(max_ejection_s):
            raise InvalidArgument(
                f"need 0 < base_ejection_s <= max_ejection_s (finite), got {base_ejection_s}, {max_ejection_s}"
            )
        if not 0.0 <= max_ejected_fraction <= 1.0:
            raise InvalidArgument(f"max_ejected_fraction must be within 0..1, got {max_ejected_fraction}")
        if not 0.0 <= jitter < 1.0:
            raise InvalidArgument(f"jitter must be within [0, 1), got {jitter}")
        self._rng = rng
        self._clock = clock
        self._threshold = consecutive_failures
        self._base_s = base_ejection_s
        self._max_s = max_ejection_s
        self._fraction = max_ejected_fraction
        self._jitter = jitter
        self._tracked: list[_Tracked] = []
        self._by_key: dict[tuple[str, str], _Tracked] = {}
        self.update(endpoints)

    # -- public ---------------------------------------------------------------------------------

    def pick(self) -> Endpoint | None:
        """The endpoint for the next request: a probe due back from ejection first, else the smooth
        weighted round robin over those in service with a positive weight; None when there is none."""
        self._release_expired(self._clock())
        due = [t for t in self._tracked if t.probe_due]
        if due:
            probe = min(due, key=lambda t: t.returned_at)
            probe.probe_due = False
            probe.picks += 1
            return probe.endpoint
        eligible = [t for t in self._tracked if t.ejected_until is None and t.endpoint.weight > 0]
        if not eligible:
            return None
        total = 0.0
        best = eligible[0]
        for t in eligible:
            t.credit += t.endpoint.weight
            total += t.endpoint.weight
            if t.credit > best.credit:
                best = t
        best.credit -= total
        best.picks += 1
        return best.endpoint

    def report(self, endpoint: Endpoint, *, ok: bool) -> None:
        """The outcome of a request sent to ``endpoint`` (one no longer in the pool is ignored)."""
        t = self._by_key.get((endpoint.name, endpoint.address))
        if t is None:
            log.debug(
                "outcome for endpoint %s (%s) that is no longer assigned", endpoint.name, endpoint.address
            )
            return
        now = self._clock()
        self._release_expired(now)
        if ok:
            t.successes += 1
            t.consecutive = 0
            if t.ejected_until is None:
                if t.probing:
                    log.info(
                        "endpoint %s (%s) answered its probe; back in service",
                        t.endpoint.name,
                        t.endpoint.address,
                    )
                t.probing = False
                t.ejections = 0
            return
        t.failures += 1
        if t.ejected_until is not None:
            return  # a request sent before it was ejected: it is out already
        t.consecutive += 1
        if t.probing or t.consecutive >= self._threshold:
            self._try_eject(t, now)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Take a new assignment of endpoints. One with the same name and address as before keeps its
        state (failures, ejection, credit) and takes its new weight; the rest start fresh."""
        seen: set[str] = set()
        for e in endpoints:
            if not e.name:
                raise InvalidArgument("an endpoint needs a name")
            if e.name in seen:
                raise InvalidArgument(f"endpoint {e.name!r} is listed twice")
            seen.add(e.name)
            if not math.isfinite(e.weight) or e.weight < 0:
                raise InvalidArgument(f"endpoint {e.name!r} needs a finite weight >= 0, got {e.weight}")
        tracked: list[_Tracked] = []
        for e in endpoints:
            old = self._by_key.get((e.name, e.address))
            if old is None:
                old = _Tracked(e, credit=self._rng.uniform(0.0, e.weight))
            old.endpoint = e
            tracked.append(old)
        self._tracked = tracked
        self._by_key = {(t.endpoint.name, t.endpoint.address): t for t in tracked}
        # Fewer endpoints can leave more ejected than allowed: return the least bad early.
        now = self._clock()
        while (ejected := [t for t in tracked if t.ejected_until is not None]) and len(
            ejected
        ) > self._limit():
            self._return(min(ejected, key=lambda t: t.badness), now, early=True)

    def snapshot(self) -> list[EndpointState]:
        """Every endpoint's state, in assignment order (changes nothing)."""
        now = self._clock()
        states = []
        for t in self._tracked:
            ejected = t.ejected_until is not None and t.ejected_until > now
            states.append(
                EndpointState(
                    endpoint=t.endpoint,
                    ejected=ejected,
                    ejected_until=t.ejected_until if ejected else None,
                    probing=t.probing or (t.ejected_until is not None and not ejected),
                    consecutive_failures=t.consecutive,
                    ejections=t.ejections,
                    picks=t.picks,
                    successes=t.successes,
                    failures=t.failures,
                )
            )
        return states

    @property
    def endpoints(self) -> list[Endpoint]:
        return [t.endpoint for t in self._tracked]

    # -- ejection ---------------------------------------------------------------------------------

    def _limit(self) -> int:
        return math.floor(self._fraction * len(self._tracked) + 1e-9)

    def _try_eject(self, t: _Tracked, now: float) -> None:
        ejected = [u for u in self._tracked if u.ejected_until is not None]
        if len(ejected) >= self._limit():
            least_bad = min(ejected, key=lambda u: u.badness, default=None)
            if least_bad is None or t.badness <= least_bad.badness:
                log.info(
                    "endpoint %s (%s) keeps serving after %d consecutive failures: %d of %d endpoints "
                    "are ejected already (max fraction %.2f)",
                    t.endpoint.name,
                    t.endpoint.address,
                    t.consecutive,
                    len(ejected),
                    len(self._tracked),
                    self._fraction,
                )
                return
            self._return(least_bad, now, early=True)
        self._eject(t, now)

    def _eject(self, t: _Tracked, now: float) -> None:
        t.ejections += 1
        ceiling = min(self._max_s, self._base_s * 2.0 ** min(t.ejections - 1, 64))
        duration = ceiling * self._rng.uniform(1.0 - self._jitter, 1.0)
        t.ejected_until = now + duration
        t.probing = t.probe_due = False
        log.warning(
            "ejecting endpoint %s (%s) for %.2f s after %d consecutive failures (ejection %d in a row)",
            t.endpoint.name,
            t.endpoint.address,
            duration,
            t.consecutive,
            t.ejections,
        )

    def _return(self, t: _Tracked, when: float, *, early: bool = False) -> None:
        t.ejected_until = None
        t.probing = True
        t.probe_due = t.endpoint.weight > 0
        t.returned_at = when
        log.info(
            "endpoint %s (%s) returns from ejection%s; its next pick is a probe",
            t.endpoint.name,
            t.endpoint.address,
            " early (a worse endpoint takes its place)" if early else "",
        )

    def _release_expired(self, now: float) -> None:
        for t in self._tracked:
            if t.ejected_until is not None and t.ejected_until <= now:
                self._return(t, t.ejected_until)
