"""The MQTT protocol pieces without a broker: topics, signed envelopes, close notices, limits."""

from __future__ import annotations

import pytest

from common import limits
from common.errors import (
    DeadlineExceeded,
    EdgefleetError,
    InvalidArgument,
    PermanentError,
    ResourceExhausted,
    TransientError,
    Unauthenticated,
)
from common.mqtt import protocol as proto
from common.types import (
    Assignment,
    AssignmentAck,
    Heartbeat,
    Hello,
    ProfileReport,
    ReportedState,
    TelemetryAck,
    TelemetryBatch,
    Welcome,
)
from controller.hub import ShuttingDown
from controller.service.secrets import hash_secret
from tests.integration.harness import HW

KEY = proto.device_key("efd_secret")
NAME = proto.topic("phone-1", proto.Topic.REPORTED)


def test_topics_round_trip_and_only_ours_parse() -> None:
    for kind in proto.Topic:
        assert proto.parse_topic(proto.topic("edge-7.a_b", kind)) == ("edge-7.a_b", kind)
    assert proto.topic_filter(proto.Topic.TELEMETRY) == "edgefleet/v1/devices/+/telemetry"
    for other in (
        "edgefleet/v1/devices/phone-1/unknown",
        "edgefleet/v1/devices/Phone-1/reported",  # not a device id (upper case)
        "edgefleet/v1/devices/a/b/reported",
        "edgefleet/v2/devices/phone-1/reported",
        "edgefleet/v1/devices//reported",
        "reported",
        "",
    ):
        assert proto.parse_topic(other) is None, other


def test_every_message_has_its_topic() -> None:
    reported = ReportedState()
    assert proto.agent_topic(Hello(hardware=HW, reported=reported)) is proto.Topic.REPORTED
    assert proto.agent_topic(Heartbeat(sent_at_ms=1)) is proto.Topic.REPORTED
    assert proto.agent_topic(TelemetryBatch(records=())) is proto.Topic.TELEMETRY
    assert proto.agent_topic(AssignmentAck(version=1, reported=reported)) is proto.Topic.ACK
    assert proto.agent_topic(ProfileReport("r", "m")) is proto.Topic.PROFILE
    assignment = Assignment(
        version=1, model_name="m", variant="fp32", artifact_sha256="ab" * 32, artifact_size_bytes=1
    )
    assert proto.controller_topic(assignment) is proto.Topic.DESIRED
    assert proto.controller_topic(Welcome(1, 0)) is proto.Topic.CONTROL
    assert proto.controller_topic(TelemetryAck(1)) is proto.Topic.CONTROL
    with pytest.raises(InvalidArgument, match=r"^edgefleet/v1/devices/phone-1/reported: a TelemetryBatch"):
        proto.check_agent_topic(NAME, proto.Topic.REPORTED, TelemetryBatch(records=()))


def test_the_signing_key_is_what_the_controller_stores() -> None:
    credential = "efd_" + "x" * 43
    assert proto.device_key(credential) == proto.stored_hash_key(hash_secret(credential))


def test_a_signed_envelope_verifies_and_any_change_breaks_it() -> None:
    props = proto.sign(KEY, NAME, "conn-1", 1234, b"payload")
    envelope = proto.verify(KEY, NAME, b"payload", props)
    assert envelope == proto.Envelope("conn-1", 1234, ())
    values = dict(props)
    tampered = {
        "payload": (NAME, b"payloaD", props),
        "topic": (proto.topic("phone-2", proto.Topic.REPORTED), b"payload", props),
        "key": None,
        "conn": (NAME, b"payload", tuple({**values, proto.PROP_CONN: "conn-2"}.items())),
        "ts": (NAME, b"payload", tuple({**values, proto.PROP_TS: "1235"}.items())),
        "close fields": (NAME, b"payload", ((proto.PROP_CLOSE_KIND, "unauthenticated"), *props)),
    }
    for what, case in tampered.items():
        with pytest.raises(proto.BadSignature):
            if case is None:
                proto.verify(proto.device_key("another"), NAME, b"payload", props)
            else:
                proto.verify(KEY, *case)
        assert what
    for missing in (proto.PROP_SIG, proto.PROP_TS, proto.PROP_CONN):
        with pytest.raises(proto.BadSignature, match="unsigned"):
            proto.verify(KEY, NAME, b"payload", tuple((k, v) for k, v in props if k != missing))
    with pytest.raises(proto.BadSignature):
        proto.verify(KEY, NAME, b"payload", tuple({**values, proto.PROP_TS: "-5"}.items()))
    # A BadSignature is an Unauthenticated: permanent, and typed.
    assert issubclass(proto.BadSignature, Unauthenticated)


@pytest.mark.parametrize(
    "error",
    [
        ShuttingDown(),
        ResourceExhausted("slow", retry_after=5.0),
        DeadlineExceeded("late"),
        TransientError("flaky", code="session_unknown", retry_after=0.5),
        InvalidArgument("hello.hardware: empty"),
        Unauthenticated("nope", code="bad_credential"),
        PermanentError("stuck"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_close_notices_carry_the_typed_error(error: EdgefleetError) -> None:
    name = proto.topic("phone-1", proto.Topic.CONTROL)
    fields = proto.close_fields(error)
    envelope = proto.verify(KEY, name, b"", proto.sign(KEY, name, "c", 1, b"", fields))
    back = proto.error_from_close(envelope.close)
    # The most specific standard class comes back (ShuttingDown is the controller's own: a TransientError).
    standard = (
        InvalidArgument,
        Unauthenticated,
        ResourceExhausted,
        DeadlineExceeded,
        TransientError,
        PermanentError,
    )
    expected = next(cls for cls in standard if isinstance(error, cls))
    assert type(back) is expected, (type(back), expected)
    assert (back.code, back.message) == (error.code, error.message)
    if isinstance(error, TransientError):
        assert isinstance(back, TransientError) and back.retry_after == error.retry_after


def test_a_close_notice_with_nonsense_reads_as_transient() -> None:
    back = proto.error_from_close([(proto.PROP_CLOSE_KIND, "bogus"), (proto.PROP_RETRY_AFTER, "1e9")])
    assert isinstance(back, TransientError) and back.retry_after is None
    assert back.message == "the controller ended the session"


def test_payloads_are_bounded_and_the_refusal_names_the_topic() -> None:
    proto.check_payload_size(NAME, b"x" * limits.MAX_MQTT_PAYLOAD_BYTES)
    with pytest.raises(
        proto.PayloadTooLarge, match=rf"^{NAME}: payload of {limits.MAX_MQTT_PAYLOAD_BYTES + 1} bytes"
    ):
        proto.check_payload_size(NAME, b"x" * (limits.MAX_MQTT_PAYLOAD_BYTES + 1))
    assert issubclass(proto.PayloadTooLarge, InvalidArgument)
