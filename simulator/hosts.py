"""Where the simulated fleet's controller runs, one class per engine, behind one small interface.

- ``VirtualHost``: the real ``controller.server.Controller`` (hub, reconcile, re-planner, segment
  builder, SQLite store) in this process on the virtual-time loop, without its gRPC server; devices
  reach the hub through the in-process transport (the same serialized messages, decoded and
  validated as from a socket).
- ``RealtimeHost``: a real ``fleetctl serve`` process on loopback; devices connect over gRPC,
  their streams multiplexed over a few channels, and the operator's calls go through the admin API.
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from agent.daemon import channel_options
from agent.transport.base import Transport
from agent.transport.grpc import GrpcTransport
from agent.transport.inproc import InProcessTransport
from agent.transport.mqtt import MqttConfig, MqttTransport
from common import serde
from common.errors import InvalidArgument, TransientError
from common.types import Device, DeviceIdentity, HardwareProfile, Model, PolicyFile
from controller.api.inproc import InProcessServer, InProcessWire
from controller.client import AdminClient
from controller.replan import apply_policies
from controller.server import Controller, ControllerConfig
from controller.service import enrollment
from controller.service.sync import SyncPolicy
from simulator.broker import Mosquitto
from simulator.processes import Proc, free_port, start_controller
from simulator.vclock import LoopClock

#: Control messages a device's connection holds before it is reset (as the daemon's).
OUTBOUND_QUEUE = 1024
TOKEN_USES = 1_000_000
BRIDGE_QUEUE = "max_queued_messages 1000000\n"


@dataclass(frozen=True, slots=True)
class DeviceRecords:
    received: int
    dropped: int


class ControllerHost(abc.ABC):
    def __init__(self, data_dir: Path, *, heartbeat_s: float, reconcile_s: float) -> None:
        self.data_dir = data_dir
        self.heartbeat_s = heartbeat_s
        self.reconcile_s = reconcile_s
        self.token = ""
        self.restarts = 0

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def restart(self, down_for: float) -> None:
        await self.stop()
        await asyncio.sleep(down_for)
        await self.start()
        self.restarts += 1

    async def restart_broker(self, down_for: float) -> None:
        raise InvalidArgument("restart_broker needs the realtime engine with controller.transport: mqtt")

    @abc.abstractmethod
    def transport(self, index: int) -> Transport:
        """The transport device ``index`` connects with."""

    @abc.abstractmethod
    async def enroll(self, device_id: str, credential: str, hardware: HardwareProfile) -> DeviceIdentity: ...

    @abc.abstractmethod
    async def apply(self, files: list[PolicyFile], message: str) -> int:
        """Apply a policy set; how many devices got a new version."""

    @abc.abstractmethod
    async def unconverged(self) -> list[str]:
        """Ids of the devices whose acknowledged version is behind the desired one."""

    @abc.abstractmethod
    async def records(self) -> dict[str, DeviceRecords]: ...

    @abc.abstractmethod
    async def model(self, name: str) -> Model: ...

    @abc.abstractmethod
    def usage(self) -> dict[str, float]:
        """The controller's CPU seconds and peak memory so far."""

    async def aclose(self) -> None:
        await self.stop()


