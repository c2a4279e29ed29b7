"""Fault injection in the transport layer: a device's link can be cut or black-holed under any
``agent.transport.Transport`` (gRPC, MQTT, in-process), for the simulator's virtual devices.

A cut link fails at once (connection refused, open connections reset). A black-holed link takes
what is sent and delivers nothing, in either direction, and a connect into it never completes: no
error reaches the agent, so only its own liveness checks (the controller answers nothing) can tell.
This is the in-process twin of ``simulator.faultproxy`` (TCP, for real processes).
"""

from __future__ import annotations

import asyncio
import enum

from agent.transport.base import ChannelClosed, Connection, Transport
from common.errors import TransientError
from common.types import AgentMessage, ControllerMessage, DeviceIdentity


class LinkMode(enum.Enum):
    UP = "up"
    CUT = "cut"
    BLACKHOLE = "blackhole"


class LinkCut(TransientError):
    code = "link_cut"


class Link:
    """One device's network path: its mode and the connections open over it."""

    def __init__(self) -> None:
        self.mode = LinkMode.UP
        #: Transfers over the link take 1/factor as long (a bandwidth drop).
        self.bandwidth_factor = 1.0
        self._open: dict[FaultyConnection, None] = {}  # insertion-ordered: a run must repeat
        self._changed: asyncio.Event | None = None

    @property
    def up(self) -> bool:
        return self.mode is LinkMode.UP

    def set(self, mode: LinkMode) -> None:
        if mode is self.mode:
            return
        self.mode = mode
        if mode is LinkMode.CUT:
            for conn in list(self._open):
                conn.reset(LinkCut("the link was cut (simulated)"))
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()


class FaultyConnection(Connection):
    def __init__(self, inner: Connection, link: Link) -> None:
        self._inner = inner
        self._link = link
        self._error: TransientError | None = None
        link._open[self] = None

    def send(self, message: AgentMessage) -> None:
        if self._error is not None:
            raise ChannelClosed(f"the connection has ended: {self._error}")
        if self._link.mode is LinkMode.BLACKHOLE:
            return  # taken, never delivered
        self._inner.send(message)

    async def receive(self) -> ControllerMessage:
        while True:
            try:
                message = await self._inner.receive()
            except Exception:
                if self._error is not None:
                    raise self._error from None
                raise
            if self._link.mode is LinkMode.UP:
                return message
            # black-holed: what the controller sent is lost on the way

    def reset(self, error: TransientError) -> None:
        if self._error is None:
            self._error = error
        self._inner.close()  # the pending receive raises, and is turned into ``error``

    def close(self) -> None:
        self._link._open.pop(self, None)
        self._inner.close()


class FaultyTransport(Transport):
    """Wraps a transport for one device's link."""

    def __init__(self, inner: Transport, link: Link) -> None:
        self.name = inner.name
        self._inner = inner
        self._link = link

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def connect(self, identity: DeviceIdentity) -> Connection:
        while self._link.mode is LinkMode.BLACKHOLE:
            # A SYN into a black hole is never answered; the agent's own deadline gives up on it.
            await self._link.changed()
        if self._link.mode is LinkMode.CUT:
            raise LinkCut("cannot reach the controller: the link is cut (simulated)")
        conn = await self._inner.connect(identity)
        if not self._link.up:  # it went down while connecting
            conn.close()
            raise LinkCut("the link went down while connecting (simulated)")
        return FaultyConnection(conn, self._link)
