"""The rules every control transport keeps, as one suite (Flower's linkstate_test.py pattern): a base
class with the tests, subclassed per implementation (``test_conformance.py``), each against a real
controller — the hub, the store and the transport's controller end (gRPC servicer, MQTT bridge with a
real Mosquitto, in-process server) — driven through the agent-side ``Transport`` interface.

A subclass provides ``harness`` (an async context manager yielding a ``Harness``) and, where its
transport can carry them, ``send_garbage`` / ``deliver_garbage`` (bytes that are no protobuf
message at all). Every scenario runs under a deadline, waits on messages and store state (never a
sleep), and ends with no task left behind (``run_clean``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.transport import ChannelClosed, ChannelFull, Connection, Transport
from common.errors import EdgefleetError, InvalidArgument, ResourceExhausted, TransientError
from common.types import (
    Assignment,
    AssignmentAck,
    ControllerMessage,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    ReportedState,
    TelemetryAck,
    Welcome,
)
from controller.server import Controller
from tests.integration.harness import HW, POLICY, Fleet, telemetry, write_add_model

T = TypeVar("T")

#: Every wait for a message or a state change is bounded by this.
WAIT_S = 10.0
#: A whole scenario is bounded by this (pytest-timeout is the outer guard).
SCENARIO_S = 40.0


def run_clean(coro: Coroutine[Any, Any, None], *, timeout: float = SCENARIO_S) -> None:
    """Run a scenario on a fresh loop under a deadline; fail if it leaves any task running."""

    async def checked() -> None:
        await asyncio.wait_for(coro, timeout)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"tasks left running: {leftover}"

    asyncio.run(checked())


async def receive(connection: Connection, wait_s: float = WAIT_S) -> ControllerMessage:
    return await asyncio.wait_for(connection.receive(), wait_s)


async def expect(connection: Connection, cls: type[T], wait_s: float = WAIT_S) -> T:
    message = await receive(connection, wait_s)
    assert isinstance(message, cls), f"expected a {cls.__name__}, got {message!r}"
    return message


async def expect_end(connection: Connection, wait_s: float = WAIT_S) -> EdgefleetError:
    """The typed error the connection ends with (skipping nothing: a message first is a failure)."""
    try:
        message = await receive(connection, wait_s)
    except EdgefleetError as exc:
        return exc
    raise AssertionError(f"expected the connection to end, got {message!r}")


async def eventually(check: Callable[[], Any], what: str, within: float = WAIT_S) -> Any:
    """Wait until ``check()`` (sync or async) is truthy; each retry waits for the loop to move on."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = check()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


@dataclass
class Harness:
    """A running controller, its admin client, and a factory for the transport under test."""

    fleet: Fleet
    make_transport: Callable[[int], Transport]
    transports: list[Transport] = field(default_factory=list)

    @property
    def controller(self) -> Controller:
        return self.fleet.controller

    def transport(self, *, max_queued: int = 1024) -> Transport:
        transport = self.make_transport(max_queued)
        self.transports.append(transport)
        return transport

    async def enroll(self, device_id: str) -> DeviceIdentity:
        return await self.fleet.enroll_call(await self.fleet.token(), device_id)

    async def online(
        self, identity: DeviceIdentity, transport: Transport | None = None, **hello: Any
    ) -> tuple[Connection, Welcome]:
        connection = await (transport or self.transport()).connect(identity)
        connection.send(Hello(hardware=HW, reported=ReportedState(**hello)))
        return connection, await expect(connection, Welcome)

    async def connected(self, device_id: str, value: bool = True) -> None:
        await self.fleet.wait_device(device_id, lambda d: d.connected is value, f"connected={value}")

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


