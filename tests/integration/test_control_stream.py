"""The Connect control stream: hello/welcome, assignments and their acks, telemetry, superseding."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from common import limits, serde
from common.errors import InvalidArgument
from common.types import (
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    ControllerMessage,
    Heartbeat,
    ReportedState,
    TelemetryAck,
    Welcome,
)
from controller.service import sync
from controller.service.sync import SyncPolicy
from controller.toolchain.digits import DigitsArtifacts
from tests.integration.harness import (
    POLICY,
    SHA_X,
    FakeAgent,
    Fleet,
    Stream,
    run,
    running_controller,
    telemetry,
)

pytestmark = pytest.mark.timeout(60)

#: An assignment must arrive this fast when it is pushed on assign (the reconcile tick is an hour away).
PROMPT_S = 5.0


async def _digits(fleet: Fleet, digits: DigitsArtifacts) -> str:
    model = await fleet.call_admin(fleet.admin.import_model, digits.model_path, name="digits")
    return model.variants[0].sha256


def _reported(version: int, sha256: str) -> ReportedState:
    return ReportedState(
        acked_version=version, active_sha256=sha256, active_model_name="digits", active_variant="fp32"
    )


async def _assigned(fleet: Fleet, digits: DigitsArtifacts) -> tuple[FakeAgent, Stream, Assignment]:
    """A connected device that has just been sent (and has not acked) assignment v1 of the digits model."""
    sha = await _digits(fleet, digits)
    agent = await fleet.enroll("phone-1")
    stream, _ = await agent.online()
    result = await fleet.call_admin(fleet.admin.assign, "phone-1", "digits")
    assert result.changed
    assignment = await stream.expect(Assignment, wait_s=PROMPT_S)
    assert assignment.artifact_sha256 == sha
    return agent, stream, assignment


def test_first_message_must_be_a_hello(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            for first in (Heartbeat(sent_at_ms=1), telemetry(1, 1)):
                stream = agent.connect()
                await stream.send(first)
                end = await stream.expect_end()
                assert end.status == grpc.StatusCode.INVALID_ARGUMENT, end
                assert isinstance(end.error, InvalidArgument)
                assert "hello" in end.details
            assert (await fleet.device("phone-1")).records_received == 0
            assert not (await fleet.device("phone-1")).connected

    run(scenario())


def test_empty_agent_message_is_invalid_argument(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            await stream.send_pb(serde.controller_pb.AgentMessage())
            end = await stream.expect_end()
            assert end.status == grpc.StatusCode.INVALID_ARGUMENT, end
            await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")

    run(scenario())


def test_hello_is_welcomed_and_connection_is_tracked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            enrolled_at = (await fleet.device("phone-1")).last_seen_ms
            fleet.clock.advance(7)
            stream, welcome = await agent.online()
            assert welcome == Welcome(
                heartbeat_interval_ms=POLICY.heartbeat_interval_ms, telemetry_watermark=0
            )
            device = (await fleet.devices())["phone-1"]
            assert device.connected
            assert device.last_seen_ms == enrolled_at + 7000
            await stream.expect_nothing_else()  # nothing assigned: nothing else to say

            await stream.send(Heartbeat(sent_at_ms=0))
            fleet.clock.advance(3)
            await stream.close()
            device = await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")
            assert device.last_seen_ms == enrolled_at + 10_000
            assert fleet.controller.hub.connected_count == 0

    run(scenario())


def test_heartbeats_are_answered_with_what_is_stored_so_a_silent_controller_can_be_told(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            await stream.send(Heartbeat(sent_at_ms=0))
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=0)
            await stream.send(telemetry(1, 5))
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=5)
            await stream.send(Heartbeat(sent_at_ms=0))
            # The answer repeats what the device has already been told: acking it again is harmless.
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=5)
            await stream.expect_nothing_else()

    run(scenario())


def test_half_closed_stream_disconnects_the_device(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            await stream.call.done_writing()
            end = await stream.expect_end()
            assert end.status == grpc.StatusCode.OK, end
            await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")

    run(scenario())


def test_assignment_is_pushed_on_assign_and_resent_until_acked(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            hub = fleet.controller.hub
            agent, stream, assignment = await _assigned(fleet, digits_model)
            sha = assignment.artifact_sha256
            assert assignment == Assignment(
                version=1,
                model_name="digits",
                variant="fp32",
                artifact_sha256=sha,
                artifact_size_bytes=digits_model.model_path.stat().st_size,
            )
            device = await fleet.device("phone-1")
            assert (device.desired_version, device.acked_version) == (1, 0)

            # Not acked, but not yet overdue: a reconcile pass sends nothing.
            fleet.clock.advance(POLICY.resend_after_s - 0.5)
            await hub.reconcile()
            await stream.expect_nothing_else()
            # Overdue: the same assignment again.
            fleet.clock.advance(1.0)
            await hub.reconcile()
            assert await stream.expect(Assignment) == assignment
            await hub.reconcile()  # just resent: not again right away
            await stream.expect_nothing_else()

            await stream.send(AssignmentAck(version=1, reported=_reported(1, sha)))
            device = await fleet.wait_device("phone-1", lambda d: d.acked_version == 1, "acked v1")
            assert device.converged
            assert device.reported.active_sha256 == sha
            fleet.clock.advance(POLICY.resend_after_s * 3)
            await stream.send(Heartbeat(sent_at_ms=0))  # keep the stream alive in fake time
            await hub.reconcile()
            await stream.expect_nothing_else()

            # Assigning the same thing again changes nothing and pushes nothing.
            again = await fleet.call_admin(fleet.admin.assign, "phone-1", "digits")
            assert not again.changed
            assert again.device.desired_version == 1
            await stream.expect_nothing_else()
            assert agent.device_id == "phone-1"

    run(scenario())


def test_new_variant_is_pushed_as_the_next_version(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            _, stream, first = await _assigned(fleet, digits_model)
            await stream.send(AssignmentAck(version=1, reported=_reported(1, first.artifact_sha256)))
            await fleet.wait_device("phone-1", lambda d: d.acked_version == 1, "acked v1")
            await fleet.call_admin(
                fleet.admin.import_model, digits_model.model_path, name="digits", variant="alt"
            )
            await fleet.call_admin(fleet.admin.assign, "phone-1", "digits", "alt")
            second = await stream.expect(Assignment, wait_s=PROMPT_S)
            assert (second.version, second.variant) == (2, "alt")
            assert second.artifact_sha256 == first.artifact_sha256

    run(scenario())


def test_failed_ack_is_recorded_and_not_resent(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            _, stream, _ = await _assigned(fleet, digits_model)
            await stream.send(
                AssignmentAck(
                    version=1,
                    reported=ReportedState(acked_version=1),
                    failure=AssignmentFailure.LOAD_FAILED,
                    message="onnxruntime said no",
                )
            )
            device = await fleet.wait_device("phone-1", lambda d: d.acked_version == 1, "acked v1")
            assert device.last_failure is AssignmentFailure.LOAD_FAILED
            assert device.last_failure_message == "onnxruntime said no"
            assert device.failed_version == 1
            fleet.clock.advance(POLICY.resend_after_s * 2)
            await fleet.controller.hub.reconcile()
            await stream.expect_nothing_else()

    run(scenario())


def test_scheduled_reconcile_resends_without_being_called(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path, reconcile_interval_s=0.05) as fleet:
            _, stream, assignment = await _assigned(fleet, digits_model)
            fleet.clock.advance(POLICY.resend_after_s + 1)
            assert await stream.expect(Assignment, wait_s=PROMPT_S) == assignment

    run(scenario())


def test_reconnect_resends_only_what_the_device_lacks(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent, stream, assignment = await _assigned(fleet, digits_model)
            sha = assignment.artifact_sha256
            await stream.send(AssignmentAck(version=1, reported=_reported(1, sha)))
            await fleet.wait_device("phone-1", lambda d: d.acked_version == 1, "acked v1")
            await stream.close()
            await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")

            # Reconnects having applied v1: nothing to send, not even after a resend period.
            stream, _ = await agent.online(reported=_reported(1, sha))
            await stream.expect_nothing_else()
            fleet.clock.advance(POLICY.resend_after_s + 1)
            await fleet.controller.hub.reconcile()
            await stream.expect_nothing_else()
            await stream.close()

            # Reconnects wiped (acked 0): the assignment comes right behind the welcome.
            stream, _ = await agent.online(acked_version=0)
            assert await stream.expect(Assignment, wait_s=PROMPT_S) == assignment
            device = await fleet.device("phone-1")
            assert (device.desired_version, device.acked_version) == (1, 0)

            # A device cannot claim a version that was never desired.
            await stream.close()
            stream, _ = await agent.online(acked_version=7)
            assert await stream.expect(Assignment, wait_s=PROMPT_S) == assignment
            assert (await fleet.device("phone-1")).acked_version == 0

    run(scenario())


def test_telemetry_is_acked_stored_once_and_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            await stream.send(telemetry(1, 5))
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=5)
            device = await fleet.device("phone-1")
            assert (device.records_received, device.last_sequence) == (5, 5)

            # A retransmission is acked again and stored once.
            await stream.send(telemetry(1, 5))
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=5)
            # Overlapping: only 6 and 7 are new.
            await stream.send(telemetry(4, 7))
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=7)
            device = await fleet.device("phone-1")
            assert (device.records_received, device.last_sequence) == (7, 7)

            # One record over the batch limit ends the stream and stores nothing of it.
            await stream.send(telemetry(8, 8 + limits.MAX_TELEMETRY_BATCH))
            end = await stream.expect_end()
            assert end.status == grpc.StatusCode.INVALID_ARGUMENT, end
            assert isinstance(end.error, InvalidArgument)
            device = await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")
            assert (device.records_received, device.last_sequence) == (7, 7)

            stream, welcome = await agent.online(watermark=5)
            assert welcome.telemetry_watermark == 7
            # Exactly the limit is fine.
            await stream.send(telemetry(8, 7 + limits.MAX_TELEMETRY_BATCH))
            ack = await stream.expect(TelemetryAck)
            assert ack.up_to_sequence == 7 + limits.MAX_TELEMETRY_BATCH
            device = await fleet.device("phone-1")
            assert device.records_received == 7 + limits.MAX_TELEMETRY_BATCH

    run(scenario())


def test_welcome_watermark_is_what_was_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, welcome = await agent.online()
            assert welcome.telemetry_watermark == 0
            await stream.send(telemetry(1, 5))
            await stream.expect(TelemetryAck)
            await stream.close()
            _, welcome = await agent.online(watermark=2)
            assert welcome.telemetry_watermark == 5

    run(scenario())


def test_second_connect_supersedes_the_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            old, _ = await agent.online()
            replacement = FakeAgent(fleet, agent.identity)  # same device, new connection
            new, _ = await replacement.online()
            await old.expect_end()
            assert fleet.controller.hub.connected_count == 1

            # The old stream's teardown did not mark the device disconnected; the new one works.
            assert (await fleet.device("phone-1")).connected
            await new.send(telemetry(1, 3))
            assert await new.expect(TelemetryAck) == TelemetryAck(up_to_sequence=3)
            assert (await fleet.device("phone-1")).connected

            await new.close()
            await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")

    run(scenario())


def test_superseding_stream_that_dies_before_hello_leaves_device_disconnected(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            old, _ = await agent.online()
            new = FakeAgent(fleet, agent.identity).connect()
            await old.expect_end()
            await new.send(Heartbeat(sent_at_ms=0))  # not a hello: refused
            assert (await new.expect_end()).status == grpc.StatusCode.INVALID_ARGUMENT
            assert fleet.controller.hub.connected_count == 0
            # No stream of this device is open any more.
            await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected", wait_s=1.0)

    run(scenario())


def test_silent_stream_is_closed_by_reconcile(tmp_path: Path) -> None:
    async def scenario() -> None:
        policy = SyncPolicy(heartbeat_interval_ms=1_000, resend_after_s=5.0, liveness_intervals=3.0)
        async with running_controller(tmp_path, policy=policy) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, welcome = await agent.online()
            assert welcome.heartbeat_interval_ms == 1_000
            hub = fleet.controller.hub
            session = hub.session("phone-1")
            assert session is not None
            fleet.clock.advance(2.5)
            await hub.reconcile()
            assert not session.closed  # a reconcile pass that returned has closed whatever it closes
            assert (await fleet.device("phone-1")).connected
            await stream.expect_nothing_else()  # the stream works (and the device was just heard from)
            fleet.clock.advance(2.9)
            await hub.reconcile()
            assert not session.closed
            fleet.clock.advance(0.2)  # 3.1 s without a word > 3 intervals
            await hub.reconcile()
            assert session.closed
            await stream.expect_end()
            await fleet.wait_device("phone-1", lambda d: not d.connected, "disconnected")
            assert fleet.controller.hub.connected_count == 0

    run(scenario())


def test_assignment_landing_while_the_hello_is_handled_is_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Assign commits and kicks while the store is still answering the device's hello: the kick finds no
    hello yet, so the hub must look again once it has answered, not wait for the next reconcile tick."""

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            hub, store = fleet.controller.hub, fleet.controller.db.store
            loop = asyncio.get_running_loop()
            real_on_hello = sync.on_hello

            def on_hello_then_assign(*args: Any, **kwargs: Any) -> list[ControllerMessage]:
                # On the store thread, right after on_hello read the device: what AdminApi.Assign does
                # (store the assignment, then kick the hub), landing before the hello's answer is sent.
                replies = real_on_hello(*args, **kwargs)
                store.set_assignment(
                    "phone-1",
                    model_name="digits",
                    variant="fp32",
                    artifact_sha256=SHA_X,
                    artifact_size_bytes=9,
                )
                loop.call_soon_threadsafe(lambda: loop.create_task(hub.kick("phone-1")))
                return replies

            monkeypatch.setattr(sync, "on_hello", on_hello_then_assign)
            stream, _ = await agent.online()
            assignment = await stream.expect(
                Assignment, wait_s=PROMPT_S
            )  # the reconcile tick is an hour away
            assert (assignment.version, assignment.artifact_sha256) == (1, SHA_X)
            await stream.expect_nothing_else()  # and only once

    run(scenario())


