"""Controller restarts: state lives in the data dir; connection flags do not survive."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from common.types import Assignment, AssignmentAck, ReportedState, TelemetryAck
from controller.store.sqlite import SqliteStore
from controller.toolchain.digits import DigitsArtifacts
from tests.integration.harness import FakeAgent, FakeClock, run, running_controller, telemetry

pytestmark = pytest.mark.timeout(60)


def test_restart_keeps_devices_models_and_credentials(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with running_controller(tmp_path, clock=clock) as first:
            model = await first.call_admin(first.admin.import_model, digits_model.model_path, name="digits")
            phone = await first.enroll("phone-1")
            spare = await first.enroll("phone-2")
            stream, _ = await phone.online()
            await first.call_admin(first.admin.assign, "phone-1", "digits")
            assignment = await stream.expect(Assignment)
            await stream.send(telemetry(1, 4))
            assert await stream.expect(TelemetryAck) == TelemetryAck(up_to_sequence=4)
            spare_stream, _ = await spare.online()
            devices_before = await first.devices()
            models_before = await first.call_admin(first.admin.list_models)

            # A stop closes the open streams and records the devices as disconnected.
            await first.controller.stop()
            await stream.expect_end()
            await spare_stream.expect_end()
            identity = phone.identity

        # A crash would have left connected flags behind: put one there by hand.
        store = SqliteStore(tmp_path / "controller.db")
        try:
            assert not store.get_device("phone-1").connected
            store.device_connected(
                "phone-2",
                hardware=devices_before["phone-2"].hardware,
                reported=ReportedState(),
                records_dropped=0,
                now_ms=clock.now_ms(),
            )
            assert store.get_device("phone-2").connected
        finally:
            store.close()

        async with running_controller(tmp_path, clock=clock) as second:
            devices = await second.devices()
            assert sorted(devices) == ["phone-1", "phone-2"]
            assert not any(d.connected for d in devices.values())
            phone_after = devices["phone-1"]
            assert phone_after.assignment == assignment
            assert (phone_after.desired_version, phone_after.acked_version) == (1, 0)
            assert (phone_after.records_received, phone_after.last_sequence) == (4, 4)
            assert phone_after.enrolled_at_ms == devices_before["phone-1"].enrolled_at_ms
            assert await second.call_admin(second.admin.list_models) == models_before
            assert second.artifact_files() == [f"sha256/{model.variants[0].sha256}"]

            # The same credential still connects; the unacked assignment follows the welcome.
            phone = FakeAgent(second, identity)
            stream, welcome = await phone.online()
            assert welcome.telemetry_watermark == 4
            assert await stream.expect(Assignment) == assignment
            await stream.send(AssignmentAck(version=1, reported=ReportedState(acked_version=1)))
            await second.wait_device(
                "phone-1", lambda d: d.acked_version == 1 and d.connected, "acked, connected"
            )
            # Artifacts imported before the restart are still served.
            chunks = await phone.fetch(assignment.artifact_sha256)
            assert b"".join(c.data for c in chunks) == digits_model.model_path.read_bytes()

    run(scenario())


def test_stop_is_idempotent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            await fleet.controller.stop()
            await fleet.controller.stop()
            await stream.expect_end()
        # (running_controller stops it a third time.)

    run(scenario())


def test_start_is_idempotent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            controller = fleet.controller
            server, scheduler, port = controller._server, controller._scheduler, controller.port
            try:
                await controller.start()
                assert controller.port == port
                assert controller._server is server
                assert controller._scheduler is scheduler
            finally:  # whatever the second start made, stop the first server and scheduler too
                if controller._scheduler is not scheduler and scheduler is not None:
                    scheduler.shutdown(wait=False)
                if controller._server is not server and server is not None:
                    await server.stop(0)

    run(scenario())


def test_stopped_controller_refuses_connections(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            await fleet.controller.stop()
            stream = agent.connect()
            end = await stream.expect_end()
            assert end.status == grpc.StatusCode.UNAVAILABLE, end

    run(scenario())
