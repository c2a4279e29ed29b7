"""Whether a device's requests take the partitioned path or its local fallback (a circuit breaker).

A partitioned request whose hop cannot be reached, breaks, or cannot answer within the budget is
answered by the device's fallback variant instead, and the path **opens**: the requests after it go
straight to the fallback (no time lost on a hop known to be down) until a probe is due. The delay
before the probe is capped exponential backoff with full jitter (``agent.core.backoff``: thousands of
phones losing one edge node must not all probe it at the same instant). When it is due, the next
request is the **probe** (half-open): it tries the partitioned path, every other request falls back
meanwhile; a success **closes** the path (partitioned again, attempts reset), a failure opens it again
for longer. A probe abandoned without an answer (the caller went away) opens the path again with the
next request as the probe, so a cancelled request never wedges it half-open. Every request allowed
onto the path holds a ticket of the state it started in: the late answer of a request that started
before a transition (several in flight when the hop died) changes nothing — only the probe decides.

A transition table; deterministic given the clock and the rng; not thread-safe (one owner, the
agent's event loop).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from agent.core.backoff import BackoffPolicy

log = logging.getLogger(__name__)

#: First probe 0.5 s after a failure, then doubling, at most 30 s apart (before jitter).
DEFAULT_PROBE_BACKOFF = BackoffPolicy(base_s=0.5, cap_s=30.0)


class PathState(enum.Enum):
    CLOSED = "closed"  # partitioned
    OPEN = "open"  # fallback until the probe is due
    HALF_OPEN = "half_open"  # one request is probing the partitioned path


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Ticket:
    """A request's permission to take the partitioned path, from the state it started in."""

    generation: int
    probe: bool


class PathBreaker:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        backoff: BackoffPolicy = DEFAULT_PROBE_BACKOFF,
        name: str = "",
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._backoff = backoff
        self.name = name
        self.state = PathState.CLOSED
        #: Failed probes in a row (0: the first failure after the path was healthy).
        self.attempts = 0
        self.probe_at: float | None = None
        self.last_failure = ""
        self.failures = 0
        self.fallbacks = 0
        self._generation = 0

    def allow(self) -> Ticket | None:
        """A ticket to take the partitioned path with (report how it ended with ``done``), or None:
        answer from the fallback. In the open state a ticket is the probe."""
        if self.state is PathState.CLOSED:
            return Ticket(self._generation, probe=False)
        if self.state is PathState.OPEN and self.probe_at is not None and self._clock() >= self.probe_at:
            self._move(PathState.HALF_OPEN)
            log.info("%s: probing the partitioned path (attempt %d)", self.name, self.attempts + 1)
            return Ticket(self._generation, probe=True)
        self.fallbacks += 1
        return None

    def done(self, ticket: Ticket, outcome: Outcome, reason: str = "") -> bool:
        """Report how a request on the partitioned path ended; True when the path changed between
        partitioned and fallback (worth a device event)."""
        if ticket.generation != self._generation:
            return False  # it started before the last transition: the news it brings is stale
        handler = _TRANSITIONS.get((self.state, outcome))
        return handler(self, reason) if handler is not None else False

    def _move(self, state: PathState) -> None:
        self.state = state
        self._generation += 1

    # --- transitions ----------------------------------------------------------------------------

    def _open(self, reason: str) -> bool:
        was_closed = self.state is PathState.CLOSED
        if not was_closed:
            self.attempts += 1
        self.failures += 1
        self.last_failure = reason
        delay = self._backoff.delay(self.attempts, self._rng)
        self.probe_at = self._clock() + delay
        self._move(PathState.OPEN)
        log.warning("%s: partitioned path down (%s); fallback, next probe in %.2fs", self.name, reason, delay)
        return was_closed

    def _close(self, reason: str) -> bool:
        was_closed = self.state is PathState.CLOSED
        if not was_closed:
            log.info("%s: partitioned path restored after %d failed probe(s)", self.name, self.attempts)
        self.attempts, self.probe_at = 0, None
        self._move(PathState.CLOSED)
        return not was_closed

    def _abandon(self, reason: str) -> bool:
        self.probe_at = self._clock()  # probe again with the next request: nothing was learned
        self._move(PathState.OPEN)
        return False

    def _ignore(self, reason: str) -> bool:
        return False


_TRANSITIONS: dict[tuple[PathState, Outcome], Callable[[PathBreaker, str], bool]] = {
    (PathState.CLOSED, Outcome.SUCCESS): PathBreaker._ignore,
    (PathState.CLOSED, Outcome.FAILURE): PathBreaker._open,
    (PathState.CLOSED, Outcome.ABANDONED): PathBreaker._ignore,
    (PathState.HALF_OPEN, Outcome.SUCCESS): PathBreaker._close,
    (PathState.HALF_OPEN, Outcome.FAILURE): PathBreaker._open,
    (PathState.HALF_OPEN, Outcome.ABANDONED): PathBreaker._abandon,
    # No ticket is ever issued in the open state (allow() moves to half-open first).
}
