"""The MQTT bridge: the controller's end of the MQTT transport (``fleetctl serve --mqtt HOST:PORT``).

One MQTT client subscribes to every device's ``reported``, ``telemetry``, ``ack``, ``profile`` and
``status`` topics (``common.mqtt.protocol``) and turns them into hub sessions, as the gRPC servicer
turns Connect streams into them: a device's signed hello opens a ``Session`` bound to the agent's
connection id (``ef-conn``), its other messages go to ``Hub.handle``, and what the session yields is
published back (the assignment retained on ``desired``, the rest on ``control``, signed with the
device's key). A session ends as a gRPC stream does, with a close notice carrying the typed error
(``ShuttingDown`` at shutdown, ``InvalidArgument`` for a bad message, ``ResourceExhausted`` for a
device that does not keep up); the device's ``offline`` status (its goodbye, or its last will when
the connection died) ends it at once, so offline devices are seen within seconds, not after the
liveness timeout.

Authentication: every message must carry a valid signature by the device's key (HMAC-SHA256 keyed by
the credential hash the store already keeps; see the protocol module) — a forged or altered message
is dropped, whoever could publish it. A hello must also be fresh (its timestamp within
``hello_max_skew_s`` of our clock, and newer than the device's last accepted hello): a recorded hello
cannot be replayed to take over the device's session. A device that does not sign correctly gets an
unsigned refusal (rate-limited), which the agent takes as transient. What the broker lets clients
publish and subscribe to (ACLs: a device only to its own topics) is the broker's configuration, not
enforced here; without it any client can read any device's payloads (never its credential).

Back-pressure: the bridge acknowledges a message only once the hub has handled it (in arrival order),
and the broker sends at most ``receive_maximum`` unacknowledged, so a slow store slows the broker down
instead of filling memory; messages of one device are handled in order, devices concurrently. At most
``max_unacked`` publishes wait for the broker; a session's writer waits for room (its session's bounded
outbox then sheds a device that cannot keep up, as on gRPC).

The retained ``desired`` state is kept current for every device, connected or not: on each assignment
the session sends, on every assignment change (``Hub.on_desired_change``), and for the whole fleet when
the broker has lost our session (a broker restarted without persistence lost its retained messages too).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from common import limits, serde
from common.errors import EdgefleetError, InvalidArgument, NotFound, TransientError, Unauthenticated
from common.mqtt import protocol as proto
from common.mqtt.client import AsyncClient, Incoming, NotConnected, QueueFull, Settings, subscription
from common.types import AgentMessage, Assignment, ControllerMessage, Hello
from controller.hub import Db, Hub, Session, ShuttingDown
from controller.service.clock import Clock
from controller.store.base import Store

log = logging.getLogger(__name__)

#: Device keys (credential hashes) kept in memory; older ones are read from the store again.
MAX_CACHED_KEYS = 100_000
#: Unsolicited close notices (refusals outside a session) sent per second at most, fleet-wide.
MAX_NOTICES_PER_S = 100.0


@dataclass(frozen=True, slots=True)
class MqttBridgeConfig:
    host: str
    port: int
    #: Has an upper-case letter, so no device (ids are lower case) can connect as it and take over
    #: the bridge's session.
    client_id: str = "Edgefleet-Controller"
    #: The broker keeps the bridge's session (subscriptions, and what devices publish while the
    #: controller restarts) this long.
    session_expiry_s: int = 3600
    keepalive_s: int = 20
    connect_timeout_s: float = 10.0
    max_unacked: int = limits.MQTT_BRIDGE_MAX_UNACKED
    receive_maximum: int = limits.MQTT_BRIDGE_RECEIVE_MAXIMUM
    #: A hello whose timestamp is further from our clock than this is refused (``clock_skew``).
    hello_max_skew_s: float = 300.0
    #: At most one unsolicited close notice per device this often.
    notice_interval_s: float = 2.0
    #: Reconnecting to the broker: jittered exponential backoff from base to cap.
    reconnect_base_s: float = 0.5
    reconnect_cap_s: float = 30.0
    #: Stopping waits this long for the close notices to reach the broker.
    stop_timeout_s: float = 5.0

    @classmethod
    def parse(cls, address: str, **options: Any) -> MqttBridgeConfig:
        """From ``HOST:PORT`` (InvalidArgument otherwise)."""
        serde.address("--mqtt", address)
        host, _, port = address.rpartition(":")
        return cls(host.strip("[]"), int(port), **options)


@dataclass(eq=False)
class _Live:
    """A device's current session over MQTT, bound to the connection that said hello."""

    session: Session
    conn: str
    key: bytes
    writer: asyncio.Task[None] | None = None
    #: Ended by the device's offline status: it is gone, nobody to tell.
    offline: bool = False


