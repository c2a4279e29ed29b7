"""An asyncio event loop on virtual time: the discrete-event clock of the virtual engine.

The loop's ``time()`` is a number the loop itself advances: whenever nothing is ready to run, it
jumps straight to the next scheduled callback instead of waiting for it. Everything that takes its
time from the loop (``asyncio.sleep``, ``call_at``, timeouts, and the clocks handed to the agent core
and the controller) then runs a simulated hour in however long the work itself takes.

Work handed to a thread (``run_in_executor``, ``asyncio.to_thread``: the controller's store calls,
its planner and segment builds) runs inline instead, at the current virtual instant: a thread's
result arriving "later" would otherwise race the jumping clock, and the run would not repeat. So
the controller's own code runs unchanged, only its waits are free. Sockets must not be used on it
(the virtual engine carries messages in memory); a wait on a file descriptor with nothing
scheduled blocks for real, so an outside wakeup still arrives.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

#: Virtual seconds since the start of the run are offset by this to make wall-clock milliseconds
#: (a fixed date, so a run's records and report are the same on every machine).
EPOCH_MS = 1_780_000_000_000


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking; a wait with a timeout becomes a jump."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        self._turns = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Nothing on this loop waits on sockets; real descriptors (the loop's self-pipe) are polled
        # only every few hundred turns, not with a system call on every one.
        self._turns += 1
        ready = [] if self._turns % 256 else super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: only an outside wakeup can make progress
            return super().select(None)
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0
        # asyncio caps one wait at a day; a longer jump is just several waits.

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    def now_ms(self) -> int:
        return EPOCH_MS + int(self._now * 1000)

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:  # type: ignore[override]
        future: asyncio.Future[Any] = self.create_future()
        try:
            future.set_result(func(*args))
        except BaseException as exc:  # handed back to the awaiting caller, as from a thread
            future.set_exception(exc)
        return future


class LoopClock:
    """The controller's ``Clock`` (and the agent cores' clocks) read off the running loop, virtual or
    real: in the virtual engine both sides then see the same simulated time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, epoch_ms: int = EPOCH_MS) -> None:
        self._loop = loop
        self._offset_ms = epoch_ms

    def monotonic(self) -> float:
        return self._loop.time()

    def now_ms(self) -> int:
        return self._offset_ms + int(self._loop.time() * 1000)


def run(main: Any) -> Any:
    """``asyncio.run`` on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
