"""The MQTT control protocol both sides speak: topics, signed envelopes, close notices, limits.

Topics (``{id}`` is a device id, which cannot contain ``/``, ``+`` or ``#``)::

    edgefleet/v1/devices/{id}/reported    agent -> controller  QoS 1         hello, heartbeat
    edgefleet/v1/devices/{id}/telemetry   agent -> controller  QoS 1         telemetry batch
    edgefleet/v1/devices/{id}/ack         agent -> controller  QoS 1         assignment ack
    edgefleet/v1/devices/{id}/profile     agent -> controller  QoS 1         profile report
    edgefleet/v1/devices/{id}/status      agent -> controller  QoS 1 retained  b"online" / b"offline" (last will)
    edgefleet/v1/devices/{id}/desired     controller -> agent  QoS 1 retained  the latest assignment
    edgefleet/v1/devices/{id}/control     controller -> agent  QoS 1         welcome, telemetry ack, profile
                                                                             request; or a close notice

Payloads are the serialized protobuf ``AgentMessage`` / ``ControllerMessage`` (the same bytes as on
the gRPC Connect stream); the message kind must match its topic. A close notice has an empty payload
and says why the controller ended the session in user properties (``ef-close-*``), as a gRPC stream
ends with a status and trailers.

Every publish carries an envelope in MQTT 5 user properties: ``ef-conn`` (the agent connection it
belongs to: a random id the agent picks per connection; '' for the retained desired state, which
belongs to no connection), ``ef-ts`` (sender's wall clock, ms) and ``ef-sig``, an HMAC-SHA256 over
the topic, the envelope, any close fields and the payload. The key is ``device_key(credential)``:
the SHA-256 the controller already stores for the device's credential, so both ends can compute it
and the credential itself never crosses the broker. Subscribers (and the broker) can read payloads
but cannot forge or alter a device's messages, nor the controller's messages to it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from common import limits
from common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EdgefleetError,
    InvalidArgument,
    NotFound,
    PermanentError,
    PermissionDenied,
    ResourceExhausted,
    TransientError,
    Unauthenticated,
)
from common.types import (
    NAME_RE,
    AgentMessage,
    Assignment,
    AssignmentAck,
    ControllerMessage,
    Heartbeat,
    Hello,
    ProfileReport,
    TelemetryBatch,
)

TOPIC_ROOT: Final = "edgefleet/v1/devices"


class Topic(enum.StrEnum):
    REPORTED = "reported"
    TELEMETRY = "telemetry"
    ACK = "ack"
    PROFILE = "profile"
    STATUS = "status"
    DESIRED = "desired"
    CONTROL = "control"


#: What agents publish (the bridge subscribes to these for every device) and what they receive.
AGENT_TOPICS: Final = (Topic.REPORTED, Topic.TELEMETRY, Topic.ACK, Topic.PROFILE, Topic.STATUS)
CONTROLLER_TOPICS: Final = (Topic.DESIRED, Topic.CONTROL)

STATUS_ONLINE: Final = b"online"
STATUS_OFFLINE: Final = b"offline"

PROP_CONN: Final = "ef-conn"
PROP_TS: Final = "ef-ts"
PROP_SIG: Final = "ef-sig"
PROP_CLOSE_KIND: Final = "ef-close-kind"
PROP_CLOSE_CODE: Final = "ef-close-code"
PROP_CLOSE_MESSAGE: Final = "ef-close-message"
PROP_RETRY_AFTER: Final = "ef-retry-after"
_CLOSE_PROPS: Final = (PROP_CLOSE_KIND, PROP_CLOSE_CODE, PROP_CLOSE_MESSAGE, PROP_RETRY_AFTER)

_SIGNATURE_CONTEXT: Final = b"edgefleet-mqtt-v1"

UserProperties = tuple[tuple[str, str], ...]


def topic(device_id: str, kind: Topic) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{kind.value}"


def topic_filter(kind: Topic) -> str:
    """The subscription matching ``kind`` for every device."""
    return f"{TOPIC_ROOT}/+/{kind.value}"


def parse_topic(name: str) -> tuple[str, Topic] | None:
    """(device id, kind) of one of our topics; None for any other topic."""
    root, sep, rest = name.rpartition("/")
    prefix, sep2, device_id = root.rpartition("/")
    if not sep or not sep2 or prefix != TOPIC_ROOT or not NAME_RE.fullmatch(device_id):
        return None
    try:
        return device_id, Topic(rest)
    except ValueError:
        return None


def agent_topic(message: AgentMessage) -> Topic:
    if isinstance(message, Hello | Heartbeat):
        return Topic.REPORTED
    if isinstance(message, TelemetryBatch):
        return Topic.TELEMETRY
    if isinstance(message, AssignmentAck):
        return Topic.ACK
    if isinstance(message, ProfileReport):
        return Topic.PROFILE
    raise TypeError(f"not an agent message: {type(message).__name__}")


def controller_topic(message: ControllerMessage) -> Topic:
    return Topic.DESIRED if isinstance(message, Assignment) else Topic.CONTROL


def check_agent_topic(name: str, kind: Topic, message: AgentMessage) -> None:
    """InvalidArgument when ``message`` does not belong on its topic (e.g. telemetry on reported)."""
    if agent_topic(message) is not kind:
        raise InvalidArgument(f"{name}: a {type(message).__name__} does not belong on this topic")


def check_controller_topic(name: str, kind: Topic, message: ControllerMessage) -> None:
    if controller_topic(message) is not kind:
        raise InvalidArgument(f"{name}: a {type(message).__name__} does not belong on this topic")


class PayloadTooLarge(InvalidArgument):
    code = "payload_too_large"


def check_payload_size(name: str, payload: bytes, limit: int = limits.MAX_MQTT_PAYLOAD_BYTES) -> None:
    if len(payload) > limit:
        raise PayloadTooLarge(
            f"{name}: payload of {len(payload)} bytes exceeds the MQTT payload limit of {limit} bytes"
        )


# --- signed envelopes --------------------------------------------------------------------------------


def device_key(credential: str) -> bytes:
    """The signing key of a device: the SHA-256 (hex) of its credential, which is exactly what the
    controller stores for it (``controller.service.secrets.hash_secret``)."""
    return hashlib.sha256(credential.encode()).hexdigest().encode()


def stored_hash_key(credential_hash: str) -> bytes:
    """The same key from the controller's side: the stored credential hash."""
    return credential_hash.encode()


