"""The control channel over gRPC: one ``ControllerService.Connect`` bidirectional stream per
connection, authenticated by the device's credential in the call metadata.

The request side is a bounded queue the stream's generator takes from; a full queue means the
controller is not reading, and ``send`` raises ``ChannelFull``. Closing cancels the call first
(gRPC then stops reading the requests) and ends the generator without needing queue space.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from agent.transport.base import ChannelClosed, ChannelFull, Connection, Transport
from common import serde
from common.errors import EdgefleetError, TransientError
from common.types import AgentMessage, ControllerMessage, DeviceIdentity

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]


def metadata(identity: DeviceIdentity) -> Metadata:
    """How a device authenticates every call to the controller (Connect, FetchArtifact)."""
    return (
        ("x-edgefleet-device-id", identity.device_id),
        ("authorization", f"Bearer {identity.credential}"),
    )


class _Outbound:
    """The request side of one control stream: a bounded queue that sends go into."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize)
        self._closed = False

    def put(self, item: Any) -> bool:
        """Queue ``item``; False when the queue is full (the controller is not reading)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        """End the request stream. Never raises and needs no queue space: a full queue means the
        generator is not waiting, and it checks the flag before every item it takes."""
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes a generator waiting on an empty queue

    async def requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if item is None or self._closed:
                return
            yield item


class GrpcConnection(Connection):
    def __init__(self, call: Any, outbound: _Outbound, device_id: str, max_queued: int) -> None:
        self._call = call
        self._responses: AsyncIterator[Any] = call.__aiter__()
        self._outbound = outbound
        self._device_id = device_id
        self._max_queued = max_queued
        self._error: EdgefleetError | None = None

    def send(self, message: AgentMessage) -> None:
        if self._error is not None:
            raise ChannelClosed(f"the connection has ended: {self._error}")
        if self._outbound.put(serde.agent_message_to_pb(message)):
            return
        raise ChannelFull(f"outbound queue full ({self._max_queued} messages): the controller is not reading")

    async def receive(self) -> ControllerMessage:
        if self._error is not None:
            raise self._error
        error: EdgefleetError
        try:
            pb = await anext(self._responses)
            return serde.controller_message_from_pb(pb)
        except StopAsyncIteration:
            error = TransientError("the controller ended the control stream")
        except grpc.aio.AioRpcError as exc:
            error = serde.error_from_rpc_error(exc)
        except EdgefleetError as exc:
            log.error("device=%s controller sent a bad message: %s", self._device_id, exc)
            error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._error is None:
                log.exception("device=%s control stream failed", self._device_id)
            error = TransientError(f"control stream failed: {exc!r}")
        if self._error is not None:  # closed by us meanwhile: that is the reason, not the cancellation
            raise self._error
        self._error = error
        self._teardown()
        raise error

    def close(self) -> None:
        if self._error is None:
            self._error = ChannelClosed("the control stream was closed")
        self._teardown()

    def _teardown(self) -> None:
        """Never raises: the call is cancelled first (gRPC then stops reading our requests), and ending
        the request generator needs no space in its queue."""
        self._call.cancel()
        self._outbound.close()


class GrpcTransport(Transport):
    """``stub`` is a ``ControllerServiceStub`` (or a stand-in with its ``Connect``)."""

    name = "grpc"

    def __init__(self, stub: Any, *, max_queued: int) -> None:
        self._stub = stub
        self._max_queued = max_queued

    async def connect(self, identity: DeviceIdentity) -> Connection:
        outbound = _Outbound(self._max_queued)
        call = self._stub.Connect(outbound.requests(), metadata=metadata(identity))
        return GrpcConnection(call, outbound, identity.device_id, self._max_queued)