def test_failed_version_is_retried_by_assigning_it_again(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            _, stream, first = await _assigned(fleet, digits_model)
            failed = ReportedState(acked_version=1)
            await stream.send(
                AssignmentAck(version=1, reported=failed, failure=AssignmentFailure.FETCH_FAILED)
            )
            await fleet.wait_device("phone-1", lambda d: d.last_failure is not None, "failure recorded")

            retry = await fleet.call_admin(fleet.admin.assign, "phone-1", "digits")
            assert retry.changed
            assert retry.device.desired_version == 2
            pushed = await stream.expect(Assignment, wait_s=PROMPT_S)
            assert pushed == replace(first, version=2)
            # Asking again before the device answered is the same retry.
            again = await fleet.call_admin(fleet.admin.assign, "phone-1", "digits")
            assert (again.changed, again.device.desired_version) == (False, 2)
            await stream.expect_nothing_else()

            await stream.send(AssignmentAck(version=2, reported=_reported(2, first.artifact_sha256)))
            device = await fleet.wait_device("phone-1", lambda d: d.acked_version == 2, "acked v2")
            assert device.last_failure is None

    run(scenario())


@pytest.mark.parametrize("scan_above", [sync.SCAN_WHOLE_FLEET_ABOVE, 0], ids=["by-ids", "whole-fleet-scan"])
def test_reconcile_pass_is_one_store_call(
    tmp_path: Path, digits_model: DigitsArtifacts, monkeypatch: pytest.MonkeyPatch, scan_above: int
) -> None:
    # A large fleet is read in one scan and filtered to the connected devices: same answer.
    monkeypatch.setattr(sync, "SCAN_WHOLE_FLEET_ABOVE", scan_above)

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            sha = await _digits(fleet, digits_model)
            streams: dict[str, Stream] = {}
            for i in range(6):
                agent = await fleet.enroll(f"phone-{i}")
                streams[agent.device_id], _ = await agent.online()
            for device_id in ("phone-1", "phone-4"):
                await fleet.call_admin(fleet.admin.assign, device_id, "digits")
                assert (await streams[device_id].expect(Assignment)).version == 1
            await streams["phone-4"].send(AssignmentAck(version=1, reported=_reported(1, sha)))
            await fleet.wait_device("phone-4", lambda d: d.converged, "acked v1")

            db = fleet.controller.db
            calls: list[str] = []
            real_run = db.run

            async def counting_run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                calls.append(getattr(fn, "__name__", repr(fn)))
                return await real_run(fn, *args, **kwargs)

            monkeypatch.setattr(db, "run", counting_run)
            fleet.clock.advance(POLICY.resend_after_s + 1)
            await fleet.controller.hub.reconcile()
            assert calls == ["due_for"]  # unacked assignments and unanswered profile requests at once
            # ... and that one call found the one device still owing an ack.
            assert (await streams["phone-1"].expect(Assignment)).version == 1
            monkeypatch.setattr(db, "run", real_run)
            for stream in streams.values():
                await stream.expect_nothing_else()

    run(scenario())
