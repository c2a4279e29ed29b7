"""What only the MQTT transport has: the retained desired state, the last will, broker restarts,
signed envelopes (forgeries, replays, clock skew, unknown devices), payload limits, many agents on
one loop. Each test has its own Mosquitto and controller; the agent side is ``MqttTransport``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.transport.mqtt import MqttConfig, MqttConnection, MqttTransport
from common import limits, serde
from common.errors import InvalidArgument, TransientError, Unauthenticated
from common.mqtt import protocol as proto
from common.mqtt.client import AsyncClient, Settings, _Ticker
from common.types import (
    Assignment,
    AssignmentAck,
    BlockTiming,
    DeviceIdentity,
    Heartbeat,
    Hello,
    ProfileReport,
    ReportedState,
    TelemetryAck,
    Welcome,
)
from simulator.broker import Mosquitto
from tests.integration.harness import HW, telemetry, write_add_model
from tests.transport.conformance import Harness, eventually, expect, expect_end, receive, run_clean
from tests.transport.mqtt_kit import Observer, bridge_of, mqtt_harness

pytestmark = pytest.mark.timeout(60)


async def _assign(h: Harness, tmp_path: Path, device_id: str) -> str:
    model = await h.fleet.call_admin(
        h.fleet.admin.import_model, write_add_model(tmp_path / "m.onnx", 8), name="m"
    )
    assert (await h.fleet.call_admin(h.fleet.admin.assign, device_id, "m")).changed
    return model.variants[0].sha256


def _mqtt(connection: object) -> MqttConnection:
    assert isinstance(connection, MqttConnection) and connection.client is not None
    return connection


# --- the retained desired state ----------------------------------------------------------------------


def test_the_retained_desired_assignment_reaches_an_agent_that_connects_later(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Assigned while it was offline, the device gets its assignment from the broker the moment it
    connects, even with the controller stopped: the desired state lives on the broker."""

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            identity = await h.enroll("phone-1")  # never connected
            observer = await Observer(mosquitto).start(proto.topic("phone-1", proto.Topic.DESIRED))
            sha = await _assign(h, tmp_path, "phone-1")
            published = await observer.expect(lambda m: m.retain or bool(m.payload), "the desired state")
            assert serde.controller_message_from_bytes(published.payload).artifact_sha256 == sha  # type: ignore[union-attr]
            await observer.aclose()
            await h.controller.stop()  # nobody answers a hello from now on
            early = MqttTransport(MqttConfig(mosquitto.host, mosquitto.port, desired_before_welcome=True))
            connection = await early.connect(identity)
            assignment = await expect(connection, Assignment)
            assert (assignment.version, assignment.artifact_sha256) == (1, sha)
            connection.close()
            await early.aclose()

    run_clean(scenario())


