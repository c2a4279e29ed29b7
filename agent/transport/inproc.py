"""The control channel in-process: for tests and the simulator, talking to the controller's hub in
the same event loop without sockets.

The controller's end (``controller.api.inproc.InProcessServer``) authenticates the identity, opens a
hub session and hands back a ``Wire``: two queues of serialized protobuf messages, the same bytes as
the other transports carry, so every message goes through the same encoding and validation. The
agent never imports controller code: it only needs something with ``dial``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from agent.transport.base import ChannelClosed, ChannelFull, Connection, Transport
from common import serde
from common.errors import EdgefleetError
from common.types import AgentMessage, ControllerMessage, DeviceIdentity

log = logging.getLogger(__name__)


class Wire(Protocol):
    """One in-memory connection; the controller owns the other end."""

    def put(self, payload: bytes) -> bool:
        """Agent -> controller, without blocking; False when ``max_queued`` payloads are waiting."""
        ...

    async def get(self) -> bytes:
        """Controller -> agent; raises the typed error that ended the wire (and keeps raising it)."""
        ...

    def close(self) -> None:
        """The agent hangs up (idempotent)."""
        ...


class Dialer(Protocol):
    async def dial(self, device_id: str, credential: str, *, max_queued: int) -> Wire:
        """A wire to the controller as this device; raises typed errors (Unauthenticated, ShuttingDown)."""
        ...


class InProcessConnection(Connection):
    def __init__(self, wire: Wire, device_id: str, max_queued: int) -> None:
        self._wire = wire
        self._device_id = device_id
        self._max_queued = max_queued
        self._error: EdgefleetError | None = None

    def send(self, message: AgentMessage) -> None:
        if self._error is not None:
            raise ChannelClosed(f"the connection has ended: {self._error}")
        if not self._wire.put(serde.agent_message_to_bytes(message)):
            raise ChannelFull(
                f"outbound queue full ({self._max_queued} messages): the controller is not reading"
            )

    async def receive(self) -> ControllerMessage:
        if self._error is not None:
            raise self._error
        try:
            payload = await self._wire.get()
        except EdgefleetError as exc:  # the controller ended the wire, or we closed it meanwhile
            raise self._fail(exc) from None
        try:
            return serde.controller_message_from_bytes(payload)
        except EdgefleetError as exc:
            log.error("device=%s controller sent a bad message: %s", self._device_id, exc)
            raise self._fail(exc) from None

    def _fail(self, error: EdgefleetError) -> EdgefleetError:
        """The error that ends this connection: the first one (e.g. ChannelClosed if we closed it)."""
        if self._error is None:
            self._error = error
        self._wire.close()
        return self._error

    def close(self) -> None:
        if self._error is None:
            self._error = ChannelClosed("the in-process connection was closed")
        self._wire.close()


class InProcessTransport(Transport):
    name = "inproc"

    def __init__(self, dialer: Dialer, *, max_queued: int = 1024) -> None:
        self._dialer = dialer
        self._max_queued = max_queued

    async def connect(self, identity: DeviceIdentity) -> Connection:
        wire = await self._dialer.dial(identity.device_id, identity.credential, max_queued=self._max_queued)
        return InProcessConnection(wire, identity.device_id, self._max_queued)
