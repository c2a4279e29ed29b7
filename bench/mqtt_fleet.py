"""N MQTT agents from one event loop against a real controller (SQLite store, MQTT bridge) and a private
Mosquitto: how long connecting (TCP, CONNACK, SUBACK, online status), the hello/welcome round trip and
one telemetry batch acknowledged by the store take for the whole fleet, and that no thread is made per
agent (paho's loop_start() would make one each, and stalls at about 340 in one process).

    .venv/bin/python bench/mqtt_fleet.py --agents 2000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.mqtt_broker (bench/ is a scripts folder)

from agent.transport.mqtt import MqttConfig, MqttTransport
from common.types import (
    DeviceIdentity,
    HardwareProfile,
    Hello,
    InferenceRecord,
    Outcome,
    ReportedState,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Welcome,
)
from controller.api.mqtt_bridge import MqttBridgeConfig
from controller.server import Controller, ControllerConfig
from controller.service import enrollment
from simulator.broker import Mosquitto

HW = HardwareProfile(hardware_class="phone-cpu", cpu_cores=4, memory_bytes=4 << 30)


async def bench(agents: int, workdir: Path) -> None:
    broker = Mosquitto(workdir / "broker", extra_config="max_inflight_messages 100")
    broker.start()
    controller = Controller(
        ControllerConfig(
            data_dir=workdir / "controller",
            listen="127.0.0.1:0",
            reconcile_interval_s=3600,
            mqtt=MqttBridgeConfig(broker.host, broker.port),
        )
    )
    await controller.start()
    try:
        assert controller.bridge is not None
        await controller.bridge.wait_connected()
        store, now = controller.db.store, int(time.time() * 1000)
        started = time.monotonic()
        token = await controller.db.run(
            enrollment.create_token, store, ttl_s=3600, uses=agents, description="bench", now_ms=now
        )

        def enroll_all() -> list[DeviceIdentity]:
            return [
                enrollment.enroll(
                    store, token=token.token, hardware=HW, requested_device_id=f"dev-{i}", now_ms=now
                )
                for i in range(agents)
            ]

        identities = await controller.db.run(enroll_all)
        print(f"enrolled {agents} devices in {time.monotonic() - started:.1f}s (store, no network)")
        transport = MqttTransport(MqttConfig(broker.host, broker.port))
        threads = threading.active_count()

        started = time.monotonic()
        connections = await asyncio.gather(*(transport.connect(identity) for identity in identities))
        connected_s = time.monotonic() - started
        started = time.monotonic()
        for connection in connections:
            connection.send(Hello(hardware=HW, reported=ReportedState()))
        welcomes = await asyncio.gather(*(connection.receive() for connection in connections))
        assert all(isinstance(w, Welcome) for w in welcomes)
        welcomed_s = time.monotonic() - started
        started = time.monotonic()
        record = InferenceRecord(model_sha256="ab" * 32, latency_ms=1.0, outcome=Outcome.OK)
        for connection in connections:
            connection.send(TelemetryBatch(records=(TelemetryRecord(1, now, record),)))
        acks = await asyncio.gather(*(connection.receive() for connection in connections))
        assert all(a == TelemetryAck(up_to_sequence=1) for a in acks)
        acked_s = time.monotonic() - started
        print(f"{agents} MQTT agents, one event loop, threads {threads} -> {threading.active_count()}:")
        print(f"  connect (TCP, CONNACK, SUBACK, online acked)  {connected_s:6.2f} s")
        print(f"  hello -> welcome (bridge, hub, store)         {welcomed_s:6.2f} s")
        print(f"  telemetry batch -> ack (stored)               {acked_s:6.2f} s")
        started = time.monotonic()
        for connection in connections:
            connection.close()
        await transport.aclose()
        print(f"  goodbye (offline status, DISCONNECT)          {time.monotonic() - started:6.2f} s")
    finally:
        await controller.stop()
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args.agents, Path(tmp)))


if __name__ == "__main__":
    main()
