"""Connected devices' control streams, and the reconcile loop that pushes desired state to them.

Transport-neutral: a transport (the gRPC servicer, the MQTT bridge, in-process) opens a ``Session`` per
connected device, feeds agent messages to ``Hub.handle`` and writes out what ``Session.next``
yields. The store is called through ``Db``, one worker thread, so SQLite never blocks the loop;
only store calls belong on that thread (file I/O and CPU work go to ``asyncio.to_thread``), since
every hello, ack and heartbeat of the fleet queues behind whatever runs there.

Shutting down (``Controller.stop``): ``Hub.stop`` makes reconcile and kick no-ops and refuses new
streams, ``close_all`` ends the open ones, ``drain`` waits for a reconcile or kick already running,
and only then is ``Db`` closed; a straggler calling ``Db.run`` after that gets ``ShuttingDown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from common import limits
from common.errors import InvalidArgument, ResourceExhausted, TransientError
from common.types import (
    AgentMessage,
    Assignment,
    AssignmentAck,
    ControllerMessage,
    Device,
    Heartbeat,
    Hello,
    ProfileReport,
    ProfileRequest,
    TelemetryAck,
    TelemetryBatch,
    Welcome,
)
from controller.service import profiles, sync
from controller.service.clock import Clock
from controller.store.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class ShuttingDown(TransientError):
    """The controller is stopping: try again later (against the restarted controller). gRPC: UNAVAILABLE."""

    code = "shutting_down"

    def __init__(self, message: str = "the controller is shutting down", *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class Db:
    """Runs store calls on one dedicated thread (SQLite serialises writers anyway)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """``fn(*args, **kwargs)`` on the store thread. ShuttingDown once ``close`` has begun."""
        if self._closed:
            raise ShuttingDown()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Finish the calls already submitted, then close the store. Idempotent; blocks until done."""
        self._closed = True
        self._pool.shutdown(wait=True)
        self.store.close()

    async def aclose(self) -> None:
        """``close`` without blocking the event loop while the last store calls finish."""
        self._closed = True  # from now on run() refuses, before the pool is even told
        await asyncio.to_thread(self.close)


class Session:
    """One open control stream. Outgoing messages are queued (bounded) for the transport to write."""

    def __init__(self, device_id: str, now: float) -> None:
        self.device_id = device_id
        self._queue: asyncio.Queue[ControllerMessage | None] = asyncio.Queue(maxsize=limits.MAX_STREAM_OUTBOX)
        self.closed = False
        self.close_reason: Exception | None = None
        self.hello_seen = False
        #: A kick arrived while the hello was being handled: re-check once the hello has been answered.
        self.kick_deferred = False
        #: The same for a profile request made while the hello was being handled.
        self.profiles_deferred = False
        self.last_heard = now
        self.sent_version = 0
        self.sent_at = 0.0
        #: Profile requests sent on this stream (by request id) and when: resent after resend_after_s.
        self.profile_sent: dict[str, float] = {}
        #: The highest telemetry sequence told to the device as stored (welcome watermark, acks).
        self.telemetry_acked = 0

    def offer(self, message: ControllerMessage) -> None:
        if self.closed:
            return
        if isinstance(message, Welcome):
            self.telemetry_acked = max(self.telemetry_acked, message.telemetry_watermark)
        elif isinstance(message, TelemetryAck):
            self.telemetry_acked = max(self.telemetry_acked, message.up_to_sequence)
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
        self._stopping = False
        #: Reconcile passes, kicks and disconnect records in progress, which ``drain`` waits for.
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Told when something the fleet plan depends on changed (links, hardware, a new device, a
        #: profile); the controller's re-planner listens. Never raises into the stream handler.
        self.on_fleet_change: Callable[[str], None] | None = None
        #: Told a device id whenever its desired assignment may have changed (every ``kick``), connected
        #: or not: the MQTT bridge keeps the device's retained desired state current. Never raises.
        self.on_desired_change: Callable[[str], None] | None = None

    def _fleet_changed(self, reason: str) -> None:
        listener = self.on_fleet_change
        if listener is None:
            return
        try:
            listener(reason)
        except Exception:
            log.exception("fleet-change listener failed (%s)", reason)

    @property
    def connected_count(self) -> int:
        return len(self._sessions)

    def session(self, device_id: str) -> Session | None:
        """The device's current stream, if it has one."""
        return self._sessions.get(device_id)

    def stop(self) -> None:
        """From now on reconcile and kick do nothing and no stream opens; ``close_all`` ends the open ones."""
        self._stopping = True

    async def drain(self) -> None:
        """Wait for the reconcile passes, kicks and disconnect records already running (call after ``stop``:
        no new reconcile or kick starts, and ``close_all`` has ended every stream)."""
        await self._idle.wait()

    @contextlib.asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    def open(self, device_id: str) -> Session:
        if self._stopping:
            raise ShuttingDown()
        previous = self._sessions.get(device_id)
        if previous is not None:
            # The device came back on a new stream (e.g. after a half-open TCP connection).
            log.info("device=%s new stream supersedes the previous one", device_id)
            previous.close()
        session = Session(device_id, self._clock.monotonic())
        self._sessions[device_id] = session
        return session

    async def close(self, session: Session, reason: Exception | None = None) -> None:
        session.close(reason)
        if self._sessions.get(session.device_id) is session:
            # The device's current stream ended, whichever stream said hello: it is not connected now.
            del self._sessions[session.device_id]
            if self._stopping:
                # Shutting down: Controller.stop records every device disconnected in one statement
                # (one write per stream took a minute for 100,000 streams).
                return
            # Shielded: a stream handler is often cancelled (the client went away) while it is here, and
            # cancelling a store call still queued would drop it, leaving the device "connected" for good.
            await asyncio.shield(self._record_disconnect(session.device_id, self._clock.now_ms()))

    async def _record_disconnect(self, device_id: str, now_ms: int) -> None:
        async with self._tracked():  # Controller.stop waits for it before closing the store
            try:
                await self._db.run(self._db.store.device_disconnected, device_id, now_ms=now_ms)
            except ShuttingDown:
                # A stream torn down after the store closed: the next start clears the flag
                # (mark_all_disconnected), so there is nothing to lose here.
                log.info("device=%s disconnected during shutdown (not recorded)", device_id)
                return
            except Exception:
                log.exception("device=%s disconnect could not be recorded", device_id)
                return
            log.info("device=%s disconnected", device_id)

    async def handle(self, session: Session, message: AgentMessage) -> None:
        """Apply one agent message; replies go to the session's queue. Raises typed errors."""
        store, now_ms = self._db.store, self._clock.now_ms()
        session.last_heard = self._clock.monotonic()
        if isinstance(message, Hello):
            await self._on_hello(session, message, now_ms)
            return
        if not session.hello_seen:
            raise InvalidArgument("the first message on the control stream must be a hello")
        if isinstance(message, Heartbeat):
            reason = await self._db.run(sync.on_heartbeat, store, session.device_id, message, now_ms=now_ms)
            if reason:
                self._fleet_changed(reason)
            # The answer tells the agent its controller is alive (it reconnects when nothing comes):
            # what it already knows, so repeating it is harmless.
            session.offer(TelemetryAck(up_to_sequence=session.telemetry_acked))
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
        elif isinstance(message, ProfileReport):
            request = await self._db.run(
                profiles.on_profile_report, store, session.device_id, message, now_ms=now_ms
            )
            if request is not None:
                session.profile_sent.pop(request.request_id, None)
                self._fleet_changed(f"device {session.device_id} reported a profile of {message.model_name}")

    async def _on_hello(self, session: Session, hello: Hello, now_ms: int) -> None:
        store = self._db.store
        # A kick before this point is covered: on_hello reads the device after that assignment was stored.
        session.kick_deferred = False
        session.profiles_deferred = False
        replies, reason = await self._db.run(
            sync.on_hello, store, session.device_id, hello, now_ms=now_ms, policy=self.policy
        )
        session.hello_seen = True
        if reason:
            self._fleet_changed(reason)
        for reply in replies:
            self._send(session, reply)
        if session.kick_deferred:
            # An assignment changed while on_hello ran; its kick found no hello yet and left it to us.
            # Whether on_hello read it or not, read again: _push_if_pending sends a version only once.
            session.kick_deferred = False
            device = await self._db.run(store.get_device, session.device_id)
            self._push_if_pending(session, device)
        if session.profiles_deferred:
            # The same for a profile request made while on_hello ran (sent once per resend interval).
            session.profiles_deferred = False
            pending = await self._db.run(profiles.pending_requests, store, [session.device_id])
            self._push_profiles(session, [r for _, r in pending])

    def _send(self, session: Session, message: ControllerMessage) -> None:
        if isinstance(message, Assignment):
            session.sent_version = message.version
            session.sent_at = self._clock.monotonic()
        elif isinstance(message, ProfileRequest):
            session.profile_sent[message.request_id] = self._clock.monotonic()
        session.offer(message)

    def _push_profiles(self, session: Session, requests: list[ProfileRequest]) -> None:
        """Send each request not sent on this stream yet, or not answered within resend_after_s (the
        agent ignores a request it is running and re-sends the report of one it has finished)."""
        now = self._clock.monotonic()
        wanted = {r.request_id for r in requests}
        for request_id in [k for k in session.profile_sent if k not in wanted]:
            del session.profile_sent[request_id]  # answered or superseded: forget it
        for request in requests:
            sent = session.profile_sent.get(request.request_id)
            if sent is None or now - sent >= self.policy.resend_after_s:
                self._send(session, request)

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
        if self._stopping:
            return
        if self.on_desired_change is not None:
            try:
                self.on_desired_change(device_id)
            except Exception:
                log.exception("device=%s desired-change listener failed", device_id)
        session = self._sessions.get(device_id)
        if session is None:
            return  # it gets its assignment with the welcome when it connects
        if not session.hello_seen:
            session.kick_deferred = True  # its hello is being handled: _on_hello looks again
            return
        async with self._tracked():
            device = await self._db.run(self._db.store.get_device, device_id)
            if self._sessions.get(device_id) is session:
                self._push_if_pending(session, device)

    def kick_devices(self, devices: Iterable[Device]) -> None:
        """``kick`` for devices whose new state the caller already holds (an apply's changed devices,
        as committed): no store read per device, so an apply to 10,000 devices pushes in one pass
        instead of 10,000 round trips through the store thread."""
        if self._stopping:
            return
        for device in devices:
            if self.on_desired_change is not None:
                try:
                    self.on_desired_change(device.id)
                except Exception:
                    log.exception("device=%s desired-change listener failed", device.id)
            session = self._sessions.get(device.id)
            if session is None:
                continue  # it gets its assignment with the welcome when it connects
            if not session.hello_seen:
                session.kick_deferred = True
                continue
            self._push_if_pending(session, device)

    async def kick_profiles(self, device_id: str) -> None:
        """Send a device its pending profile requests now (called right after one is made)."""
        if self._stopping:
            return
        session = self._sessions.get(device_id)
        if session is None:
            return  # the hello's replies carry every pending request
        if not session.hello_seen:
            session.profiles_deferred = True  # its hello is being handled: _on_hello looks again
            return
        async with self._tracked():
            pending = await self._db.run(profiles.pending_requests, self._db.store, [device_id])
            if self._sessions.get(device_id) is session:
                self._push_profiles(session, [r for _, r in pending])

    async def reconcile(self) -> None:
        """One pass: resend unacknowledged assignments, close streams that went silent.

        One store call for the whole fleet (``sync.due_for`` the connected devices: unacknowledged
        assignments and unanswered profile requests), plus one per stream closed for silence.
        """
        if self._stopping:
            return
        async with self._tracked():
            now = self._clock.monotonic()
            silent_after = self.policy.liveness_intervals * self.policy.heartbeat_interval_ms / 1000.0
            live: list[str] = []
            for session in list(self._sessions.values()):
                if now - session.last_heard > silent_after:
                    log.warning(
                        "device=%s silent for %.0fs; closing its stream",
                        session.device_id,
                        now - session.last_heard,
                    )
                    await self.close(session)
                elif session.hello_seen:
                    live.append(session.device_id)
            if not live or self._stopping:
                return
            unacked, requests = await self._db.run(sync.due_for, self._db.store, live)
            for device in unacked:
                current = self._sessions.get(device.id)
                # The stream may have ended or been superseded (by one not yet past its hello) meanwhile.
                if current is not None and current.hello_seen:
                    self._push_if_pending(current, device)
            by_device: dict[str, list[ProfileRequest]] = {}
            for device_id, request in requests:
                by_device.setdefault(device_id, []).append(request)
            for device_id in live:
                current = self._sessions.get(device_id)
                # A session with nothing pending and nothing sent has nothing to resend or forget.
                if (
                    current is not None
                    and current.hello_seen
                    and (device_id in by_device or current.profile_sent)
                ):
                    self._push_profiles(current, by_device.get(device_id, []))

    async def close_all(self, reason: Exception | None = None) -> None:
        """End every open stream (with ``reason``, if given) and record the devices as disconnected."""
        for session in list(self._sessions.values()):
            await self.close(session, reason)