def test_the_desired_state_waits_for_the_welcome_and_is_dropped_when_already_applied(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The core takes nothing before its welcome: by default the connection holds the retained desired
    assignment until the welcome, then delivers it — unless the hello already said it is applied."""

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            identity = await h.enroll("phone-1")
            sha = await _assign(h, tmp_path, "phone-1")
            bridge = bridge_of(h)
            await eventually(
                lambda: bridge._published_desired.get("phone-1") == 1, "the desired state published"
            )
            connection, _ = await h.online(identity)  # the welcome comes first ...
            assignment = await expect(connection, Assignment)  # ... then the assignment
            assert (assignment.version, assignment.artifact_sha256) == (1, sha)
            connection.send(AssignmentAck(version=1, reported=ReportedState(acked_version=1)))
            await h.fleet.wait_device("phone-1", lambda d: d.acked_version == 1, "the ack")
            connection.close()
            await h.connected("phone-1", False)
            # Reconnecting with v1 applied: the retained v1 is not delivered again.
            again, _ = await h.online(identity, acked_version=1)
            again.send(telemetry(1, 1))
            assert await expect(again, TelemetryAck) == TelemetryAck(up_to_sequence=1)  # nothing before it
            again.close()

    run_clean(scenario())


def test_the_desired_state_is_republished_when_the_broker_lost_it(tmp_path: Path) -> None:
    """A broker restarted without persistence has lost every retained message and the bridge's session;
    the bridge notices (a new session) and publishes the desired state of every device again."""
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.start()

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, broker, reconnect_base_s=0.05, reconnect_cap_s=0.2) as h:
            await h.enroll("phone-1")
            sha = await _assign(h, tmp_path, "phone-1")
            bridge = bridge_of(h)
            await eventually(
                lambda: bridge._published_desired.get("phone-1") == 1, "the desired state published"
            )
            broker.restart()
            await eventually(lambda: bridge.connections == 2 and bridge.connected, "the bridge back")
            # The bridge's republish may reach the broker before or after this subscription.
            observer = await Observer(broker).start(
                proto.topic("phone-1", proto.Topic.DESIRED), retain_as_published=True
            )
            message = await observer.expect(lambda m: m.retain, "the retained desired state again")
            assert serde.controller_message_from_bytes(message.payload).artifact_sha256 == sha  # type: ignore[union-attr]
            await observer.aclose()

    try:
        run_clean(scenario())
    finally:
        broker.close()


def test_a_republish_cut_short_by_the_broker_is_finished_on_the_next_connection(tmp_path: Path) -> None:
    """A republish of every device that loses the broker half-way is finished when the bridge is back,
    even on a resumed session (which says nothing about the retained messages still missing)."""
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, broker, reconnect_base_s=0.05, reconnect_cap_s=0.2) as h:
            await h.enroll("phone-1")
            await _assign(h, tmp_path, "phone-1")
            bridge = bridge_of(h)
            await eventually(
                lambda: bridge._published_desired.get("phone-1") == 1, "the desired state published"
            )
            broker.stop()
            await eventually(lambda: not bridge.connected, "the bridge noticed")
            # What a new session's republish does, cut short because the broker is gone.
            bridge._published_desired.clear()
            await bridge._republish_desired(None)
            assert "phone-1" not in bridge._published_desired
            broker.start()
            await eventually(lambda: bridge.connections == 2 and bridge.connected, "the bridge back")
            await eventually(
                lambda: bridge._published_desired.get("phone-1") == 1, "the desired state published again"
            )

    try:
        run_clean(scenario())
    finally:
        broker.close()


# --- offline detection ------------------------------------------------------------------------------


def test_the_last_will_marks_an_abruptly_gone_agent_offline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            observer = await Observer(mosquitto).start(proto.topic("phone-1", proto.Topic.STATUS))
            connection, _ = await h.online(await h.enroll("phone-1"))
            online = await observer.expect(lambda m: m.payload == proto.STATUS_ONLINE, "online")
            _mqtt(connection).client.abort()  # type: ignore[union-attr]  # the TCP connection drops, no goodbye
            will = await observer.expect(lambda m: m.payload == proto.STATUS_OFFLINE, "the last will")
            assert (
                dict(will.user_properties)[proto.PROP_CONN] == dict(online.user_properties)[proto.PROP_CONN]
            )
            await h.connected("phone-1", False)  # at once, not after the liveness timeout
            assert isinstance(await expect_end(connection), TransientError)
            connection.close()
            await observer.aclose()

    run_clean(scenario())


def test_a_hung_agent_is_marked_offline_by_the_broker_keepalive(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The agent stops talking without closing anything (hung, or its link black-holed): the broker's
    keepalive (1.5 x 1 s here, checked by Mosquitto every few seconds) gives up on it and publishes
    its will."""

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto, agent={"keepalive_s": 1}) as h:
            connection, _ = await h.online(await h.enroll("phone-1"))
            client = _mqtt(connection).client
            assert client is not None and client._loop is not None
            # Freeze it: its socket is no longer served, nor are its pings sent.
            client._loop.remove_reader(client._sock)
            client._loop.remove_writer(client._sock)
            _Ticker.unregister(client)
            started = time.monotonic()
            await h.fleet.wait_device("phone-1", lambda d: not d.connected, "offline", wait_s=15)
            # Mosquitto checks keepalives every few seconds; the hub's own liveness would take 30 s.
            assert time.monotonic() - started < 12
            client.abort()
            connection.close()

    run_clean(scenario())


# --- the broker going away ---------------------------------------------------------------------------


