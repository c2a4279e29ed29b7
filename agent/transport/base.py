"""The agent's end of the control channel, whatever carries it (gRPC, MQTT, in-process).

A ``Transport`` opens a ``Connection`` for a device identity; the daemon (or the simulator) turns
its outcomes into the core's events: ``connect`` returning is StreamOpened, each ``receive`` a
MessageReceived, and the error that ends a connection (raised by ``connect``, ``receive`` or
``send``) a StreamClosed. Every error is typed: a ``TransientError`` (reconnect after a jittered,
growing delay, at least its ``retry_after``) or a ``PermanentError`` (``Unauthenticated``: the
controller refuses this identity; for ``send``: this one message can never go, the connection is
fine). Artifacts are not part of this: they always download over gRPC.

All methods are called on the event loop thread; none blocks the loop.
"""

from __future__ import annotations

import abc

from common.errors import ResourceExhausted, TransientError
from common.types import AgentMessage, ControllerMessage, DeviceIdentity


class ChannelFull(ResourceExhausted):
    """More messages are waiting than the connection holds: the controller (or the broker) is not
    taking them. The connection is unusable from then on: close it and connect again."""

    code = "channel_full"


class ChannelClosed(TransientError):
    """The connection was closed (by us, or it ended earlier with another error)."""

    code = "channel_closed"


class Connection(abc.ABC):
    """One open control connection of one device."""

    @abc.abstractmethod
    def send(self, message: AgentMessage) -> None:
        """Queue ``message`` without blocking, in order. Raises ``ChannelFull`` when the bounded
        queue is full (transient: reset the connection), ``ChannelClosed`` once the connection has
        ended (``receive`` raises why), or a ``PermanentError`` when this one message can never be
        sent (too large; the connection is fine)."""

    @abc.abstractmethod
    async def receive(self) -> ControllerMessage:
        """The next message from the controller, in order. Raises the typed error that ended the
        connection, and keeps raising it (``ChannelClosed`` once closed by ``close``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the connection; idempotent, never raises, never blocks (a graceful goodbye, if the
        transport has one, finishes in the background; ``Transport.aclose`` waits for it)."""


class Transport(abc.ABC):
    """Opens control connections; one transport may serve one or many devices."""

    #: ``grpc``, ``mqtt`` or ``inproc``: for logs and the daemon's configuration.
    name: str = ""

    @abc.abstractmethod
    async def connect(self, identity: DeviceIdentity) -> Connection:
        """Open a connection as ``identity``. Raises typed errors as ``receive`` does."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to close unless a transport says so
        """Close what this transport still has open and wait for it (idempotent)."""
