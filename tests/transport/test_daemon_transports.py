"""The agent daemon over each control transport, end to end against an in-process controller: MQTT
for control with enrollment and artifacts over gRPC (the Greengrass split), a broker restart that
agents and the bridge ride out, the in-process transport the simulator uses, and the CLI flags."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app as agent_app
from agent.client import AgentClient
from agent.core import Link
from agent.core.backoff import BackoffPolicy
from agent.daemon import AgentConfig, AgentDaemon
from agent.transport import Transport
from agent.transport.inproc import InProcessTransport
from controller.api.inproc import InProcessServer
from controller.api.mqtt_bridge import MqttBridgeConfig
from controller.cli.main import app as fleetctl_app
from controller.client import AdminClient
from controller.server import Controller, ControllerConfig
from controller.service.sync import SyncPolicy
from simulator.broker import Mosquitto
from simulator.processes import Proc, start_agent, terminate_all, wait_until
from tests.integration.harness import write_add_model
from tests.transport.conformance import eventually, run_clean

pytestmark = pytest.mark.timeout(90)
T = TypeVar("T")
FAST = BackoffPolicy(base_s=0.05, cap_s=0.3)


@contextlib.asynccontextmanager
async def controller(tmp_path: Path, broker: Mosquitto | None = None) -> AsyncIterator[Controller]:
    bridge = (
        MqttBridgeConfig(broker.host, broker.port, reconnect_base_s=0.05, reconnect_cap_s=0.3)
        if broker is not None
        else None
    )
    c = Controller(
        ControllerConfig(
            data_dir=tmp_path / "controller",
            listen="127.0.0.1:0",
            policy=SyncPolicy(heartbeat_interval_ms=500),
            reconcile_interval_s=0.2,
            grace_s=0.5,
            mqtt=bridge,
        )
    )
    await c.start()
    try:
        if c.bridge is not None:
            await c.bridge.wait_connected()
        yield c
    finally:
        await c.stop()


@contextlib.asynccontextmanager
async def agent(
    data_dir: Path,
    controller_address: str,
    token: str,
    device_id: str,
    *,
    control: Transport | None = None,
    **config: Any,
) -> AsyncIterator[AgentDaemon]:
    daemon = AgentDaemon(
        AgentConfig(
            controller=controller_address,
            data_dir=data_dir,
            hardware_class="phone-cpu",
            token=token,
            device_id=device_id,
            backoff=FAST,
            fetch_backoff=FAST,
            **config,
        ),
        transport=control,
    )
    await daemon.start()
    runner = asyncio.create_task(daemon.run_until_stopped())
    try:
        yield daemon
    finally:
        await daemon.close()
        await runner


async def admin(c: Controller, fn: Callable[[AdminClient], T]) -> T:
    def call() -> T:
        with AdminClient(c.address) as client:
            return fn(client)

    return await asyncio.to_thread(call)


async def serving(c: Controller, daemons: list[AgentDaemon], sha: str) -> None:
    for daemon in daemons:
        await eventually(
            lambda d=daemon: d.core.reported.active_sha256 == sha, f"{daemon.core.device_id} to serve", 20
        )
    for daemon in daemons:
        device_id = daemon.core.device_id
        await eventually(
            lambda d=device_id: admin(c, lambda a: a.get_device(d).converged), f"the ack of {device_id}", 20
        )


def _infer(address: str) -> str:
    with AgentClient(address) as client:
        response = client.infer_response({"x": np.ones(8, np.float32)})
    return response.model_sha256


def test_an_agent_over_mqtt_enrolls_and_downloads_over_grpc_and_serves(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario() -> None:
        async with controller(tmp_path, mosquitto) as c:
            token = (await admin(c, lambda a: a.create_token(ttl_s=600, uses=1))).token
            model = await admin(
                c, lambda a: a.import_model(write_add_model(tmp_path / "m.onnx", 8), name="m")
            )
            sha = model.variants[0].sha256
            async with agent(
                tmp_path / "agent", c.address, token, "phone-1", transport="mqtt", mqtt=mosquitto.address
            ) as daemon:
                await eventually(lambda: daemon.core.link is Link.READY, "the agent to connect over MQTT")
                assert c.hub.session("phone-1") is not None
                await admin(c, lambda a: a.assign("phone-1", "m"))
                await serving(c, [daemon], sha)
                assert await asyncio.to_thread(_infer, daemon.address) == sha
                # The request's telemetry reaches the controller over MQTT too.
                await eventually(
                    lambda: admin(c, lambda a: a.get_device("phone-1").records_received >= 1), "telemetry"
                )
            # A stopped agent said goodbye: offline at once.
            await eventually(lambda: admin(c, lambda a: not a.get_device("phone-1").connected), "offline")

    run_clean(scenario(), timeout=60)


@pytest.mark.parametrize("persistence", [True, False], ids=["persistent-broker", "forgetful-broker"])
def test_agents_ride_out_a_broker_restart_and_converge(tmp_path: Path, persistence: bool) -> None:
    """Restarted with persistence, the broker keeps the bridge's session (a hello published before the
    bridge is back waits for it there); without, that hello is lost, and the bridge, finding the device
    online on a new session, asks it for another. Either way well within the welcome timeout (15 s)."""
    mosquitto = Mosquitto(tmp_path / "broker", persistence=persistence)
    mosquitto.start()

    async def scenario() -> None:
        async with controller(tmp_path, mosquitto) as c:
            token = (await admin(c, lambda a: a.create_token(ttl_s=600, uses=2))).token
            first = await admin(
                c, lambda a: a.import_model(write_add_model(tmp_path / "a.onnx", 8), name="m")
            )
            mqtt = {"transport": "mqtt", "mqtt": mosquitto.address}
            async with (
                agent(tmp_path / "a1", c.address, token, "phone-1", **mqtt) as one,
                agent(tmp_path / "a2", c.address, token, "phone-2", **mqtt) as two,
            ):
                for d in (one, two):
                    await eventually(lambda d=d: d.core.link is Link.READY, "connected")
                for device in ("phone-1", "phone-2"):
                    await admin(c, lambda a, device=device: a.assign(device, "m"))
                await serving(c, [one, two], first.variants[0].sha256)
                assert c.bridge is not None
                mosquitto.restart()
                await eventually(
                    lambda: one.core.link is not Link.READY and two.core.link is not Link.READY, "lost"
                )
                restarted = time.monotonic()
                for d in (one, two):
                    await eventually(lambda d=d: d.core.link is Link.READY, "reconnected", 20)
                took = time.monotonic() - restarted
                assert took < 8.0, f"{took:.1f}s: an agent waited out its welcome timeout"
                assert c.bridge.connections == 2
                # A change made after the restart reaches both.
                second = await admin(
                    c,
                    lambda a: a.import_model(write_add_model(tmp_path / "b.onnx", 8, offset=1.0), name="m2"),
                )
                for device in ("phone-1", "phone-2"):
                    await admin(c, lambda a, device=device: a.assign(device, "m2"))
                await serving(c, [one, two], second.variants[0].sha256)

    try:
        run_clean(scenario(), timeout=80)
    finally:
        mosquitto.close()


def test_an_agent_over_the_in_process_transport(tmp_path: Path) -> None:
    """What the simulator does: the daemon's control channel straight to the hub, no sockets."""

    async def scenario() -> None:
        async with controller(tmp_path) as c:
            server = InProcessServer(c.db, c.hub)
            token = (await admin(c, lambda a: a.create_token(ttl_s=600, uses=1))).token
            model = await admin(
                c, lambda a: a.import_model(write_add_model(tmp_path / "m.onnx", 8), name="m")
            )
            async with agent(
                tmp_path / "agent", c.address, token, "phone-1", control=InProcessTransport(server)
            ) as daemon:
                await eventually(lambda: daemon.core.link is Link.READY, "connected in-process")
                await admin(c, lambda a: a.assign("phone-1", "m"))
                await serving(c, [daemon], model.variants[0].sha256)
            await server.aclose()

    run_clean(scenario(), timeout=60)


