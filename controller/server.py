"""``fleetctl serve``: the controller process (gRPC for agents and fleetctl, the optional MQTT bridge,
reconcile jobs)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from common import limits, serde
from controller.api.admin_api import AdminApi
from controller.api.device_api import DeviceApi
from controller.artifacts import ArtifactStore
from controller.hub import Db, Hub, ShuttingDown
from controller.replan import Replanner
from controller.service.clock import Clock, SystemClock
from controller.service.segments import SegmentBuilder
from controller.service.sync import SyncPolicy
from controller.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from controller.api.mqtt_bridge import MqttBridge, MqttBridgeConfig

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    *limits.GRPC_MESSAGE_OPTIONS,
    # Detect dead agents' TCP connections even when their streams are idle.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # gRPC >= 1.6x enforces an unanswered ping with this, not keepalive_timeout (default one minute).
    ("grpc.http2.ping_timeout_ms", 10_000),
    # Agents may ping as often as once a second (fleet-agent --keepalive, default 20 s) to notice a
    # black-holed link quickly; a peer pinging faster is told to calm down (GOAWAY).
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 10_000),
]


@dataclass
class ControllerConfig:
    data_dir: Path
    listen: str = "127.0.0.1:7443"
    policy: SyncPolicy = field(default_factory=SyncPolicy)
    reconcile_interval_s: float = 1.0
    max_model_bytes: int = limits.MAX_MODEL_BYTES
    grace_s: float = 5.0
    #: Re-plan the applied policies this long after the fleet last changed, and at least this often.
    replan_settle_s: float = 2.0
    replan_every_s: float = 60.0
    #: Also serve agents over MQTT through this broker (``fleetctl serve --mqtt``); None: gRPC only.
    mqtt: MqttBridgeConfig | None = None


class Controller:
    """Owns the store, the hub and the gRPC server; ``start``/``stop`` are idempotent."""

    def __init__(self, config: ControllerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Db(SqliteStore(config.data_dir / "controller.db"))
        self.artifacts = ArtifactStore(config.data_dir / "artifacts")
        self.hub = Hub(self.db, self.clock, config.policy)
        self.policy_lock = asyncio.Lock()
        self.segments = SegmentBuilder(self.db, self.artifacts, self.clock)
        self.replanner = Replanner(
            self.db,
            self.hub,
            self.policy_lock,
            self.clock,
            self.segments,
            settle_s=config.replan_settle_s,
            every_s=config.replan_every_s,
        )
        self.hub.on_fleet_change = self.replanner.mark
        self._server: grpc.aio.Server | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self.bridge: MqttBridge | None = None
        self.port = 0
        self._jobs: list[asyncio.Task[None]] = []

    async def start(self, *, serve: bool = True) -> None:
        """Open the store and start the periodic jobs; with ``serve`` also the gRPC server (and the
        MQTT bridge). Without it (the simulator's virtual engine) devices reach the hub in-process
        and the jobs run as plain loop timers, which follow the loop's clock, virtual or not."""
        if self._server is not None or self._jobs:
            return
        stale = await self.db.run(self.db.store.mark_all_disconnected)
        if stale:
            log.info("cleared %d stale connections from a previous run", stale)
        if not serve:
            loop = asyncio.get_running_loop()
            self._jobs = [
                loop.create_task(
                    _every(self.config.reconcile_interval_s, self.hub.reconcile), name="reconcile"
                ),
                loop.create_task(_every(1.0, self._replan), name="replan"),
            ]
            return
        server = grpc.aio.server(options=GRPC_OPTIONS)
        serde.add_ControllerServiceServicer_to_server(
            DeviceApi(self.db, self.hub, self.artifacts, self.clock), server
        )
        serde.add_AdminServiceServicer_to_server(
            AdminApi(
                self.db,
                self.hub,
                self.artifacts,
                self.clock,
                max_model_bytes=self.config.max_model_bytes,
                policy_lock=self.policy_lock,
                segments=self.segments,
            ),
            server,
        )
        self.port = server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        self._server = server
        if self.config.mqtt is not None:
            from controller.api.mqtt_bridge import MqttBridge

            self.bridge = MqttBridge(self.db, self.hub, self.clock, self.config.mqtt)
            self.hub.on_desired_change = self.bridge.desired_changed
            await self.bridge.start()  # connects in the background: a broker that is down is retried
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self.hub.reconcile,
            "interval",
            seconds=self.config.reconcile_interval_s,
            id="reconcile",
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(self._replan, "interval", seconds=1.0, id="replan", max_instances=1, coalesce=True)
        scheduler.start()
        self._scheduler = scheduler
        log.info("controller listening on %s (data dir %s)", self.address, self.config.data_dir)

    async def _replan(self) -> None:
        try:
            await self.replanner.tick()
        except ShuttingDown:
            pass  # the store closed under a pass that started just before stop()
        except Exception:
            log.exception("re-plan pass failed; the next one tries again")

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self) -> None:
        """Shut down in dependency order, so nothing touches the store after it closes:

        1. the hub stops: scheduled reconciles and kicks become no-ops, no new stream opens, and the
           scheduler starts no further job;
        2. the server stops accepting calls while the open streams are ended (told UNAVAILABLE, so agents
           back off and reconnect to the restarted controller) and in-flight calls get ``grace_s``; the
           MQTT bridge publishes the same to its devices (close notices) and disconnects from the broker;
        3. a reconcile pass or kick already running finishes; every device is recorded disconnected in
           one write; then the scheduler shuts down (with nothing left to cancel);
        4. the store closes; a call that straggles in after that gets ``ShuttingDown`` (UNAVAILABLE).
        """
        self.hub.stop()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.pause()
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if jobs:  # no server: the in-process streams are ended by their owner (InProcessServer)
            await self.hub.close_all(ShuttingDown())
        server, self._server = self._server, None
        if server is not None:
            ended = await asyncio.gather(
                server.stop(self.config.grace_s), self.hub.close_all(ShuttingDown()), return_exceptions=True
            )
            for error in ended:  # not expected; still close the store below
                if isinstance(error, BaseException):
                    log.error("error while stopping the server: %s", error, exc_info=error)
        bridge, self.bridge = self.bridge, None
        if bridge is not None:
            try:
                await bridge.stop()
            except Exception:
                log.exception("error while stopping the MQTT bridge")
        await self.hub.drain()
        try:
            await self.db.run(self.db.store.mark_all_disconnected)  # the streams close_all ended
        except ShuttingDown:
            pass  # stopped before: the store is closed and was marked then
        except Exception:
            log.exception("could not record the devices as disconnected (the next start clears them)")
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await self.db.aclose()
        log.info("controller stopped")


async def _every(interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval_s`` (after it finishes: never two at once), logging a failure."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except ShuttingDown:
            return
        except Exception:
            log.exception(
                "periodic job %s failed; it runs again in %gs", getattr(job, "__name__", job), interval_s
            )


async def serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    await controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Tell whoever started us (tests, scripts) where we listen, once we really do.
    print(f"controller listening on {controller.address}", flush=True)
    if config.mqtt is not None:
        print(f"controller bridging MQTT broker {config.mqtt.host}:{config.mqtt.port}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await controller.stop()