class VirtualHost(ControllerHost):
    def __init__(
        self, data_dir: Path, *, heartbeat_s: float, reconcile_s: float, replan_every_s: float = 60.0
    ) -> None:
        super().__init__(data_dir, heartbeat_s=heartbeat_s, reconcile_s=reconcile_s)
        self.replan_every_s = replan_every_s
        self.controller: Controller | None = None
        self._server: InProcessServer | None = None
        self._transport = InProcessTransport(self, max_queued=OUTBOUND_QUEUE)
        self._cpu_at_start = time.process_time()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = ControllerConfig(
            self.data_dir,
            policy=SyncPolicy(heartbeat_interval_ms=int(self.heartbeat_s * 1000)),
            reconcile_interval_s=self.reconcile_s,
            replan_every_s=self.replan_every_s,
        )
        controller = Controller(config, clock=LoopClock(loop))
        await controller.start(serve=False)
        self.controller = controller
        self._server = InProcessServer(controller.db, controller.hub)
        if not self.token:
            created = await controller.db.run(
                enrollment.create_token,
                controller.db.store,
                ttl_s=365 * 86_400,
                uses=TOKEN_USES,
                description="fleet-sim",
                now_ms=controller.clock.now_ms(),
            )
            self.token = created.token

    async def stop(self) -> None:
        server, self._server = self._server, None
        controller, self.controller = self.controller, None
        if controller is not None:
            controller.hub.stop()  # as Controller.stop begins: the streams ended next are not recorded one by one
        if server is not None:
            await server.aclose()
        if controller is not None:
            await controller.stop()

    def _up(self) -> Controller:
        if self.controller is None:
            raise TransientError("the controller is down (simulated restart)", retry_after=1.0)
        return self.controller

    async def dial(self, device_id: str, credential: str, *, max_queued: int) -> InProcessWire:
        self._up()
        assert self._server is not None
        return await self._server.dial(device_id, credential, max_queued=max_queued)

    def transport(self, index: int) -> Transport:
        return self._transport

    async def enroll(self, device_id: str, credential: str, hardware: HardwareProfile) -> DeviceIdentity:
        c = self._up()
        return await c.db.run(
            enrollment.enroll,
            c.db.store,
            token=self.token,
            hardware=hardware,
            requested_device_id=device_id,
            now_ms=c.clock.now_ms(),
            device_credential=credential,
        )

    async def apply(self, files: list[PolicyFile], message: str) -> int:
        c = self._up()
        req = serde.ApplyRequest(
            files=tuple(files),
            applied_by="fleet-sim",
            git_commit="",
            git_dirty=False,
            source="",
            message=message,
        )
        applied = await apply_policies(c.db, c.hub, c.clock, c.policy_lock, c.segments, req)
        return len(applied.outcome.changed)

    async def unconverged(self) -> list[str]:
        c = self._up()
        return [d.id for d in await c.db.run(c.db.store.list_unacked)]

    async def records(self) -> dict[str, DeviceRecords]:
        c = self._up()
        devices = await c.db.run(c.db.store.list_devices)
        return {d.id: DeviceRecords(d.records_received, d.records_dropped) for d in devices}

    async def model(self, name: str) -> Model:
        c = self._up()
        return await c.db.run(c.db.store.get_model, name)

    def usage(self) -> dict[str, float]:
        # The controller shares this process with the devices: what is reported is the whole run's.
        return {"cpu_s": time.process_time() - self._cpu_at_start, "rss_mb_peak": _peak_rss_mb(os.getpid())}


