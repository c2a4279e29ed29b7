"""A paho-mqtt 2.x client driven by the asyncio event loop, without a thread per client.

paho's ``loop_start()`` runs one thread per client, which stalls at about 340 clients in one
process; here the loop does the work instead, as paho's own asyncio example does: the socket is
registered with ``add_reader``/``add_writer`` (paho's socket callbacks say when), ``loop_read`` and
``loop_write`` run when it is ready, and one timer per event loop calls every client's
``loop_misc`` (keepalive pings, and dropping a connection whose ping went unanswered: a black-holed
link is detected within about two keepalive intervals, not only a closed socket). The TCP connect
is made with the loop too, so a slow or unreachable broker never blocks it; paho is handed the
connected socket. Thousands of clients then share one loop and one thread.

Bounds: at most ``max_unacked`` QoS 1 publishes unacknowledged (in flight plus queued) — far below the
65,535 MQTT packet ids, whose wrap would otherwise reuse the id of a message still in flight — and at
most ``max_inflight`` in flight, lowered to the broker's Receive Maximum. Inbound messages are
acknowledged by the application (``done``), in the order they arrived (MQTT 5 §4.6), and the broker
may send at most ``receive_maximum`` before they are: that is the back-pressure.

Everything here runs on the event loop thread; none of it is thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from common import limits
from common.errors import EdgefleetError, PermanentError, ResourceExhausted, TransientError
from common.mqtt.protocol import UserProperties

log = logging.getLogger(__name__)

#: How often every client's ``loop_misc`` runs (keepalive granularity).
MISC_INTERVAL_S = 1.0
#: The most unacknowledged publishes a client may be configured to hold: well below the 65,535 packet
#: ids, so an id is never reused while its message is in flight (paho would refuse or overwrite it).
MAX_UNACKED_LIMIT = 60_000

# CONNACK / SUBACK / DISCONNECT reason codes that retrying cannot fix without an operator.
_PERMANENT_REASONS = frozenset(
    {
        0x81,  # malformed packet
        0x82,  # protocol error
        0x84,  # unsupported protocol version
        0x85,  # client identifier not valid
        0x86,  # bad user name or password
        0x87,  # not authorized
        0x8C,  # bad authentication method
        0x8F,  # topic filter invalid
        0x90,  # topic name invalid
        0x95,  # packet too large
        0x99,  # payload format invalid
        0x9A,  # retain not supported
        0x9B,  # QoS not supported
        0x9E,  # shared subscriptions not supported
        0xA1,  # subscription identifiers not supported
        0xA2,  # wildcard subscriptions not supported
    }
)


class QueueFull(ResourceExhausted):
    """Too many publishes are waiting for the broker's acknowledgement: the link is not draining."""

    code = "mqtt_queue_full"


class NotConnected(TransientError):
    code = "mqtt_not_connected"


def reason_error(what: str, reason: ReasonCode | int) -> EdgefleetError:
    """A typed error for a failure reason code from the broker."""
    value = reason.value if isinstance(reason, ReasonCode) else int(reason)
    text = f"{what}: {reason} (reason code 0x{value:02X})"
    if value in _PERMANENT_REASONS:
        return PermanentError(text, code="mqtt_refused")
    return TransientError(text, code="mqtt_unavailable")


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    user_properties: UserProperties = ()
    retain: bool = True
    #: MQTT 5 Will Delay Interval: the broker waits this long before publishing it (0: at once).
    delay_s: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    client_id: str
    #: False: resume the broker-side session (subscriptions, queued QoS 1 messages) if it is alive.
    clean_start: bool = False
    #: How long the broker keeps the session after the connection ends (MQTT 5 Session Expiry).
    session_expiry_s: int = 3600
    keepalive_s: int = 20
    connect_timeout_s: float = 10.0
    receive_maximum: int = limits.MQTT_AGENT_RECEIVE_MAXIMUM
    max_inflight: int = limits.MQTT_MAX_INFLIGHT
    max_unacked: int = limits.MQTT_AGENT_MAX_UNACKED
    max_packet_bytes: int = limits.MAX_MQTT_PACKET_BYTES
    will: Will | None = None
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class Incoming:
    """One received publish. Hand it back to ``AsyncClient.done`` once it has been dealt with."""

    topic: str
    payload: bytes
    user_properties: UserProperties
    retain: bool
    qos: int
    mid: int
    #: The connection it arrived on (``done`` for a message of an earlier connection does nothing).
    epoch: int


class _Paho(paho.Client):
    """paho, handed a socket the event loop connected (paho would connect it blocking)."""

    preconnected: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.preconnected = self.preconnected, None
        if sock is None:  # pragma: no cover - only if paho reconnects by itself, which we never ask
            raise OSError("no connected socket to hand to paho")
        return sock


