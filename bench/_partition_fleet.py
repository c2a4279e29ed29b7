"""The fleet ``bench/partition.py`` runs on: the real controller, hosted in the bench process on a
thread of its own (so the bench can set hand-picked plans through the controller's store, segment
builder and hub, as ``fleetctl apply`` does), three real ``fleet-agent`` processes (phone, edge node,
cloud worker) on loopback, and the loopback "link" measured with a bare gRPC echo.

Forcing a cut pair goes through the product's own code end to end: the planner's ``plan()`` (pure)
on ``policies.planning_input`` (the controller's view of the fleet, calibrated from the requests
the phone served since its last switch, as every plan is) with the wanted configuration as the
device's *current* one and a hysteresis weight large enough that ``plan()`` keeps it, so the
prediction is exactly what the planner computes for any plan it makes; then ``policies.assignment_plan``, the controller's
``SegmentBuilder`` (segment artifacts), ``policies.materialize`` (endpoints, what pool nodes serve,
their batching) and ``policies.set_assignments`` + ``Hub.kick`` (the reconcile path delivers the new
versions), exactly as ``ApplyPolicies`` does after its planning step.

Everything started here is stopped on the way out (agents first, then the controller), also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import statistics
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from common.types import Device, InferenceRecord, Model, PolicyFile
from controller.client import AdminClient
from controller.planner import ConfigKey, DevicePlan, Weights, plan
from controller.policy import PolicySet
from controller.server import Controller, ControllerConfig
from controller.service import calibration, policies
from controller.store.base import PlannedAssignment
from simulator.processes import Proc, ProcessError, start_agent, terminate_all, wait_until

T = TypeVar("T")
log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 90.0
#: Added to the score of the configuration the bench asks for: far above any score difference
#: (scores lie within about -100..2), so ``plan()`` keeps it whatever else it could choose.
FORCE_HYSTERESIS = 1e6


class BenchError(RuntimeError):
    """Something the bench needs did not happen; the message says what (with process logs)."""


# --------------------------------------------------------------------------------------------------
# The controller on a thread of its own


class ControllerThread:
    """``controller.server.Controller`` on its own event loop thread; ``call`` runs a coroutine there."""

    def __init__(self, data_dir: Path, *, reconcile_interval_s: float = 0.5) -> None:
        self._config = ControllerConfig(
            data_dir=data_dir, listen="127.0.0.1:0", reconcile_interval_s=reconcile_interval_s, grace_s=1.0
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="controller", daemon=True)
        self._controller: Controller | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def controller(self) -> Controller:
        assert self._controller is not None, "not started"
        return self._controller

    @property
    def address(self) -> str:
        return self.controller.address

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 600.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()

        async def make() -> Controller:
            c = Controller(self._config)  # made on its loop: its locks and events belong there
            await c.start()
            return c

        self._controller = self.call(make(), timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        try:
            if self._controller is not None:
                self.call(self._controller.stop(), timeout=30.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)
            if not self._thread.is_alive():
                self._loop.close()


# --------------------------------------------------------------------------------------------------
# The loopback link


@dataclass(frozen=True)
class LinkEstimate:
    rtt_ms: float  # median round trip of a tiny message
    rtt_p95_ms: float
    bandwidth_mbps: float  # from the extra time a larger message takes, both directions counted
    payload_bytes: int
    payload_ms: float

    def spec(self, pool: str) -> str:
        """``--link`` for ``fleet-agent run``."""
        return f"{pool}={self.bandwidth_mbps:.1f}/{self.rtt_ms:.4f}/{self.rtt_p95_ms:.4f}"


def measure_link(
    address: str, method: str, *, payload_bytes: int = 64 * 1024, runs: int = 300
) -> LinkEstimate:
    """Round trips to a bare gRPC echo server (no work at all): the floor any hop on loopback pays."""
    channel = grpc.insecure_channel(address)
    try:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        small, large = b"x" * 16, b"y" * payload_bytes

        def timed(data: bytes, n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                call(data, timeout=10.0)
                out.append((time.perf_counter() - t0) * 1e3)
            return out

        timed(small, 30)
        timed(large, 10)
        # Interleaved, so load from elsewhere on the box hits both sizes alike.
        s: list[float] = []
        big: list[float] = []
        for _ in range(runs // 10):
            s += timed(small, 10)
            big += timed(large, 3)
        rtt = statistics.median(s)
        p95 = sorted(s)[int(0.95 * (len(s) - 1))]
        extra_ms = max(statistics.median(big) - rtt, 1e-3)
        # The payload goes out and comes back: 2 x payload bytes on the wire in extra_ms.
        mbps = 2 * payload_bytes * 8 / (extra_ms * 1e3)
        return LinkEstimate(rtt, p95, mbps, payload_bytes, statistics.median(big))
    finally:
        channel.close()


# --------------------------------------------------------------------------------------------------
# The fleet


@dataclass
class Fleet:
    workdir: Path
    ctl: ControllerThread
    agents: dict[str, str] = field(default_factory=dict)  # device id -> its Infer/Segment address
    procs: list[Proc] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.ctl.address

    def admin(self, timeout_s: float = 30.0) -> AdminClient:
        return AdminClient(self.address, timeout_s=timeout_s)

    def logs(self, last: int = 40) -> str:
        return "\n\n".join(f"--- {p.name} ---\n{p.log(last)}" for p in self.procs)

    def models(self) -> dict[str, Model]:
        with self.admin() as admin:
            return {m.name: admin.get_model(m.name) for m in admin.list_models()}

    def devices(self) -> dict[str, Device]:
        with self.admin() as admin:
            return {d.id: d for d in admin.list_devices()}


@dataclass(frozen=True)
class AgentSpec:
    device_id: str
    hardware: str
    labels: tuple[str, ...] = ()
    links: tuple[str, ...] = ()  # --link values


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def running_fleet(workdir: Path, specs: Sequence[AgentSpec], *, threads: int = 1) -> Iterator[Fleet]:
    """The in-process controller and one agent process per spec, every agent connected and reporting
    its SegmentService endpoint; all stopped on the way out (a second Ctrl-C/SIGTERM held off then)."""
    ctl = ControllerThread(workdir / "controller")
    fleet = Fleet(workdir, ctl)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        ctl.start()
        with fleet.admin() as admin:
            token = admin.create_token(ttl_s=3600, uses=len(specs), description="bench/partition").token
        for spec in specs:
            extra: list[str] = []
            for label in spec.labels:
                extra += ["--label", label]
            for link in spec.links:
                extra += ["--link", link]
            _, address = start_agent(
                ctl.address,
                workdir / spec.device_id,
                spec.hardware,
                token=token,
                device_id=spec.device_id,
                threads=threads,
                log_level="warning",
                timeout=START_TIMEOUT_S,
                registry=fleet.procs,
                extra=extra,
            )
            fleet.agents[spec.device_id] = address
        ids = {s.device_id for s in specs}
        wait_until(
            lambda: (
                all(d.connected and d.endpoint for d in fleet.devices().values() if d.id in ids)
                and ids <= set(fleet.devices())
            ),
            timeout=START_TIMEOUT_S,
            what="every agent to connect and report its endpoint",
            interval=0.2,
        )
        yield fleet
    except ProcessError as exc:
        raise BenchError(f"{exc}\n\n{fleet.logs()}") from None
    finally:
        held = (signal.SIGINT, signal.SIGTERM)
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
        try:
            codes = terminate_all(fleet.procs)
            ctl.stop()
            unclean = {p.name: c for p, c in zip(fleet.procs, codes, strict=True) if c != 0}
            if unclean:
                log.warning("agents that did not exit 0 on SIGTERM: %s", unclean)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------
# Profiles


def profile_devices(
    fleet: Fleet, model: str, device_ids: Sequence[str], *, runs: int = 0
) -> dict[str, float]:
    """Ask each device in turn (one at a time: they share this box's cores) to profile ``model``'s
    blocks, waiting for its class's profile to cover every block; seconds each took."""
    took: dict[str, float] = {}
    with fleet.admin() as admin:
        blocks = {
            (b.start_cut, b.end_cut, b.precision, b.batch_size) for b in admin.get_model(model).block_profiles
        }
        for device_id in device_ids:
            hardware = admin.get_device(device_id).hardware.hardware_class
            started = time.perf_counter()
            admin.request_profile(model, device_ids=[device_id], runs=runs)

            def covered(hw: str = hardware) -> bool:
                m = admin.get_model(model)
                have = {
                    (c.start_cut, c.end_cut, c.precision, c.batch_size)
                    for c in m.class_profiles
                    if c.hardware_class == hw and c.devices > 0 and c.latency_ms > 0
                }
                return blocks <= have

            try:
                wait_until(covered, timeout=240.0, what=f"{device_id} to profile {model}", interval=0.5)
            except ProcessError as exc:
                raise BenchError(f"{exc}\n\n{fleet.logs()}") from None
            took[device_id] = time.perf_counter() - started
    return took


# --------------------------------------------------------------------------------------------------
# Plans the bench chooses, through the planner and the controller's apply path


def load_policies(text: str, path: str = "bench-partition.yaml") -> PolicySet:
    return policies.load([PolicyFile(path, text)])


@dataclass(frozen=True)
class Forced:
    plan: DevicePlan  # the planner's plan (and prediction) for the device
    assignments: tuple[PlannedAssignment, ...]  # what was written: the device's, and the pool nodes'
    changed: tuple[str, ...]  # devices that got a new version
    #: The calibration the prediction used (from the requests served since the last switch).
    calibrated: calibration.Calibration = field(default_factory=calibration.Calibration)


def natural_plan(fleet: Fleet, policy_set: PolicySet, device_id: str) -> DevicePlan | None:
    """What the planner itself would choose for ``device_id`` (nothing forced); changes nothing."""

    async def go() -> DevicePlan | None:
        c = fleet.ctl.controller
        snapshot = await c.db.run(policies.read, c.db.store)
        planned = await asyncio.to_thread(policies.make_plan, snapshot, policy_set, hysteresis=False)
        return planned.plan.device(device_id)

    return fleet.ctl.call(go())


def force_plan(fleet: Fleet, policy_set: PolicySet, device_id: str, key: ConfigKey) -> Forced:
    """Plan ``device_id`` on configuration ``key`` with the planner and apply it as an apply would
    (without recording a policy apply: nothing re-plans behind the bench's back)."""

    async def go() -> Forced:
        c = fleet.ctl.controller
        async with c.policy_lock:
            snapshot = await c.db.run(policies.read, c.db.store)
            policies.check(policy_set, snapshot.devices, snapshot.models.values())
            data, calibrated = policies.planning_input(
                snapshot,
                policy_set,
                current={device_id: key},
                weights=Weights(hysteresis=FORCE_HYSTERESIS),
            )
            result = await asyncio.to_thread(plan, data)
            p = result.device(device_id)
            if p is None:
                raise BenchError(f"the planner planned nothing for {device_id}: {result.infeasible}")
            if p.key != key:
                raise BenchError(
                    f"the planner did not keep {key} for {device_id}: it chose {p.key} ({p.reason})"
                )
            variant = snapshot.models[p.model].variant(p.fallback)
            if variant is None:
                raise BenchError(f"{device_id}: no fallback variant {p.fallback!r}")
            own = PlannedAssignment(
                device_id,
                p.model,
                variant.variant,
                variant.sha256,
                variant.size_bytes,
                policies.assignment_plan(p),
            )
            planned = policies.Planned(
                policy_set, result, (own,), (), {d.id: d for d in snapshot.devices}, data
            )
            built = await c.segments.ensure(dict(snapshot.models), policies.segment_keys(planned))
            assignments = policies.materialize(planned, built)
            changed = await c.db.run(policies.set_assignments, c.db.store, assignments)
        for d in changed:
            await c.hub.kick(d)
        return Forced(p, assignments, tuple(changed), calibrated)

    return fleet.ctl.call(go())


def wait_converged(fleet: Fleet, device_ids: Sequence[str]) -> dict[str, Device]:
    """Until every device in ``device_ids`` acknowledged its desired version; BenchError naming a
    device that reported the version failed."""

    def check() -> dict[str, Device]:
        devices = fleet.devices()
        for d in (devices[i] for i in device_ids):
            if d.last_failure is not None and d.failed_version == d.desired_version:
                raise BenchError(f"{d.id} failed v{d.desired_version}: {d.last_failure_message}")
        return devices if all(devices[i].converged for i in device_ids) else {}

    try:
        return wait_until(
            check, timeout=CONVERGE_TIMEOUT_S, what=f"{', '.join(device_ids)} to converge", interval=0.1
        )
    except ProcessError as exc:
        raise BenchError(f"{exc}\n\n{fleet.logs()}") from None


def segment_bytes(fleet: Fleet, sha256: str) -> bytes:
    """An artifact's bytes from the controller's artifact store."""
    return Path(fleet.ctl.controller.artifacts.path(sha256)).read_bytes()


def served_sha(forced: Forced, tier: str) -> str:
    seg = next(s for a in forced.assignments if a.plan is not None for s in a.plan.segments if s.tier == tier)
    return seg.artifact_sha256


def served_under_current(fleet: Fleet, device_id: str) -> int:
    """How many of ``device_id``'s requests under the assignment it holds now the controller has
    stored (of its latest ``calibration.WINDOW``): what the next plan's calibration can read."""

    def count(store: Any) -> int:
        device = store.get_device(device_id)
        version = device.assignment.version if device.assignment is not None else 0
        records = store.latest_telemetry(device_id, limit=calibration.WINDOW)
        return sum(
            1 for r in records if isinstance(r.body, InferenceRecord) and r.body.assignment_version == version
        )

    async def go() -> int:
        c = fleet.ctl.controller
        return int(await c.db.run(count, c.db.store))

    return fleet.ctl.call(go())