def test_a_broker_restart_ends_the_connection_and_agents_come_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto, reconnect_base_s=0.05, reconnect_cap_s=0.2) as h:
            identity = await h.enroll("phone-1")
            connection, _ = await h.online(identity)
            mosquitto.restart()
            error = await expect_end(connection)
            assert isinstance(error, TransientError), error
            connection.close()
            bridge = bridge_of(h)
            await eventually(lambda: bridge.connections == 2 and bridge.connected, "the bridge back")
            again, _ = await h.online(identity)
            again.send(telemetry(1, 2))
            assert await expect(again, TelemetryAck) == TelemetryAck(up_to_sequence=2)
            again.close()

    run_clean(scenario())


def test_the_controller_restarting_under_a_live_connection_asks_for_a_new_hello(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The bridge restarted and knows nothing of this connection: its next message is answered with
    ``session_unknown`` (transient), so the agent says hello again."""

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            identity = await h.enroll("phone-1")
            connection = await h.transport().connect(identity)
            connection.send(Hello(hardware=HW, reported=ReportedState()))
            await expect(connection, Welcome)
            bridge = bridge_of(h)
            bridge._devices.clear()  # what a restarted bridge knows of it
            connection.send(Heartbeat(sent_at_ms=1))
            error = await expect_end(connection)
            assert isinstance(error, TransientError) and error.code == "session_unknown", error
            assert error.retry_after == 1.0
            connection.close()

    run_clean(scenario())


# --- signed envelopes --------------------------------------------------------------------------------


def test_forged_messages_are_dropped_both_ways(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            identity = await h.enroll("phone-1")
            connection, _ = await h.online(identity)
            real = _mqtt(connection)
            rogue = AsyncClient(
                Settings(mosquitto.host, mosquitto.port, "rogue", clean_start=True), lambda m: None
            )
            await rogue.connect()
            # To the controller: telemetry for phone-1, on its live connection id, signed with a wrong
            # key; and one not signed at all.
            name = proto.topic("phone-1", proto.Topic.TELEMETRY)
            payload = serde.agent_message_to_bytes(telemetry(1, 5))
            rogue.publish(
                name,
                payload,
                user_properties=proto.sign(proto.device_key("guess"), name, real.conn, 1, payload),
            )
            rogue.publish(name, payload)
            # To the agent: a welcome that is not the controller's.
            control = proto.topic("phone-1", proto.Topic.CONTROL)
            fake = serde.controller_message_to_bytes(Welcome(1, 999))
            rogue.publish(
                control,
                fake,
                user_properties=proto.sign(proto.device_key("guess"), control, real.conn, 1, fake),
            )
            await rogue.drain()
            bridge = bridge_of(h)
            await eventually(lambda: bridge.refused["bad_signature"] >= 2, "both forgeries dropped")
            await eventually(lambda: real.refused >= 1, "the fake welcome refused")
            # The real session is unharmed and stored nothing of the forgeries.
            connection.send(telemetry(1, 1))
            assert await expect(connection, TelemetryAck) == TelemetryAck(up_to_sequence=1)
            assert (await h.fleet.device("phone-1")).records_received == 1
            await rogue.disconnect()
            connection.close()

    run_clean(scenario())


def test_a_replayed_hello_cannot_take_over_the_session(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            identity = await h.enroll("phone-1")
            observer = await Observer(mosquitto).start(proto.topic("phone-1", proto.Topic.REPORTED))
            first, _ = await h.online(identity)
            recorded = await observer.expect(lambda m: True, "the hello, as an eavesdropper sees it")
            first.close()
            await h.connected("phone-1", False)
            current, _ = await h.online(identity)
            session = h.controller.hub.session("phone-1")
            observer.client.publish(
                recorded.topic, recorded.payload, user_properties=recorded.user_properties
            )
            bridge = bridge_of(h)
            await eventually(lambda: bridge.refused["replay"] == 1, "the replay refused")
            assert h.controller.hub.session("phone-1") is session
            current.send(telemetry(1, 1))
            assert await expect(current, TelemetryAck) == TelemetryAck(up_to_sequence=1)
            current.close()
            await observer.aclose()

    run_clean(scenario())


def test_a_hello_from_a_clock_far_off_is_refused_with_a_reason(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto, hello_max_skew_s=60.0) as h:
            identity = await h.enroll("phone-1")
            skewed = MqttTransport(
                MqttConfig(mosquitto.host, mosquitto.port),
                wall_clock_ms=lambda: time.time_ns() // 1_000_000 - 3_600_000,
            )
            connection = await skewed.connect(identity)
            connection.send(Hello(hardware=HW, reported=ReportedState()))
            error = await expect_end(connection)
            assert isinstance(error, TransientError) and error.code == "clock_skew", error
            assert "3600s behind" in error.message and error.retry_after == 30.0
            connection.close()
            await skewed.aclose()

    run_clean(scenario())


def test_an_unknown_device_is_refused_but_never_for_good(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The controller cannot sign a refusal for a credential it does not know, so the agent cannot tell
    it from a forgery: it reads as transient (a reconnect later), never as the permanent refusal that
    would stop the agent."""

    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            await h.enroll("phone-1")
            for identity in (
                DeviceIdentity("phone-1", "efd_wrong"),  # enrolled, wrong credential
                DeviceIdentity("ghost-1", "efd_whatever"),  # never enrolled
            ):
                connection = await h.transport().connect(identity)
                connection.send(Hello(hardware=HW, reported=ReportedState()))
                error = await expect_end(connection)
                assert isinstance(error, TransientError) and not isinstance(error, Unauthenticated), error
                assert error.code == "unverified_bad_credential" and (error.retry_after or 0) >= 5.0
                connection.close()
            assert not (await h.fleet.device("phone-1")).connected

    run_clean(scenario())


# --- limits ------------------------------------------------------------------------------------------


def test_oversized_payloads_are_refused_naming_the_topic(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            connection, _ = await h.online(await h.enroll("phone-1"))
            # 3000 timings with long error texts: well over the 1 MiB payload limit once encoded.
            big = ProfileReport(
                "r1",
                "m",
                timings=tuple(BlockTiming(0, i + 1, "fp32", 1, 0.0, "e" * 500) for i in range(3000)),
            )
            with pytest.raises(
                proto.PayloadTooLarge, match=r"^edgefleet/v1/devices/phone-1/profile: payload of"
            ):
                connection.send(big)
            connection.send(telemetry(1, 1))  # the connection is fine: the next message goes
            assert await expect(connection, TelemetryAck) == TelemetryAck(up_to_sequence=1)
            # The bridge refuses one that skipped the agent's check (still within the broker's packet limit).
            real = _mqtt(connection)
            name = proto.topic("phone-1", proto.Topic.TELEMETRY)
            real._publish(name, b"\0" * (limits.MAX_MQTT_PAYLOAD_BYTES + 1))
            error = await expect_end(connection)
            assert isinstance(error, InvalidArgument), error
            assert error.message.startswith(f"{name}: payload of") and error.code == "payload_too_large"
            connection.close()

    run_clean(scenario())


def test_hundreds_of_agents_on_one_loop(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with mqtt_harness(tmp_path, mosquitto) as h:
            identities = [await h.enroll(f"phone-{i}") for i in range(200)]
            transport = h.transport()
            threads = threading.active_count()
            started = time.monotonic()
            connections = await asyncio.gather(*(transport.connect(identity) for identity in identities))
            for connection in connections:
                connection.send(Hello(hardware=HW, reported=ReportedState()))
            welcomes = await asyncio.gather(*(receive(c) for c in connections))
            took = time.monotonic() - started
            assert all(isinstance(w, Welcome) for w in welcomes)
            assert threading.active_count() == threads, "threads grew with the agents"
            devices = await h.fleet.devices()
            assert sum(d.connected for d in devices.values()) == 200
            print(f"200 MQTT agents connected and welcomed from one loop in {took:.2f}s")
            for connection in connections:
                connection.close()
            await transport.aclose()
            await eventually(_all_disconnected(h), "every agent's goodbye recorded")

    run_clean(scenario(), timeout=50)


def _all_disconnected(h: Harness) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not any(d.connected for d in (await h.fleet.devices()).values())

    return check
