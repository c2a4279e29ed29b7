"""The virtual-time loop (time jumps, thread work inline) and the transport-level link faults."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agent.transport.base import ChannelClosed, Connection, Transport
from common.types import DeviceIdentity, Heartbeat, TelemetryAck
from simulator import vclock
from simulator.faults import FaultyTransport, Link, LinkCut, LinkMode

pytestmark = pytest.mark.timeout(30)


def test_an_hour_of_timers_runs_at_once_in_order() -> None:
    order: list[tuple[float, str]] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()

        async def at(delay: float, name: str) -> None:
            await asyncio.sleep(delay)
            order.append((loop.time(), name))

        await asyncio.gather(at(3600, "c"), at(5, "a"), at(60, "b"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.Event().wait()  # nothing will ever set it: only the timeout ends it
        return loop.time()

    started = time.monotonic()
    end = vclock.run(main())
    assert order == [(5.0, "a"), (60.0, "b"), (3600.0, "c")]
    assert end == 3630.0
    assert time.monotonic() - started < 5  # an hour and a half-minute of virtual time, no waiting


def test_thread_work_runs_inline_at_the_current_instant() -> None:
    async def main() -> tuple[float, float, int, int]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(10)
        before = loop.time()
        ident = await asyncio.to_thread(threading.get_ident)
        with pytest.raises(ValueError, match="bad"):
            await loop.run_in_executor(None, _raise)
        return before, loop.time(), ident, threading.get_ident()

    before, after, worker, loop_thread = vclock.run(main())
    assert before == after == 10.0  # no virtual time passed while "the thread" worked
    assert worker == loop_thread


def _raise() -> None:
    raise ValueError("bad")


def test_the_loop_clock_reads_virtual_time() -> None:
    async def main() -> tuple[float, int]:
        clock = vclock.LoopClock(asyncio.get_running_loop())
        await asyncio.sleep(2.5)
        return clock.monotonic(), clock.now_ms()

    assert vclock.run(main()) == (2.5, vclock.EPOCH_MS + 2500)


# --- link faults --------------------------------------------------------------------------------------


class _Pipe(Connection):
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.closed = False

    def send(self, message: object) -> None:  # type: ignore[override]
        self.sent.append(message)

    async def receive(self) -> object:  # type: ignore[override]
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True
        self.inbox.put_nowait(ChannelClosed("closed"))


class _Direct(Transport):
    name = "test"

    def __init__(self) -> None:
        self.pipes: list[_Pipe] = []

    async def connect(self, identity: DeviceIdentity) -> Connection:
        self.pipes.append(_Pipe())
        return self.pipes[-1]


ME = DeviceIdentity("phone-1", "efd_x")


def test_a_cut_link_refuses_connects_and_resets_open_connections() -> None:
    async def main() -> None:
        inner, link = _Direct(), Link()
        transport = FaultyTransport(inner, link)
        conn = await transport.connect(ME)
        conn.send(Heartbeat(1))  # type: ignore[arg-type]
        assert inner.pipes[0].sent == [Heartbeat(1)]
        reading = asyncio.ensure_future(conn.receive())
        await asyncio.sleep(0)
        link.set(LinkMode.CUT)
        with pytest.raises(LinkCut):
            await reading
        with pytest.raises(ChannelClosed):
            conn.send(Heartbeat(1))  # type: ignore[arg-type]
        with pytest.raises(LinkCut):
            await transport.connect(ME)
        link.set(LinkMode.UP)
        assert await transport.connect(ME) is not None

    asyncio.run(main())


def test_a_black_hole_swallows_both_ways_and_never_errors() -> None:
    async def main() -> None:
        inner, link = _Direct(), Link()
        transport = FaultyTransport(inner, link)
        conn = await transport.connect(ME)
        link.set(LinkMode.BLACKHOLE)
        conn.send(Heartbeat(1))  # type: ignore[arg-type]
        assert inner.pipes[0].sent == []  # taken, not delivered
        inner.pipes[0].inbox.put_nowait(TelemetryAck(1))  # lost on the way back
        reading = asyncio.ensure_future(conn.receive())
        connecting = asyncio.ensure_future(transport.connect(ME))
        await asyncio.sleep(0.05)
        assert not reading.done() and not connecting.done()  # no error: only silence
        link.set(LinkMode.UP)
        inner.pipes[0].inbox.put_nowait(TelemetryAck(2))
        assert await reading == TelemetryAck(2)
        await connecting  # the connect into the hole completes once the path is back
        assert len(inner.pipes) == 2

    asyncio.run(main())