def test_cli_transport_flags_are_checked_before_anything_starts(tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "run",
        "--controller",
        "127.0.0.1:1",
        "--data-dir",
        str(tmp_path / "a"),
        "--hardware",
        "phone-cpu",
    ]
    for extra, message in (
        (["--transport", "mqtt"], "--transport mqtt needs --mqtt HOST:PORT"),
        (["--transport", "pigeon"], "--transport 'pigeon': use grpc or mqtt"),
        (["--mqtt", "127.0.0.1:1883"], "--mqtt is only used with --transport mqtt"),
        (["--transport", "mqtt", "--mqtt", "nowhere"], "--mqtt: 'nowhere' is not HOST:PORT"),
    ):
        result = runner.invoke(agent_app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
    assert not (tmp_path / "a").exists()
    result = runner.invoke(fleetctl_app, ["serve", "--data-dir", str(tmp_path / "c"), "--mqtt", "nowhere"])
    assert result.exit_code == 2 and "--mqtt: 'nowhere' is not HOST:PORT" in result.output, result.output


@pytest.mark.e2e
def test_processes_over_mqtt_start_serve_and_stop_cleanly(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """``fleetctl serve --mqtt`` and ``fleet-agent run --transport mqtt`` as real processes: the agent
    connects through the broker; SIGTERM stops each with exit 0, the agent's goodbye makes it offline at
    once, and the bridge leaves the broker with a DISCONNECT (a graceful leave, not a dropped socket)."""
    procs: list[Proc] = []
    try:
        controller = Proc(
            "controller",
            [
                "-m",
                "controller.cli.main",
                "serve",
                "--data-dir",
                str(tmp_path / "c"),
                "--listen",
                "127.0.0.1:0",
                "--mqtt",
                mosquitto.address,
                "--heartbeat-interval",
                "1s",
            ],
            registry=procs,
        )
        address = controller.wait_for_line("controller listening on").rsplit(" ", 1)[1]
        controller.wait_for_line("controller bridging MQTT broker")
        with AdminClient(address) as client:
            token = client.create_token(ttl_s=600, uses=1).token
            agent_proc, _ = start_agent(
                address,
                tmp_path / "a",
                "phone-cpu",
                token=token,
                device_id="phone-1",
                registry=procs,
                extra=["--transport", "mqtt", "--mqtt", mosquitto.address],
            )
            wait_until(lambda: client.get_device("phone-1").connected, timeout=20, what="connected over MQTT")
            assert agent_proc.terminate() == 0
            wait_until(lambda: not client.get_device("phone-1").connected, timeout=5, what="offline at once")
        assert controller.terminate() == 0
        assert "Client Edgefleet-Controller disconnected." in mosquitto.log_text(), mosquitto.log_text()[
            -2000:
        ]
        assert "mqtt bridge stopped" in controller.log()
    finally:
        terminate_all(procs)