class TransportConformance(abc.ABC):
    """Subclass per transport; pytest collects the tests below for each subclass."""

    #: Whether bytes from the controller that are no message end the connection (stream transports)
    #: or are refused and dropped, the connection staying up (MQTT: a retained one would else loop).
    bad_controller_payload_ends_connection = True
    #: What a connection whose first message is not a hello ends with: the stream transports refuse the
    #: message (InvalidArgument); MQTT, where the controller may simply have restarted under a live
    #: connection, says ``session_unknown`` (transient: say hello again).
    first_message_error: type[EdgefleetError] = InvalidArgument

    @abc.abstractmethod
    def harness(self, tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Harness]:
        """A running controller with this transport's controller end."""

    async def send_garbage(self, h: Harness, connection: Connection) -> None:
        """Make ``connection`` carry bytes that are no protobuf AgentMessage to the controller."""
        pytest.skip("this transport cannot carry a payload that is not a message")

    async def deliver_garbage(self, h: Harness, identity: DeviceIdentity, connection: Connection) -> None:
        """Make the controller's end deliver bytes that are no ControllerMessage to ``connection``."""
        pytest.skip("this transport's controller end cannot be made to send such a payload")

    # --- hello / welcome ---------------------------------------------------------------------------

    def test_hello_is_welcomed_and_the_device_is_connected(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, welcome = await h.online(identity)
                assert welcome == Welcome(
                    heartbeat_interval_ms=POLICY.heartbeat_interval_ms, telemetry_watermark=0
                )
                await h.connected("phone-1")
                connection.close()

        run_clean(scenario())

    def test_the_first_message_must_be_a_hello(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection = await h.transport().connect(identity)
                connection.send(Heartbeat(sent_at_ms=1))
                error = await expect_end(connection)
                assert isinstance(error, self.first_message_error), error
                connection.close()
                connection, _ = await h.online(identity)  # and saying hello afterwards works
                connection.close()

        run_clean(scenario())

    # --- assignments -------------------------------------------------------------------------------

    def test_assignment_is_delivered_and_its_ack_recorded(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                model = await h.fleet.call_admin(
                    h.fleet.admin.import_model, write_add_model(tmp_path / "m.onnx", 8), name="m"
                )
                sha = model.variants[0].sha256
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                result = await h.fleet.call_admin(h.fleet.admin.assign, "phone-1", "m")
                assert result.changed
                assignment = await expect(connection, Assignment)
                assert (assignment.version, assignment.artifact_sha256) == (1, sha)
                reported = ReportedState(
                    acked_version=1, active_sha256=sha, active_model_name="m", active_variant="fp32"
                )
                connection.send(AssignmentAck(version=1, reported=reported))
                device = await h.fleet.wait_device("phone-1", lambda d: d.acked_version == 1, "the ack")
                assert device.reported.active_sha256 == sha
                connection.close()

        run_clean(scenario())

    # --- telemetry ---------------------------------------------------------------------------------

    def test_telemetry_is_acked_once_stored_and_stored_once(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                connection.send(telemetry(1, 3))
                assert await expect(connection, TelemetryAck) == TelemetryAck(up_to_sequence=3)
                connection.send(telemetry(1, 3))  # redelivered (e.g. the ack was lost): no duplicate
                assert await expect(connection, TelemetryAck) == TelemetryAck(up_to_sequence=3)
                device = await h.fleet.device("phone-1")
                assert (device.records_received, device.last_sequence) == (3, 3)
                connection.close()

        run_clean(scenario())

    def test_messages_keep_their_order(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                for seq in range(1, 41):
                    connection.send(telemetry(seq, seq))
                acks = [(await expect(connection, TelemetryAck)).up_to_sequence for _ in range(40)]
                assert acks == list(range(1, 41))
                connection.close()

        run_clean(scenario())

    # --- the controller ending a connection ----------------------------------------------------------

    def test_a_dropped_connection_ends_with_its_typed_error_and_the_agent_reconnects(
        self, tmp_path: Path
    ) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                session = h.controller.hub.session("phone-1")
                assert session is not None
                await h.controller.hub.close(
                    session, ResourceExhausted("dropped by the test", retry_after=2.5)
                )
                error = await expect_end(connection)
                assert isinstance(error, ResourceExhausted), error
                assert error.retry_after == 2.5 and "dropped by the test" in error.message
                with pytest.raises(ChannelClosed):
                    connection.send(Heartbeat(sent_at_ms=1))  # ended: send says so, receive says why
                connection.close()
                again, _ = await h.online(identity)
                await h.connected("phone-1")
                again.close()

        run_clean(scenario())

    def test_shutdown_tells_agents_to_come_back_later(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                await h.controller.stop()
                error = await expect_end(connection)
                assert isinstance(error, TransientError), error
                assert (error.code, error.retry_after) == ("shutting_down", 1.0)
                connection.close()

        run_clean(scenario())

    def test_closing_tells_the_controller_at_once(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                await h.connected("phone-1")
                connection.close()
                connection.close()  # idempotent
                await h.connected(
                    "phone-1", False
                )  # long before liveness (30 s of a clock that stands still)
                with pytest.raises(ChannelClosed):
                    await receive(connection)

        run_clean(scenario())

    # --- bad payloads ------------------------------------------------------------------------------

    def test_an_invalid_message_is_refused_and_harms_nobody(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                bystander, _ = await h.online(await h.enroll("phone-2"))
                identity = await h.enroll("phone-1")
                connection = await h.transport().connect(identity)
                bad = HardwareProfile(hardware_class="", cpu_cores=1, memory_bytes=1)
                connection.send(Hello(hardware=bad, reported=ReportedState()))
                error = await expect_end(connection)
                assert isinstance(error, InvalidArgument), error
                assert "hello.hardware.hardware_class" in error.message
                connection.close()
                assert (await h.fleet.device("phone-1")).hardware.hardware_class == HW.hardware_class
                bystander.send(telemetry(1, 1))
                assert await expect(bystander, TelemetryAck) == TelemetryAck(up_to_sequence=1)
                again, _ = await h.online(identity)
                again.close()
                bystander.close()

        run_clean(scenario())

    def test_a_payload_that_is_no_message_is_refused_and_harms_nobody(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                bystander, _ = await h.online(await h.enroll("phone-2"))
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                await self.send_garbage(h, connection)
                error = await expect_end(connection)
                assert isinstance(error, InvalidArgument), error
                connection.close()
                bystander.send(telemetry(1, 1))
                assert await expect(bystander, TelemetryAck) == TelemetryAck(up_to_sequence=1)
                again, _ = await h.online(identity)
                again.close()
                bystander.close()

        run_clean(scenario())

    def test_a_bad_payload_from_the_controller_never_reaches_the_agent(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection, _ = await h.online(identity)
                await self.deliver_garbage(h, identity, connection)
                if self.bad_controller_payload_ends_connection:
                    error = await expect_end(connection)
                    assert isinstance(error, InvalidArgument), error
                else:  # refused and dropped: the connection goes on, the next message arrives
                    connection.send(telemetry(1, 1))
                    assert await expect(connection, TelemetryAck) == TelemetryAck(up_to_sequence=1)
                connection.close()

        run_clean(scenario())

    # --- bounded send ------------------------------------------------------------------------------

    def test_send_is_bounded_and_never_blocks(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            async with self.harness(tmp_path) as h:
                identity = await h.enroll("phone-1")
                connection = await h.transport(max_queued=8).connect(identity)
                # Nothing yields to the loop in between: the transport cannot take any of them yet.
                for i in range(8):
                    connection.send(Heartbeat(sent_at_ms=i))
                with pytest.raises(ChannelFull) as full:
                    connection.send(Heartbeat(sent_at_ms=8))
                assert isinstance(full.value, TransientError) and "8 messages" in full.value.message
                connection.close()  # and the reset connection is replaced by a working one
                again, _ = await h.online(identity)
                again.close()

        run_clean(scenario())