def _signature(key: bytes, name: str, conn: str, ts_ms: int, payload: bytes, extra: UserProperties) -> str:
    mac = hmac.new(key, _SIGNATURE_CONTEXT, hashlib.sha256)
    for part in (name, conn, str(ts_ms), *(f"{k}={v}" for k, v in extra)):
        mac.update(b"\0" + part.encode())
    mac.update(b"\0" + hashlib.sha256(payload).digest())
    return mac.hexdigest()


def sign(
    key: bytes, name: str, conn: str, ts_ms: int, payload: bytes, extra: UserProperties = ()
) -> UserProperties:
    """The user properties of a signed publish: ``extra`` (close fields), then the envelope."""
    sig = _signature(key, name, conn, ts_ms, payload, extra)
    return (*extra, (PROP_CONN, conn), (PROP_TS, str(ts_ms)), (PROP_SIG, sig))


@dataclass(frozen=True, slots=True)
class Envelope:
    conn: str
    ts_ms: int
    #: The close fields, when this is a close notice (empty otherwise).
    close: UserProperties = ()


class BadSignature(Unauthenticated):
    code = "bad_signature"


def read_envelope(properties: Iterable[tuple[str, str]]) -> tuple[Envelope, str]:
    """The envelope and signature a publish carries, without checking the signature (the key to check
    it with depends on who the envelope says it is from). Raises BadSignature when they are missing."""
    conn = ts = sig = None
    close: list[tuple[str, str]] = []
    for key, value in properties:
        if key == PROP_CONN:
            conn = value
        elif key == PROP_TS:
            ts = value
        elif key == PROP_SIG:
            sig = value
        elif key in _CLOSE_PROPS:
            close.append((key, value))
    if conn is None or ts is None or sig is None or not ts.isdigit() or len(ts) > 16 or len(conn) > 64:
        raise BadSignature("unsigned or malformed envelope")
    return Envelope(conn, int(ts), tuple(close)), sig


def verify(key: bytes, name: str, payload: bytes, properties: Iterable[tuple[str, str]]) -> Envelope:
    """The envelope of a publish signed with ``key``; BadSignature if it is not."""
    envelope, sig = read_envelope(properties)
    expected = _signature(key, name, envelope.conn, envelope.ts_ms, payload, envelope.close)
    if not hmac.compare_digest(expected, sig):
        raise BadSignature(f"{name}: signature does not match")
    return envelope


# --- close notices -----------------------------------------------------------------------------------

#: Most specific first: the first isinstance match names the kind a notice carries.
_KINDS: Final[tuple[tuple[str, type[EdgefleetError]], ...]] = (
    ("invalid_argument", InvalidArgument),
    ("not_found", NotFound),
    ("already_exists", AlreadyExists),
    ("unauthenticated", Unauthenticated),
    ("permission_denied", PermissionDenied),
    ("resource_exhausted", ResourceExhausted),
    ("deadline_exceeded", DeadlineExceeded),
    ("unavailable", TransientError),
    ("failed_precondition", PermanentError),
)
_BY_KIND: Final = dict(_KINDS)


def close_fields(error: EdgefleetError) -> UserProperties:
    """How a close notice says ``error``: its kind (transient/permanent family), code, message and
    retry-after, so the agent gets back the same typed error a gRPC stream's status would give."""
    kind = next((k for k, cls in _KINDS if isinstance(error, cls)), "unavailable")
    fields = [
        (PROP_CLOSE_KIND, kind),
        (PROP_CLOSE_CODE, error.code[:64]),
        (PROP_CLOSE_MESSAGE, error.message[: limits.MAX_TEXT_CHARS]),
    ]
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after >= 0:
        fields.append((PROP_RETRY_AFTER, f"{retry_after:g}"))
    return tuple(fields)


def error_from_close(fields: Sequence[tuple[str, str]]) -> EdgefleetError:
    """The typed error a close notice carries (an unknown kind reads as transient)."""
    values = dict(fields)
    cls = _BY_KIND.get(values.get(PROP_CLOSE_KIND, ""), TransientError)
    message = values.get(PROP_CLOSE_MESSAGE, "") or "the controller ended the session"
    code = values.get(PROP_CLOSE_CODE) or None
    if issubclass(cls, TransientError):
        retry_after: float | None = None
        with contextlib.suppress(KeyError, ValueError):
            retry_after = float(values[PROP_RETRY_AFTER])
        if retry_after is not None and not 0 <= retry_after <= 3600:
            retry_after = None
        return cls(message, code=code, retry_after=retry_after)
    return cls(message, code=code)