class _Ticker:
    """One timer per event loop calling ``loop_misc`` on every live client."""

    _by_loop: dict[asyncio.AbstractEventLoop, _Ticker] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._clients: set[AsyncClient] = set()
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def register(cls, client: AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        ticker = cls._by_loop.get(loop)
        if ticker is None:
            ticker = cls._by_loop[loop] = _Ticker(loop)
        ticker._clients.add(client)
        if ticker._handle is None:
            ticker._handle = loop.call_later(MISC_INTERVAL_S, ticker._tick)

    @classmethod
    def unregister(cls, client: AsyncClient) -> None:
        for loop, ticker in list(cls._by_loop.items()):
            ticker._clients.discard(client)
            if not ticker._clients:
                if ticker._handle is not None:
                    ticker._handle.cancel()
                del cls._by_loop[loop]

    def _tick(self) -> None:
        self._handle = None
        for client in list(self._clients):
            client._misc()
        if self._clients and not self._loop.is_closed():
            self._handle = self._loop.call_later(MISC_INTERVAL_S, self._tick)


class AsyncClient:
    """One MQTT 5 connection (connect once; a new connection is a new ``AsyncClient``)."""

    def __init__(
        self,
        settings: Settings,
        on_message: Callable[[Incoming], None],
        *,
        name: str = "",
        on_publish_refused: Callable[[str, ReasonCode], None] | None = None,
    ) -> None:
        if not 0 < settings.max_unacked <= MAX_UNACKED_LIMIT:
            raise ValueError(
                f"max_unacked={settings.max_unacked}: 1..{MAX_UNACKED_LIMIT} (MQTT has 65,535 packet ids)"
            )
        self.settings = settings
        self.name = name or settings.client_id
        self._on_message = on_message
        self._on_publish_refused = on_publish_refused
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paho: _Paho | None = None
        self._sock: Any = None
        self._connack: asyncio.Future[tuple[bool, ReasonCode, Properties | None]] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        #: mid -> topic of every publish the broker has not acknowledged yet.
        self._unacked: dict[int, str] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self._capacity = asyncio.Event()
        self._capacity.set()
        #: Received QoS 1 messages not acknowledged yet, in arrival order, and those dealt with.
        self._ack_order: collections.deque[int] = collections.deque()
        self._ack_done: set[int] = set()
        #: Inside an application callback called by paho (which holds its callback lock meanwhile).
        self._in_handler = 0
        self._epoch = id(self)
        self._closing = False
        self.session_present = False
        #: The broker's limits from its CONNACK.
        self.broker_receive_maximum = 65_535
        self.broker_max_packet_bytes = 0
        #: Set once the connection has ended: None if we ended it, else why it ended.
        self.closed: asyncio.Future[EdgefleetError | None] = asyncio.get_running_loop().create_future()

    # --- connecting ----------------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Connect and wait for the CONNACK; the broker's session_present flag. Typed errors: transient
        (unreachable, timed out, busy) or permanent (refused: not authorized, bad client id...)."""
        s = self.settings
        loop = self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                sock = await self._open_socket(loop)
                self._start(sock)
                assert self._connack is not None
                session_present, reason, props = await asyncio.shield(self._connack)
        except TimeoutError:
            self.abort()
            raise TransientError(
                f"MQTT broker {s.host}:{s.port} did not answer within {s.connect_timeout_s:g}s",
                code="mqtt_unavailable",
            ) from None
        except OSError as exc:
            self.abort()
            raise TransientError(
                f"cannot reach the MQTT broker at {s.host}:{s.port}: {exc}", code="mqtt_unavailable"
            ) from None
        except EdgefleetError:
            self.abort()
            raise
        if reason.is_failure:
            self.abort()
            raise reason_error(f"MQTT broker {s.host}:{s.port} refused the connection", reason)
        self.session_present = session_present
        receive_max = getattr(props, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            self.broker_receive_maximum = receive_max
        max_packet = getattr(props, "MaximumPacketSize", None)
        if isinstance(max_packet, int) and max_packet > 0:
            self.broker_max_packet_bytes = max_packet
        assert self._paho is not None
        # paho ignores the broker's Receive Maximum (sending more than it in flight is a protocol error)
        # and refuses a new window once connected; nothing is in flight before the CONNACK, and the
        # window stays above 0, so lowering it here is what setting it before connecting would do.
        self._paho._max_inflight_messages = max(1, min(s.max_inflight, self.broker_receive_maximum))
        return session_present

    async def _open_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        s = self.settings
        infos: list[Any]
        try:  # an address needs no resolver (loop.getaddrinfo runs in the default thread pool)
            ip = ipaddress.ip_address(s.host)
        except ValueError:
            infos = await loop.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            infos = [(family, socket.SOCK_STREAM, 0, "", (s.host, s.port))]
        error: OSError = OSError(f"no address for {s.host}")
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error

    def _start(self, sock: socket.socket) -> None:
        s = self.settings
        client = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.suppress_exceptions = True  # ours are caught and logged; never let one kill paho's state
        client.max_inflight_messages = max(1, min(s.max_inflight, 65_535))
        client.max_queued_messages = s.max_unacked
        client.on_connect = self._handle_connack
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_puback
        client.on_subscribe = self._handle_suback
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.will is not None:
            will_props = _properties(PacketTypes.WILLMESSAGE)
            if s.will.user_properties:
                will_props.UserProperty = list(s.will.user_properties)
            if s.will.delay_s:
                will_props.WillDelayInterval = s.will.delay_s
            client.will_set(s.will.topic, s.will.payload, qos=1, retain=s.will.retain, properties=will_props)
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        props.ReceiveMaximum = s.receive_maximum
        props.MaximumPacketSize = s.max_packet_bytes
        assert self._loop is not None
        self._connack = self._loop.create_future()
        self._paho = client
        client.preconnected = sock
        client.connect_async(
            s.host, s.port, keepalive=s.keepalive_s, clean_start=s.clean_start, properties=props
        )
        _Ticker.register(self)
        rc = client.reconnect()  # takes the connected socket, sends CONNECT (written by the loop)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise TransientError(f"MQTT connect failed: {paho.error_string(rc)}", code="mqtt_unavailable")

    # --- paho's socket callbacks: the event loop does the I/O ------------------------------------------

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._loop.add_reader(sock, self._readable)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._sock = None

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        if self._paho is not None:
            self._paho.loop_read()

    def _writable(self) -> None:
        if self._paho is not None:
            self._paho.loop_write()

    def _misc(self) -> None:
        if self._paho is None or self._sock is None:
            return
        self._paho.loop_misc()

    # --- paho's protocol callbacks -----------------------------------------------------------------

    def _handle_connack(
        self,
        client: paho.Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((bool(flags.session_present), reason, props))

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        error: EdgefleetError | None
        if self._closing and not flags.is_disconnect_packet_from_server:
            error = None
        elif flags.is_disconnect_packet_from_server:
            error = reason_error("the MQTT broker ended the connection", reason)
            if reason.value == 0x8E:  # session taken over: the same client id connected elsewhere
                error = TransientError(
                    f"the MQTT broker ended the connection: another client connected as "
                    f"{self.settings.client_id!r} (session taken over)",
                    code="mqtt_session_taken_over",
                )
        else:  # the socket closed or failed, or a ping went unanswered (paho says which only vaguely)
            detail = "" if reason.value == 0x80 else f" ({reason})"
            error = TransientError(f"MQTT connection to the broker lost{detail}", code="mqtt_unavailable")
        self._finish(error)

    def _finish(self, error: EdgefleetError | None) -> None:
        _Ticker.unregister(self)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error or TransientError("MQTT connection closed before CONNACK"))
            self._connack.exception()  # retrieved: connect() may already have given up
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(error or NotConnected("MQTT connection closed"))
                future.exception()
        self._subacks.clear()
        self._ack_order.clear()
        self._ack_done.clear()
        self._unacked.clear()
        self._drained.set()
        self._capacity.set()
        if not self.closed.done():
            self.closed.set_result(error)

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        user_props = tuple(getattr(props, "UserProperty", None) or ())
        try:
            name = message.topic
        except UnicodeDecodeError:
            name = ""
        incoming = Incoming(
            topic=name,
            payload=bytes(message.payload),
            user_properties=user_props,
            retain=bool(message.retain),
            qos=int(message.qos),
            mid=int(message.mid),
            epoch=self._epoch,
        )
        if incoming.qos > 0:
            self._ack_order.append(incoming.mid)
        self._in_handler += 1
        try:
            self._on_message(incoming)
        except Exception:
            log.exception("mqtt client=%s: message handler failed on %s", self.name, name)
            self.done(incoming)
        finally:
            self._in_handler -= 1

    def _handle_puback(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        name = self._unacked.pop(mid, None)
        if len(self._unacked) < self.settings.max_unacked:
            self._capacity.set()
        if not self._unacked:
            self._drained.set()
        # 0x10 (no matching subscribers) is a success; 0x80 and above are refusals (e.g. not authorized).
        if name is not None and reason.is_failure:
            if self._on_publish_refused is not None:
                self._in_handler += 1
                try:
                    self._on_publish_refused(name, reason)
                except Exception:
                    log.exception("mqtt client=%s: publish-refused handler failed", self.name)
                finally:
                    self._in_handler -= 1
            else:
                log.warning("mqtt client=%s: the broker refused a publish on %s: %s", self.name, name, reason)

    def _handle_suback(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Properties
    ) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(list(reasons))

    # --- the application's side ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._paho is not None and self._paho.is_connected() and not self.closed.done()

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    async def subscribe(self, subscriptions: Sequence[tuple[str, SubscribeOptions]]) -> None:
        """Subscribe and wait for the SUBACK; typed error if the broker refuses any of them."""
        if not self.connected or self._paho is None or self._loop is None:
            raise NotConnected("not connected to the MQTT broker")
        rc, mid = self._paho.subscribe(list(subscriptions))
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnected(f"MQTT subscribe failed: {paho.error_string(rc)}")
        future = self._subacks[mid] = self._loop.create_future()
        async with asyncio.timeout(self.settings.connect_timeout_s):
            reasons = await future
        for (filter_, _), reason in zip(subscriptions, reasons, strict=False):
            if reason.is_failure:
                raise reason_error(f"MQTT broker refused the subscription to {filter_}", reason)

    def publish(
        self, name: str, payload: bytes, *, user_properties: UserProperties = (), retain: bool = False
    ) -> None:
        """Queue a QoS 1 publish; never blocks. QueueFull when ``max_unacked`` publishes are still
        waiting for the broker; NotConnected once the connection has ended."""
        if self._paho is None or self.closed.done():
            raise NotConnected("not connected to the MQTT broker")
        if len(self._unacked) >= self.settings.max_unacked:
            self._capacity.clear()
            raise QueueFull(
                f"{self.settings.max_unacked} publishes are waiting for the MQTT broker's acknowledgement"
            )
        props = _properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = list(user_properties)
        info = self._paho.publish(name, payload, qos=1, retain=retain, properties=props)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:  # pragma: no cover - our own bound is checked first
            raise QueueFull("the MQTT client's queue is full")
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise NotConnected(f"MQTT publish on {name} failed: {paho.error_string(info.rc)}")
        self._unacked[info.mid] = name
        self._drained.clear()
        if len(self._unacked) >= self.settings.max_unacked:
            self._capacity.clear()

    async def wait_capacity(self) -> None:
        """Until another publish fits under ``max_unacked`` (or the connection ended)."""
        while len(self._unacked) >= self.settings.max_unacked and not self.closed.done():
            self._capacity.clear()
            await self._capacity.wait()

    async def drain(self) -> None:
        """Until the broker has acknowledged every publish made so far (or the connection ended)."""
        await self._drained.wait()

    def done(self, message: Incoming) -> None:
        """``message`` has been dealt with: acknowledge it, and every earlier one also dealt with, in
        the order they arrived. Safe to call twice, and for a message of an ended connection."""
        if message.qos == 0 or message.epoch != self._epoch or self._paho is None or self.closed.done():
            return
        self._ack_done.add(message.mid)
        order, finished = self._ack_order, self._ack_done
        while order and order[0] in finished:
            mid = order.popleft()
            finished.discard(mid)
            self._paho.ack(mid, 1)

    async def disconnect(self, timeout_s: float = 2.0) -> None:
        """End the connection normally (the broker discards the will); abort if that takes too long."""
        if self.closed.done():
            return
        self._closing = True
        if self._paho is None:
            self._finish(None)
            return
        self._paho.disconnect()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT (the broker publishes the will)."""
        if self.closed.done():
            return
        if self._in_handler and self._loop is not None:
            # paho holds its (non-reentrant) callback lock, which closing the socket takes: after it.
            self._loop.call_soon(self.abort)
            return
        client, sock = self._paho, self._sock
        if sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if client is not None:
            with contextlib.suppress(Exception):
                client._sock_close()  # closes the socket: no DISCONNECT, just a dropped TCP connection
        self._sock = None
        if not self.closed.done():
            self._finish(self._closing_error())

    def _closing_error(self) -> EdgefleetError | None:
        return None if self._closing else TransientError("MQTT connection aborted", code="mqtt_unavailable")


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def subscription(filter_: str, *, retained: bool = True) -> tuple[str, SubscribeOptions]:
    """A QoS 1 subscription; ``retained=False``: no retained messages when subscribing."""
    return filter_, SubscribeOptions(qos=1, retainHandling=0 if retained else 2)
