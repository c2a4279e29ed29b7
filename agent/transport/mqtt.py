"""The control channel over MQTT 5 (paho-mqtt, driven by the asyncio loop): see ``common.mqtt.protocol``
for the topics and the signed envelope, and the README's transport section for the whole design.

One connection is one MQTT connection, client id = the device id, with a persistent session
(``clean_start=False`` and a session expiry): the broker keeps the subscriptions and the QoS 1
messages published for the device while it is away. Connecting subscribes to ``desired`` (the
retained latest assignment, which arrives at once, even while the controller is down) and
``control``, then publishes ``online`` (retained) on ``status``; the last will publishes ``offline``
there when the connection dies without a goodbye. Closing says ``offline`` and disconnects.

The retained desired state arrives first, before the controller has even seen the hello; the agent
core takes nothing before its welcome, so the connection holds the newest one and delivers it right
after the welcome, unless the hello already reported that version applied (``desired_before_welcome``
delivers it at once, for a core that applies it early).

Every message from the controller is checked before the core sees it: signed with the device's key,
addressed to this connection (a ``control`` message for an earlier connection is stale), no larger
than the limit, decodable, on the right topic. A message that fails is refused — logged with its
topic and dropped — and the connection stays up: a bad retained message would otherwise make the
agent reconnect forever. A close notice ends the connection with the typed error it carries; an
unsigned one (the controller does not know this credential, or someone else wrote it) is never taken
as final: it reads as a transient error, so a forged notice can cost a reconnect, never the device.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent.transport.base import ChannelClosed, ChannelFull, Connection, Transport
from common import limits, serde
from common.errors import EdgefleetError, InvalidArgument, TransientError
from common.mqtt import protocol as proto
from common.mqtt.client import AsyncClient, Incoming, NotConnected, QueueFull, Settings, Will, subscription
from common.types import AgentMessage, Assignment, ControllerMessage, DeviceIdentity, Hello, Welcome

log = logging.getLogger(__name__)

#: An unsigned close notice is retried no sooner than this (it may be forged; see the module doc).
UNVERIFIED_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    keepalive_s: int = 20
    #: How long the broker keeps this device's session (subscriptions, queued messages) after it goes.
    session_expiry_s: int = 3600
    connect_timeout_s: float = 10.0
    #: Publishes not yet acknowledged by the broker before ``send`` raises ChannelFull.
    max_queued: int = limits.MQTT_AGENT_MAX_UNACKED
    receive_maximum: int = limits.MQTT_AGENT_RECEIVE_MAXIMUM
    #: The broker waits this long before publishing the will (a quick reconnect then says nothing).
    will_delay_s: int = 0
    #: A goodbye (offline status, DISCONNECT) that takes longer is cut short (the will says it then).
    close_timeout_s: float = 2.0
    #: Deliver the retained desired assignment as soon as it arrives (on subscribing, controller up or
    #: not) instead of right after the welcome. The agent core ignores anything before its welcome, so
    #: by default the connection holds it until then (and drops it if the hello already reports it).
    desired_before_welcome: bool = False

    @classmethod
    def parse(cls, address: str, **options: int | float) -> MqttConfig:
        """From ``HOST:PORT`` (InvalidArgument otherwise)."""
        serde.address("--mqtt", address)
        host, _, port = address.rpartition(":")
        return cls(host.strip("[]"), int(port), **options)  # type: ignore[arg-type]


class MqttConnection(Connection):
    def __init__(
        self, transport: MqttTransport, device_id: str, key: bytes, conn: str, max_queued: int
    ) -> None:
        self._transport = transport
        self.device_id = device_id
        self._key = key
        #: This connection's id: in every envelope we sign, and in every control message meant for us.
        self.conn = conn
        self._max_queued = max_queued
        self.client: AsyncClient | None = None
        self._inbox: collections.deque[tuple[ControllerMessage, Incoming | None]] = collections.deque()
        self._desired_before_welcome = transport.config.desired_before_welcome
        self._welcomed = False
        #: The newest desired assignment received before the welcome (already acknowledged to the broker:
        #: a retained message comes again on the next connection anyway).
        self._held: Assignment | None = None
        #: What our hello said we have applied: a held assignment no newer is not worth delivering.
        self._hello_acked: int | None = None
        self._wake: asyncio.Future[None] | None = None
        self._error: EdgefleetError | None = None
        self._closed_by_us = False
        #: Messages refused (bad signature, stale, too large, undecodable, wrong topic): for tests/metrics.
        self.refused = 0

    # --- inbound -------------------------------------------------------------------------------------

    def _on_message(self, incoming: Incoming) -> None:
        """Called by the client for every publish (inside paho's read; only queue work here)."""
        accepted = self._accept(incoming)
        if accepted is None:
            self._done(incoming)
            return
        if isinstance(accepted, Assignment) and not self._welcomed and not self._desired_before_welcome:
            if self._held is None or accepted.version > self._held.version:
                self._held = accepted
            self._done(incoming)
            return
        self._inbox.append((accepted, incoming))
        if isinstance(accepted, Welcome) and not self._welcomed:
            self._welcomed = True
            held, self._held = self._held, None
            if held is not None and (self._hello_acked is None or held.version > self._hello_acked):
                self._inbox.append((held, None))
        self._notify()

    def _accept(self, incoming: Incoming) -> ControllerMessage | None:
        name, payload = incoming.topic, incoming.payload
        parsed = proto.parse_topic(name)
        if parsed is None or parsed[0] != self.device_id or parsed[1] not in proto.CONTROLLER_TOPICS:
            self._refuse(name, "not a topic of this device's controller messages")
            return None
        kind = parsed[1]
        try:
            proto.check_payload_size(name, payload)
            envelope = proto.verify(self._key, name, payload, incoming.user_properties)
        except proto.BadSignature as exc:
            self._unsigned_close(name, kind, incoming, exc)
            return None
        except InvalidArgument as exc:
            self._refuse(name, str(exc))
            return None
        if kind is proto.Topic.CONTROL and envelope.conn != self.conn:
            log.debug("device=%s dropped a message for an earlier connection on %s", self.device_id, name)
            return None
        if envelope.close:
            if kind is proto.Topic.CONTROL:
                error = proto.error_from_close(envelope.close)
                log.info("device=%s the controller ended the session: %s", self.device_id, error)
                self._fail(error)
            return None
        try:
            message = serde.controller_message_from_bytes(payload)
            proto.check_controller_topic(name, kind, message)
        except InvalidArgument as exc:
            self._refuse(name, str(exc))
            return None
        return message

    def _unsigned_close(self, name: str, kind: proto.Topic, incoming: Incoming, exc: Exception) -> None:
        """A close notice the controller could not sign (it does not know our key) ends the connection as
        a transient error; any other unsigned message is refused."""
        values = dict(incoming.user_properties)
        if (
            kind is proto.Topic.CONTROL
            and not incoming.payload
            and values.get(proto.PROP_CONN) == self.conn
            and proto.PROP_CLOSE_KIND in values
        ):
            said = proto.error_from_close(list(incoming.user_properties))
            retry_after = getattr(said, "retry_after", None) or 0.0
            error = TransientError(
                f"the controller refused this connection: {said} (an unsigned notice, so not taken as final)",
                code=f"unverified_{said.code}"[:64],
                retry_after=max(float(retry_after), UNVERIFIED_RETRY_S),
            )
            log.warning("device=%s %s", self.device_id, error)
            self._fail(error)
            return
        self._refuse(name, str(exc))

    def _refuse(self, name: str, why: str) -> None:
        self.refused += 1
        log.warning("device=%s refused a message on %s: %s", self.device_id, name, why)

    def _done(self, incoming: Incoming) -> None:
        if self.client is not None:
            self.client.done(incoming)

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _fail(self, error: EdgefleetError) -> None:
        """The connection has ended with ``error`` (the first one counts); ``receive`` raises it. The
        owner then calls ``close``, which says goodbye if the MQTT connection is still up."""
        if self._error is None:
            self._error = error
        self._notify()

    async def receive(self) -> ControllerMessage:
        # What arrived before the connection ended is still delivered, in order (e.g. an assignment
        # followed by a close notice); nothing is once we closed it ourselves.
        while not self._inbox or self._closed_by_us:
            if self._error is not None:
                raise self._error
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        message, incoming = self._inbox.popleft()
        if incoming is not None:
            self._done(incoming)  # acknowledged to the broker once the core has it
        return message

    # --- outbound ------------------------------------------------------------------------------------

    def send(self, message: AgentMessage) -> None:
        if self._error is not None:
            raise ChannelClosed(f"the connection has ended: {self._error}")
        name = proto.topic(self.device_id, proto.agent_topic(message))
        payload = serde.agent_message_to_bytes(message)
        proto.check_payload_size(name, payload)  # PayloadTooLarge (permanent): this message never goes
        self._publish(name, payload)
        if isinstance(message, Hello):
            self._hello_acked = message.reported.acked_version

    def _publish(self, name: str, payload: bytes, *, retain: bool = False) -> None:
        client = self.client
        if client is None:
            raise ChannelClosed("not connected")
        props = proto.sign(self._key, name, self.conn, self._transport.now_ms(), payload)
        try:
            client.publish(name, payload, user_properties=props, retain=retain)
        except QueueFull:
            raise ChannelFull(
                f"outbound queue full ({self._max_queued} messages unacknowledged by the MQTT broker): "
                "the link is not draining"
            ) from None
        except NotConnected as exc:
            raise ChannelClosed(f"the MQTT connection has ended: {exc}") from None

    def _publish_status(self, status: bytes) -> None:
        self._publish(proto.topic(self.device_id, proto.Topic.STATUS), status, retain=True)

    # --- lifecycle -----------------------------------------------------------------------------------

    def _watch(self, client: AsyncClient) -> None:
        def ended(future: asyncio.Future[EdgefleetError | None]) -> None:
            error = None if future.cancelled() else future.result()
            if error is not None:
                log.info("device=%s MQTT connection ended: %s", self.device_id, error)
            self._fail(error or ChannelClosed("the MQTT connection was closed"))

        client.closed.add_done_callback(ended)

    def close(self) -> None:
        if self._closed_by_us:
            return
        self._closed_by_us = True
        if self._error is None:
            self._error = ChannelClosed("the MQTT connection was closed")
        self._notify()
        client = self.client
        if client is not None and not client.closed.done():
            self._transport._in_background(self._goodbye(client))

    async def _goodbye(self, client: AsyncClient) -> None:
        """``offline`` on status, acknowledged, then DISCONNECT; if the link does not take it in time,
        drop it instead (the broker then publishes the will, which says the same)."""
        try:
            self._publish_status(proto.STATUS_OFFLINE)
            async with asyncio.timeout(self._transport.config.close_timeout_s):
                await client.drain()
            await client.disconnect(self._transport.config.close_timeout_s)
        except (EdgefleetError, TimeoutError):
            client.abort()


class MqttTransport(Transport):
    name = "mqtt"

    def __init__(self, config: MqttConfig, *, wall_clock_ms: Callable[[], int] | None = None) -> None:
        self.config = config
        self.now_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._background: set[asyncio.Task[None]] = set()
        self._open: set[MqttConnection] = set()

    async def connect(self, identity: DeviceIdentity) -> Connection:
        c = self.config
        device_id = identity.device_id
        key = proto.device_key(identity.credential)
        conn = secrets.token_hex(16)
        status = proto.topic(device_id, proto.Topic.STATUS)
        will = Will(
            status,
            proto.STATUS_OFFLINE,
            proto.sign(key, status, conn, self.now_ms(), proto.STATUS_OFFLINE),
            retain=True,
            delay_s=c.will_delay_s,
        )
        connection = MqttConnection(self, device_id, key, conn, c.max_queued)
        client = AsyncClient(
            Settings(
                host=c.host,
                port=c.port,
                client_id=device_id,
                clean_start=False,
                session_expiry_s=c.session_expiry_s,
                keepalive_s=c.keepalive_s,
                connect_timeout_s=c.connect_timeout_s,
                receive_maximum=c.receive_maximum,
                max_unacked=c.max_queued,
                will=will,
            ),
            connection._on_message,
            name=f"device={device_id}",
        )
        connection.client = client
        try:
            await client.connect()
            await client.subscribe(
                [
                    subscription(proto.topic(device_id, proto.Topic.DESIRED)),
                    subscription(proto.topic(device_id, proto.Topic.CONTROL)),
                ]
            )
            connection._publish_status(proto.STATUS_ONLINE)
            async with asyncio.timeout(c.connect_timeout_s):
                await client.drain()
        except TimeoutError:
            client.abort()
            raise TransientError(
                f"MQTT broker {c.host}:{c.port} did not acknowledge within {c.connect_timeout_s:g}s",
                code="mqtt_unavailable",
            ) from None
        except BaseException:
            client.abort()
            raise
        if client.closed.done():
            raise ChannelClosed("the MQTT connection ended while it was being set up")
        connection._watch(client)
        self._open.add(connection)
        client.closed.add_done_callback(lambda _: self._open.discard(connection))
        log.info("device=%s connected to MQTT broker %s:%d (conn %s)", device_id, c.host, c.port, conn[:8])
        return connection

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