class RealtimeHost(ControllerHost):
    def __init__(
        self,
        data_dir: Path,
        *,
        heartbeat_s: float,
        reconcile_s: float,
        channels: int,
        transport: str = "grpc",
    ) -> None:
        super().__init__(data_dir, heartbeat_s=heartbeat_s, reconcile_s=reconcile_s)
        self.transport_kind = transport
        #: MQTT: a private Mosquitto for the run (enrollment stays on gRPC, as for real agents).
        self.broker: Mosquitto | None = None
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: Proc | None = None
        self._channel_count = channels
        # Made on the run's loop (a grpc.aio channel belongs to the loop it was created on).
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[Any] = []
        self._transports: list[GrpcTransport] = []
        self._listed: tuple[float, list[Device]] | None = None
        self._cpu_before = 0.0  # CPU of earlier processes (before a restart)
        self._peak_mb = 0.0

    async def start(self) -> None:
        if not self._channels:
            # Separate subchannel pools: otherwise channels with the same target share one connection.
            options = [*channel_options(20.0), ("grpc.use_local_subchannel_pool", 1)]
            self._channels = [
                grpc.aio.insecure_channel(self.address, options=options) for _ in range(self._channel_count)
            ]
            self._stubs = [serde.ControllerServiceStub(ch) for ch in self._channels]
            self._transports = [GrpcTransport(stub, max_queued=OUTBOUND_QUEUE) for stub in self._stubs]
        extra: list[str] = []
        if self.transport_kind == "mqtt":
            if self.broker is None:
                # The bridge's client queues for the whole fleet (Mosquitto's default is 1000).
                self.broker = Mosquitto(self.data_dir.parent / "broker", extra_config=BRIDGE_QUEUE)
                await asyncio.to_thread(self.broker.start)
            extra = ["--mqtt", self.broker.address]
        self.proc, _ = await asyncio.to_thread(
            start_controller,
            self.data_dir,
            self.port,
            heartbeat=f"{max(1, round(self.heartbeat_s))}s",
            log_level="warning",
            timeout=60,
            extra=extra,
        )
        if not self.token:
            created = await asyncio.to_thread(
                self._admin, lambda a: a.create_token(ttl_s=365 * 86_400, uses=TOKEN_USES)
            )
            self.token = created.token

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            self._cpu_before += _cpu_s(proc.pid)
            self._peak_mb = max(self._peak_mb, _peak_rss_mb(proc.pid))
            await asyncio.to_thread(proc.terminate)

    async def aclose(self) -> None:
        await self.stop()
        for ch in self._channels:
            await ch.close(None)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.close)

    async def restart_broker(self, down_for: float) -> None:
        if self.broker is None:
            await super().restart_broker(down_for)
            return
        await asyncio.to_thread(self.broker.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.broker.start)  # the same port

    def _admin(self, fn: Any) -> Any:
        with AdminClient(self.address, timeout_s=120) as admin:
            return fn(admin)

    def transport(self, index: int) -> Transport:
        if self.broker is not None:  # one MQTT client per device, all driven from this loop
            return MqttTransport(MqttConfig.parse(self.broker.address, max_queued=OUTBOUND_QUEUE))
        return self._transports[index % len(self._transports)]

    async def enroll(self, device_id: str, credential: str, hardware: HardwareProfile) -> DeviceIdentity:
        stub = self._stubs[zlib.crc32(device_id.encode()) % len(self._stubs)]
        request = serde.enroll_request_to_pb(self.token, hardware, device_id, credential)
        try:
            response = await stub.Enroll(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise serde.error_from_rpc_error(exc) from None
        return serde.enroll_response_from_pb(response)

    async def apply(self, files: list[PolicyFile], message: str) -> int:
        _, _, changes = await asyncio.to_thread(
            self._admin, lambda a: a.apply_policies(files, applied_by="fleet-sim", message=message)
        )
        return len(changes)

    async def _devices(self, max_age_s: float) -> list[Device]:
        """The fleet as the controller lists it; a listing younger than ``max_age_s`` is reused (the
        sampler and the convergence watchers would otherwise each list 10,000 devices)."""
        now = time.monotonic()
        if self._listed is None or now - self._listed[0] > max_age_s:
            devices = await asyncio.to_thread(self._admin, lambda a: a.list_devices())
            self._listed = (time.monotonic(), devices)
        return self._listed[1]

    async def unconverged(self) -> list[str]:
        return [d.id for d in await self._devices(1.0) if not d.converged]

    async def records(self) -> dict[str, DeviceRecords]:
        devices = await self._devices(0.0)
        return {d.id: DeviceRecords(d.records_received, d.records_dropped) for d in devices}

    async def model(self, name: str) -> Model:
        return await asyncio.to_thread(self._admin, lambda a: a.get_model(name))

    def usage(self) -> dict[str, float]:
        if self.proc is None:
            return {"cpu_s": self._cpu_before, "rss_mb_peak": self._peak_mb}
        return {
            "cpu_s": self._cpu_before + _cpu_s(self.proc.pid),
            "rss_mb_peak": max(self._peak_mb, _peak_rss_mb(self.proc.pid)),
        }


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