@dataclass(eq=False)
class _Device:
    inbox: collections.deque[tuple[proto.Topic, Incoming, AsyncClient]] = field(
        default_factory=collections.deque
    )
    worker: asyncio.Task[None] | None = None
    live: _Live | None = None
    #: The newest hello accepted (its timestamp): an older or equal one is a replay.
    last_hello_ms: int = 0


class MqttBridge:
    def __init__(
        self,
        db: Db,
        hub: Hub,
        clock: Clock,
        config: MqttBridgeConfig,
        *,
        wall_clock_ms: Callable[[], int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock
        self.config = config
        #: Real time, for envelope timestamps and hello freshness (devices sign with their wall clock).
        self._now_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._rng = rng or random.Random()
        self._client: AsyncClient | None = None
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._devices: dict[str, _Device] = {}
        self._keys: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        #: The assignment version last published retained on each device's ``desired``.
        self._published_desired: dict[str, int] = {}
        #: Devices whose desired state changed while the broker was unreachable.
        self._desired_dirty: set[str] = set()
        # A republish of every device that the broker cut short: the next connection finishes it,
        # even a resumed session (whose retained messages are still missing).
        self._desired_all_pending = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._notice_at: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._notice_tokens = MAX_NOTICES_PER_S
        self._notice_refill_at = time.monotonic()
        #: What was refused or dropped, by reason (bad_signature, unknown_device, invalid, replay, ...).
        self.refused: collections.Counter[str] = collections.Counter()
        #: Times the bridge connected to the broker.
        self.connections = 0
        #: The broker had no session for us on this connection: what devices published meanwhile is lost.
        self._fresh_session = False

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (and reconnecting, with backoff) in the background; ``wait_connected``
        waits for the broker. The controller serves gRPC meanwhile: a broker that is down is retried,
        not fatal."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="mqtt-bridge")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def stop(self) -> None:
        """End every MQTT session (ShuttingDown, when the hub has not already), let the close notices
        reach the broker, disconnect. Messages not handled yet stay unacknowledged in the bridge's
        broker session: the next controller run gets them."""
        if self._stopping:
            return
        self._stopping = True
        for device in self._devices.values():
            if device.live is not None:
                device.live.session.close(ShuttingDown())
        writers = [d.live.writer for d in self._devices.values() if d.live and d.live.writer]
        if writers:
            await asyncio.wait(writers, timeout=self.config.stop_timeout_s)
        client = self._client
        if client is not None and client.connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.stop_timeout_s):
                    await client.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if client is not None:
            await client.disconnect()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._connected.clear()
        log.info("mqtt bridge stopped")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("mqtt bridge task %s failed: %s", task.get_name(), error, exc_info=error)

    async def _run(self) -> None:
        c = self.config
        attempt = 0
        while not self._stopping:
            client = AsyncClient(
                Settings(
                    host=c.host,
                    port=c.port,
                    client_id=c.client_id,
                    clean_start=False,
                    session_expiry_s=c.session_expiry_s,
                    keepalive_s=c.keepalive_s,
                    connect_timeout_s=c.connect_timeout_s,
                    receive_maximum=c.receive_maximum,
                    max_unacked=c.max_unacked,
                ),
                self._on_message,
                name="mqtt-bridge",
                on_publish_refused=self._publish_refused,
            )
            self._client = client  # a resumed session's messages may arrive before the SUBACK
            try:
                session_present = await client.connect()
                # Read by the retained statuses that arrive right after the SUBACK (see _on_status).
                self._fresh_session = not session_present
                await client.subscribe(
                    [subscription(proto.topic_filter(kind)) for kind in proto.AGENT_TOPICS]
                )
            except EdgefleetError as exc:
                client.abort()
                delay = self._backoff(attempt)
                attempt += 1
                log.warning(
                    "mqtt bridge: cannot use the broker at %s:%d (%s); retrying in %.1fs",
                    c.host,
                    c.port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.connections += 1
            self._connected.set()
            log.info(
                "mqtt bridge connected to %s:%d (%s session)",
                c.host,
                c.port,
                "resumed" if session_present else "new",
            )
            dirty, self._desired_dirty = self._desired_dirty, set()
            if not session_present:
                # A new session (first start, expired, or a broker that lost its state with its
                # retained messages): make every device's desired state current again.
                self._published_desired.clear()
                self._spawn(self._republish_desired(None), "mqtt-desired-all")
            elif self._desired_all_pending:
                self._spawn(self._republish_desired(None), "mqtt-desired-all")
            elif dirty:
                self._spawn(self._republish_desired(dirty), "mqtt-desired-dirty")
            error = await client.closed
            self._connected.clear()
            if self._stopping:
                return
            log.warning("mqtt bridge lost the broker (%s); reconnecting", error)
            # Nothing reaches the devices now: end their sessions (recorded disconnected). They say
            # hello again once they are back on the broker.
            for device in self._devices.values():
                if device.live is not None:
                    device.live.session.close(TransientError("the controller lost its MQTT broker"))
            await asyncio.sleep(self._backoff(0))

    def _backoff(self, attempt: int) -> float:
        c = self.config
        ceiling = min(c.reconnect_cap_s, c.reconnect_base_s * (2 ** min(attempt, 30)))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _publish_refused(self, name: str, reason: Any) -> None:
        self.refused["broker_refused_publish"] += 1
        log.warning("mqtt bridge: the broker refused our publish on %s: %s", name, reason)

    # --- inbound ---------------------------------------------------------------------------------------

    def _on_message(self, incoming: Incoming) -> None:
        """Called by the client for each publish, inside paho's read: queue it for the device's worker."""
        client = self._client
        assert client is not None
        parsed = proto.parse_topic(incoming.topic)
        if parsed is None or parsed[1] not in proto.AGENT_TOPICS:
            self.refused["not_ours"] += 1
            client.done(incoming)
            return
        device_id, kind = parsed
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = _Device()
        device.inbox.append((kind, incoming, client))
        if device.worker is None:
            device.worker = self._spawn(self._work(device_id, device), f"mqtt-{device_id}")

    async def _work(self, device_id: str, device: _Device) -> None:
        """One device's messages, one at a time and in order; each acknowledged once handled."""
        try:
            while device.inbox:
                kind, incoming, client = device.inbox.popleft()
                try:
                    await self._handle(device_id, device, kind, incoming)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("device=%s mqtt message on %s failed", device_id, incoming.topic)
                client.done(incoming)
        finally:
            device.worker = None
            if device.live is None and device.last_hello_ms == 0 and not device.inbox:
                # Never authenticated: keep nothing (random device ids must not grow our memory).
                self._devices.pop(device_id, None)

    async def _key(self, device_id: str, *, fresh: bool = False) -> bytes | None:
        key = None if fresh else self._keys.get(device_id)
        if key is not None:
            self._keys.move_to_end(device_id)
            return key
        try:
            stored = await self._db.run(self._db.store.get_credential_hash, device_id)
        except NotFound:
            self._keys.pop(device_id, None)
            return None
        key = proto.stored_hash_key(stored)
        self._keys[device_id] = key
        if len(self._keys) > MAX_CACHED_KEYS:
            self._keys.popitem(last=False)
        return key

    async def _handle(self, device_id: str, device: _Device, kind: proto.Topic, incoming: Incoming) -> None:
        name, payload = incoming.topic, incoming.payload
        try:
            claimed, _ = proto.read_envelope(incoming.user_properties)
        except proto.BadSignature:
            self.refused["bad_signature"] += 1
            log.warning("device=%s dropped an unsigned message on %s", device_id, name)
            return
        is_hello = kind is proto.Topic.REPORTED
        key = await self._key(device_id, fresh=is_hello)
        refusal = Unauthenticated("unknown device or wrong credential", code="bad_credential")
        if key is None:
            self.refused["unknown_device"] += 1
            log.warning("device=%s dropped a message on %s: no such device", device_id, name)
            if is_hello:
                self._notice(device_id, None, claimed.conn, refusal)
            return
        try:
            envelope = proto.verify(key, name, payload, incoming.user_properties)
        except proto.BadSignature as exc:
            self.refused["bad_signature"] += 1
            log.warning("device=%s dropped a message: %s", device_id, exc)
            if is_hello:
                self._notice(device_id, None, claimed.conn, refusal)
            return
        live = device.live if device.live is not None and device.live.conn == envelope.conn else None
        try:
            proto.check_payload_size(name, payload)
            if kind is proto.Topic.STATUS:
                await self._on_status(device_id, device, live, key, envelope, incoming)
                return
            message = serde.agent_message_from_bytes(payload)
            proto.check_agent_topic(name, kind, message)
        except InvalidArgument as exc:
            self.refused["invalid"] += 1
            log.warning("device=%s refused a message on %s: %s", device_id, name, exc)
            if live is not None:
                live.session.close(exc)  # its writer tells the device, as gRPC ends the stream
            else:
                self._notice(device_id, key, envelope.conn, exc)
            return
        if isinstance(message, Hello):
            await self._on_hello(device_id, device, live, key, envelope, message)
        elif live is None or live.session.closed:
            self.refused["no_session"] += 1
            self._notice(
                device_id,
                key,
                envelope.conn,
                TransientError(
                    "no session for this connection (the controller restarted, or it ended): say hello again",
                    code="session_unknown",
                    retry_after=1.0,
                ),
            )
        else:
            await self._deliver(live, message)

    async def _on_hello(
        self,
        device_id: str,
        device: _Device,
        live: _Live | None,
        key: bytes,
        envelope: proto.Envelope,
        hello: Hello,
    ) -> None:
        if live is not None and not live.session.closed:
            await self._deliver(live, hello)  # the same connection again (or a QoS 1 redelivery)
            return
        skew_s = (self._now_ms() - envelope.ts_ms) / 1000.0
        if abs(skew_s) > self.config.hello_max_skew_s:
            self.refused["clock_skew"] += 1
            error = TransientError(
                f"the hello's timestamp is {abs(skew_s):.0f}s {'behind' if skew_s > 0 else 'ahead of'} the "
                f"controller's clock (at most {self.config.hello_max_skew_s:g}s allowed): check the device's clock",
                code="clock_skew",
                retry_after=30.0,
            )
            log.warning("device=%s refused a hello: %s", device_id, error)
            self._notice(device_id, key, envelope.conn, error)
            return
        if envelope.ts_ms <= device.last_hello_ms:
            self.refused["replay"] += 1
            log.warning("device=%s ignored a replayed or out-of-order hello", device_id)
            return
        device.last_hello_ms = envelope.ts_ms
        try:
            session = self._hub.open(device_id)
        except ShuttingDown as exc:
            self._notice(device_id, key, envelope.conn, exc)
            return
        live = _Live(session, envelope.conn, key)
        device.live = live
        live.writer = self._spawn(self._write(device_id, device, live), f"mqtt-write-{device_id}")
        await self._deliver(live, hello)

    async def _deliver(self, live: _Live, message: AgentMessage) -> None:
        session = live.session
        try:
            await self._hub.handle(session, message)
        except ShuttingDown as exc:
            session.close(exc)
        except EdgefleetError as exc:
            log.warning("device=%s mqtt session refused: %s", session.device_id, exc)
            session.close(exc)
        except Exception as exc:
            log.exception("device=%s mqtt session failed", session.device_id)
            session.close(exc)

    async def _on_status(
        self,
        device_id: str,
        device: _Device,
        live: _Live | None,
        key: bytes,
        envelope: proto.Envelope,
        incoming: Incoming,
    ) -> None:
        payload = incoming.payload
        if payload == proto.STATUS_OFFLINE and live is not None:
            # The connection that said hello is gone (its goodbye, or the broker published its last will).
            log.info("device=%s went offline (MQTT status)", device_id)
            live.offline = True
            await self._hub.close(live.session)
        elif payload == proto.STATUS_ONLINE and incoming.retain and self._fresh_session and live is None:
            # Retained, so sent as we subscribed: the device is on the broker with this connection, and
            # our session is new, so a hello it sent before we subscribed is lost. Ask for another rather
            # than let it wait out its welcome timeout.
            self.refused["lost_hello"] += 1
            self._notice(
                device_id,
                key,
                envelope.conn,
                TransientError(
                    "the controller's MQTT session was lost (the broker restarted without persistence): "
                    "say hello again",
                    code="session_unknown",
                    retry_after=1.0,
                ),
            )

    # --- outbound --------------------------------------------------------------------------------------

    async def _write(self, device_id: str, device: _Device, live: _Live) -> None:
        """Publish what the session yields until it ends; then tell the device why (a close notice)."""
        session = live.session
        try:
            while (message := await session.next()) is not None:
                await self._publish_message(device_id, live.key, live.conn, message)
        except EdgefleetError as exc:  # the broker went away under us
            session.close(exc)
        finally:
            await self._hub.close(session)
            replaced = device.live is not live
            if not replaced:
                device.live = None
        if replaced or live.offline or not self.connected:
            return  # superseded by a newer hello, gone, or unreachable: nobody to tell
        reason = session.close_reason
        error = (
            reason
            if isinstance(reason, EdgefleetError)
            else TransientError("the controller ended the session")
        )
        self._send_notice(device_id, live.key, live.conn, error)

    async def _publish_message(
        self, device_id: str, key: bytes, conn: str, message: ControllerMessage
    ) -> None:
        kind = proto.controller_topic(message)
        name = proto.topic(device_id, kind)
        payload = serde.controller_message_to_bytes(message)
        try:
            proto.check_payload_size(name, payload)
        except InvalidArgument as exc:
            log.error("device=%s cannot publish a %s: %s", device_id, type(message).__name__, exc)
            return
        if isinstance(message, Assignment):
            # The desired state belongs to the device, not to one connection: retained, conn ''.
            await self._publish(name, payload, key, "", retain=True)
            self._published_desired[device_id] = message.version
        else:
            await self._publish(name, payload, key, conn)

    async def _publish(
        self, name: str, payload: bytes, key: bytes, conn: str, *, retain: bool = False
    ) -> None:
        client = self._client
        if client is None or not client.connected:
            raise NotConnected("the controller is not connected to its MQTT broker")
        await client.wait_capacity()
        if client is not self._client or not client.connected:
            raise NotConnected("the controller lost its MQTT broker")
        props = proto.sign(key, name, conn, self._now_ms(), payload)
        client.publish(name, payload, user_properties=props, retain=retain)

    def _notice(self, device_id: str, key: bytes | None, conn: str, error: EdgefleetError) -> None:
        """A close notice outside a session (a refused hello, a message without a session), at most one
        per device per ``notice_interval_s`` and ``MAX_NOTICES_PER_S`` in all: refusals cost little."""
        now = time.monotonic()
        last = self._notice_at.get(device_id, -math.inf)
        if now - last < self.config.notice_interval_s:
            return
        self._notice_tokens = min(
            MAX_NOTICES_PER_S, self._notice_tokens + (now - self._notice_refill_at) * MAX_NOTICES_PER_S
        )
        self._notice_refill_at = now
        if self._notice_tokens < 1:
            return
        self._notice_tokens -= 1
        self._notice_at[device_id] = now
        self._notice_at.move_to_end(device_id)
        if len(self._notice_at) > 10_000:
            self._notice_at.popitem(last=False)
        self._send_notice(device_id, key, conn, error)

    def _send_notice(self, device_id: str, key: bytes | None, conn: str, error: EdgefleetError) -> None:
        """Publish a close notice (signed when we know the device's key); dropped if there is no room."""
        client = self._client
        if client is None or not client.connected:
            return
        name = proto.topic(device_id, proto.Topic.CONTROL)
        fields = proto.close_fields(error)
        now = self._now_ms()
        if key is not None:
            props = proto.sign(key, name, conn, now, b"", fields)
        else:
            props = (*fields, (proto.PROP_CONN, conn), (proto.PROP_TS, str(now)))
        with contextlib.suppress(QueueFull, NotConnected):
            client.publish(name, b"", user_properties=props)

    # --- the retained desired state --------------------------------------------------------------------

    def desired_changed(self, device_id: str) -> None:
        """``Hub.on_desired_change``: publish the device's new desired assignment, connected or not."""
        if self._stopping:
            return
        if not self.connected:
            self._desired_dirty.add(device_id)
            return
        self._spawn(self._republish_desired({device_id}), f"mqtt-desired-{device_id}")

    async def _republish_desired(self, device_ids: set[str] | None) -> None:
        """Publish the desired assignment of ``device_ids`` (None: every device) that is not on the
        broker yet. One store call for all of them."""
        try:
            rows = await self._db.run(_desired_states, self._db.store, device_ids)
        except ShuttingDown:
            return
        published = 0
        for device_id, assignment, credential_hash in rows:
            if self._published_desired.get(device_id) == assignment.version:
                continue
            name = proto.topic(device_id, proto.Topic.DESIRED)
            payload = serde.controller_message_to_bytes(assignment)
            try:
                proto.check_payload_size(name, payload)
                await self._publish(name, payload, proto.stored_hash_key(credential_hash), "", retain=True)
            except InvalidArgument as exc:
                log.error("device=%s cannot publish its desired state: %s", device_id, exc)
                continue
            except NotConnected:
                if device_ids is None:
                    self._desired_all_pending = True
                else:
                    self._desired_dirty |= device_ids
                return
            self._published_desired[device_id] = assignment.version
            published += 1
        if device_ids is None:
            self._desired_all_pending = False
            log.info("mqtt bridge published the desired state of %d device(s)", published)


def _desired_states(store: Store, device_ids: set[str] | None) -> list[tuple[str, Assignment, str]]:
    """(device id, desired assignment, credential hash) of ``device_ids`` (None: all) that have one."""
    if device_ids is None:
        devices = store.list_devices()
    else:
        devices = []
        for device_id in sorted(device_ids):
            with contextlib.suppress(NotFound):
                devices.append(store.get_device(device_id))
    rows = []
    for device in devices:
        if device.assignment is not None and device.desired_version > 0:
            rows.append((device.id, device.assignment, store.get_credential_hash(device.id)))
    return rows
