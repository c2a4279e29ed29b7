"""The in-process transport's controller end: agents in the same event loop (tests, the simulator)
dial the hub directly, without sockets, through ``agent.transport.inproc.InProcessTransport``.

Like the gRPC servicer, one wire is one hub session: the device is authenticated by its credential
when it dials, its messages (serialized protobuf, decoded and validated here exactly as from the
Connect stream) go to ``Hub.handle``, and what ``Session.next`` yields goes back. A bad message
ends the wire with the typed error, as gRPC ends the stream with a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from common import serde
from common.errors import EdgefleetError, TransientError
from controller.hub import Db, Hub, Session, ShuttingDown
from controller.service import enrollment

log = logging.getLogger(__name__)


class WireClosed(TransientError):
    code = "channel_closed"


class InProcessWire:
    """Two queues of payloads; the agent ``put``s and ``get``s, the server ``take``s and ``deliver``s."""

    def __init__(self, device_id: str, max_queued: int) -> None:
        self.device_id = device_id
        self._up: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=max_queued)
        # Unbounded here: the session's own outbox (MAX_STREAM_OUTBOX) sheds a device that does not read.
        # An error in it ends the wire for the agent (after what came before it).
        self._down: asyncio.Queue[bytes | EdgefleetError] = asyncio.Queue()
        self._agent_closed = False
        self._ended: EdgefleetError | None = None

    # --- the agent's end ---------------------------------------------------------------------------

    def put(self, payload: bytes) -> bool:
        if self._agent_closed or self._ended is not None:
            return True  # gone: dropped, as on a closed socket (get says why)
        try:
            self._up.put_nowait(payload)
        except asyncio.QueueFull:
            return False
        return True

    async def get(self) -> bytes:
        item = await self._down.get()
        if isinstance(item, EdgefleetError):
            self._down.put_nowait(item)  # every later get raises it too
            raise item
        return item

    def close(self) -> None:
        if self._agent_closed:
            return
        self._agent_closed = True
        self._down.put_nowait(WireClosed("the in-process connection was closed"))
        if self._up.full():  # no room for the end marker: what the server has not taken is dropped
            while not self._up.empty():
                self._up.get_nowait()
        self._up.put_nowait(None)

    # --- the server's end --------------------------------------------------------------------------

    async def take(self) -> bytes | None:
        """The next payload from the agent; None once it hung up."""
        return await self._up.get()

    def deliver(self, payload: bytes) -> None:
        if not self._agent_closed and self._ended is None:
            self._down.put_nowait(payload)

    def end(self, error: EdgefleetError) -> None:
        """The controller ended the wire; the agent's ``get`` raises ``error`` once it has read the rest."""
        if self._ended is None and not self._agent_closed:
            self._ended = error
            self._down.put_nowait(error)


class InProcessServer:
    """Implements ``agent.transport.inproc.Dialer`` for agents in this event loop."""

    def __init__(self, db: Db, hub: Hub) -> None:
        self._db = db
        self._hub = hub
        # Insertion-ordered (a set would follow object ids): the simulator's runs must repeat.
        self._tasks: dict[asyncio.Task[None], None] = {}
        self._wires: dict[InProcessWire, None] = {}

    async def dial(self, device_id: str, credential: str, *, max_queued: int) -> InProcessWire:
        device = await self._db.run(enrollment.authenticate, self._db.store, device_id, credential)
        session = self._hub.open(device.id)
        wire = InProcessWire(device.id, max_queued)
        task = asyncio.get_running_loop().create_task(self._serve(session, wire), name=f"inproc-{device.id}")
        self._tasks[task] = None
        self._wires[wire] = None
        task.add_done_callback(lambda t: self._tasks.pop(t, None))
        task.add_done_callback(lambda _: self._wires.pop(wire, None))
        return wire

    async def _serve(self, session: Session, wire: InProcessWire) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(session, wire))
        try:
            while (message := await session.next()) is not None:
                wire.deliver(serde.controller_message_to_bytes(message))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self._hub.close(session)
            reason = session.close_reason
            wire.end(
                reason
                if isinstance(reason, EdgefleetError)
                else TransientError("the controller ended the control stream")
            )

    async def _read(self, session: Session, wire: InProcessWire) -> None:
        try:
            while (payload := await wire.take()) is not None:
                await self._hub.handle(session, serde.agent_message_from_bytes(payload))
            session.close()  # the agent hung up
        except ShuttingDown as exc:
            session.close(exc)
        except EdgefleetError as exc:
            log.warning("device=%s in-process stream refused: %s", session.device_id, exc)
            session.close(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("device=%s in-process stream failed", session.device_id)
            session.close(exc)

    async def aclose(self) -> None:
        """End every wire (ShuttingDown) and wait for their sessions to close."""
        for wire in list(self._wires):
            wire.end(ShuttingDown())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
