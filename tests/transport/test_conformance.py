"""The transport conformance suite (``conformance.py``) against gRPC, MQTT and in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.transport import Connection, Transport
from agent.transport.grpc import GrpcTransport
from agent.transport.inproc import InProcessConnection, InProcessTransport
from agent.transport.mqtt import MqttConnection
from common import serde
from common.errors import TransientError
from common.mqtt import protocol as proto
from common.types import DeviceIdentity
from controller.api.inproc import InProcessServer, InProcessWire
from simulator.broker import Mosquitto
from tests.integration.harness import running_controller
from tests.transport.conformance import Harness, TransportConformance
from tests.transport.mqtt_kit import mqtt_harness

pytestmark = pytest.mark.timeout(60)


class TestGrpc(TransportConformance):
    @contextlib.asynccontextmanager
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        async with running_controller(tmp_path / "controller") as fleet:

            def make(max_queued: int) -> Transport:
                return GrpcTransport(serde.ControllerServiceStub(fleet.channel()), max_queued=max_queued)

            h = Harness(fleet, make)
            try:
                yield h
            finally:
                await h.aclose()


class TestInProcess(TransportConformance):
    @contextlib.asynccontextmanager
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        async with running_controller(tmp_path / "controller") as fleet:
            server = InProcessServer(fleet.controller.db, fleet.controller.hub)
            h = Harness(fleet, lambda max_queued: InProcessTransport(server, max_queued=max_queued))
            try:
                yield h
            finally:
                await h.aclose()
                await server.aclose()

    async def send_garbage(self, h: Harness, connection: Connection) -> None:
        assert isinstance(connection, InProcessConnection)
        assert connection._wire.put(b"\xff\xfe not a protobuf message")

    async def deliver_garbage(self, h: Harness, identity: DeviceIdentity, connection: Connection) -> None:
        assert isinstance(connection, InProcessConnection)
        wire = connection._wire
        assert isinstance(wire, InProcessWire)
        wire.deliver(b"\xff\xfe not a protobuf message")


class TestMqtt(TransportConformance):
    bad_controller_payload_ends_connection = False
    first_message_error = TransientError

    @pytest.fixture(autouse=True)
    def _broker(self, mosquitto: Mosquitto) -> None:
        self.broker = mosquitto

    def harness(self, tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Harness]:
        return mqtt_harness(tmp_path, self.broker)

    async def send_garbage(self, h: Harness, connection: Connection) -> None:
        assert isinstance(connection, MqttConnection) and connection.client is not None
        # Signed correctly (it is the device), but no protobuf message.
        connection._publish(proto.topic(connection.device_id, proto.Topic.REPORTED), b"\xff\xfe garbage")

    async def deliver_garbage(self, h: Harness, identity: DeviceIdentity, connection: Connection) -> None:
        assert isinstance(connection, MqttConnection) and connection.client is not None
        name = proto.topic(identity.device_id, proto.Topic.CONTROL)
        payload = b"\xff\xfe garbage"
        key = proto.device_key(identity.credential)
        # As the controller would sign it, for this very connection: refused for what it is, not its origin.
        props = proto.sign(key, name, connection.conn, 1, payload)
        connection.client.publish(name, payload, user_properties=props)
