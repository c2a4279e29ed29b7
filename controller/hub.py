"""Connected devices' control streams, and the reconcile loop that pushes desired state to them.

Transport-neutral: a transport (gRPC today, the MQTT bridge later) opens a ``Session`` per
connected device, feeds agent messages to ``Hub.handle`` and writes out what ``Session.next``
yields. The store is called through ``Db``, one worker thread, so SQLite never blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from common import limits
from common.errors import InvalidArgument, ResourceExhausted
from common.types import (
    AgentMessage,
    Assignment,
    AssignmentAck,
    ControllerMessage,
    Device,
    Heartbeat,
    Hello,
    TelemetryBatch,
)
from controller.service import sync
from controller.service.clock import Clock
from controller.store.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class Db:
    """Runs store calls on one dedicated thread (SQLite serialises writers anyway)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()


class Session:
    """One open control stream. Outgoing messages are queued (bounded) for the transport to write."""

    def __init__(self, device_id: str, now: float) -> None:
        self.device_id = device_id
        self._queue: asyncio.Queue[ControllerMessage | None] = asyncio.Queue(maxsize=limits.MAX_STREAM_OUTBOX)
        self.closed = False
        self.close_reason: Exception | None = None
        self.hello_seen = False
        self.last_heard = now
        self.sent_version = 0
        self.sent_at = 0.0

    def offer(self, message: ControllerMessage) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            # A peer that does not read its stream must not grow our memory: drop it, it reconnects.
            self.close(ResourceExhausted("device is not reading its control stream", retry_after=5.0))

    def close(self, reason: Exception | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> ControllerMessage | None:
        """The next message to write, or None once the session is closed."""
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()


class Hub:
    def __init__(self, db: Db, clock: Clock, policy: sync.SyncPolicy) -> None:
        self._db = db
        self._clock = clock
        self.policy = policy
        self._sessions: dict[str, Session] = {}

    @property
    def connected_count(self) -> int:
        return len(self._sessions)

    def open(self, device_id: str) -> Session:
        previous = self._sessions.get(device_id)
        if previous is not None:
            # The device came back on a new stream (e.g. after a half-open TCP connection).
            log.info("device=%s new stream supersedes the previous one", device_id)
            previous.close()
        session = Session(device_id, self._clock.monotonic())
        self._sessions[device_id] = session
        return session

    async def close(self, session: Session) -> None:
        session.close()
        if self._sessions.get(session.device_id) is session:
            # The device's current stream ended, whichever stream said hello: it is not connected now.
            del self._sessions[session.device_id]
            await self._db.run(
                self._db.store.device_disconnected, session.device_id, now_ms=self._clock.now_ms()
            )
            log.info("device=%s disconnected", session.device_id)

    async def handle(self, session: Session, message: AgentMessage) -> None:
        """Apply one agent message; replies go to the session's queue. Raises typed errors."""
        store, now_ms = self._db.store, self._clock.now_ms()
        session.last_heard = self._clock.monotonic()
        if isinstance(message, Hello):
            replies = await self._db.run(
                sync.on_hello, store, session.device_id, message, now_ms=now_ms, policy=self.policy
            )
            session.hello_seen = True
            for reply in replies:
                self._send(session, reply)
            return
        if not session.hello_seen:
            raise InvalidArgument("the first message on the control stream must be a hello")
        if isinstance(message, Heartbeat):
            await self._db.run(store.touch_device, session.device_id, now_ms=now_ms)
        elif isinstance(message, TelemetryBatch):
            for reply in await self._db.run(
                sync.on_telemetry, store, session.device_id, message, now_ms=now_ms
            ):
                session.offer(reply)
        elif isinstance(message, AssignmentAck):
            device = await self._db.run(
                sync.on_assignment_ack, store, session.device_id, message, now_ms=now_ms
            )
            # An ack may reveal the device is still behind (e.g. it acked an older version).
            self._push_if_pending(session, device)

    def _send(self, session: Session, message: ControllerMessage) -> None:
        if isinstance(message, Assignment):
            session.sent_version = message.version
            session.sent_at = self._clock.monotonic()
        session.offer(message)

    def _push_if_pending(self, session: Session, device: Device) -> None:
        pending = sync.pending_assignment(device)
        if pending is None:
            return
        now = self._clock.monotonic()
        fresh = pending.version != session.sent_version
        if fresh or now - session.sent_at >= self.policy.resend_after_s:
            self._send(session, pending)

    async def kick(self, device_id: str) -> None:
        """Push a device's desired state now (called right after an assignment changes)."""
        session = self._sessions.get(device_id)
        if session is None or not session.hello_seen:
            return
        device = await self._db.run(self._db.store.get_device, device_id)
        self._push_if_pending(session, device)

    async def reconcile(self) -> None:
        """One pass: resend unacknowledged assignments, close streams that went silent."""
        now = self._clock.monotonic()
        silent_after = self.policy.liveness_intervals * self.policy.heartbeat_interval_ms / 1000.0
        for session in list(self._sessions.values()):
            if now - session.last_heard > silent_after:
                log.warning(
                    "device=%s silent for %.0fs; closing its stream",
                    session.device_id,
                    now - session.last_heard,
                )
                session.close()
                await self.close(session)
                continue
            if session.hello_seen:
                device = await self._db.run(self._db.store.get_device, session.device_id)
                self._push_if_pending(session, device)

    async def close_all(self) -> None:
        for session in list(self._sessions.values()):
            await self.close(session)
