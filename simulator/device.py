"""A virtual device: the real agent core (``agent.core.AgentCore``) driven over a real transport,
with a simulated runtime in place of onnxruntime.

The driver does for the core what the daemon does (opens the control connection and feeds it what
arrives, runs the outbox, keeps the identity and snapshot) but holds no task per device except the
connection reader: timers are ``loop.call_at`` handles, so a loop holds many thousands of devices.
What is simulated is only what needs hardware: downloads take size / bandwidth, loads take a fixed
time, and a request's latency is the plan's own prediction for each hop (made by the planner from
the measured block profiles of the hardware class and precision) times lognormal noise, with the
transfer stretched by a bandwidth drop. A request whose remote hops cannot be reached (the link is
cut or black-holed) is served by the fallback on the device, as ``agent.partition`` does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.core import actions as act
from agent.core import events as ev
from agent.core.machine import AgentCore, CoreConfig, Link
from agent.core.snapshot import AgentSnapshot
from agent.outbox import MemoryOutbox, OutboxBudget
from agent.outbox import perform as outbox_perform
from agent.stream import ControlStream
from agent.transport.base import Transport
from common.errors import EdgefleetError, PermanentError, TransientError
from common.types import (
    Assignment,
    DeviceIdentity,
    HardwareProfile,
    InferenceRecord,
    LinkMeasurement,
    Outcome,
)
from simulator import faults
from simulator.realrt import RealRuntime

log = logging.getLogger(__name__)

#: Simulated model load (and segment preparation) time.
LOAD_S = 0.05
#: Extra wait of the first request into a black hole (the hop's deadline) before the breaker opens.
BLACKHOLE_PENALTY_MS = 250.0
#: Devices' outboxes are small in the simulator: many thousands share one process.
SIM_OUTBOX = OutboxBudget(max_bytes=4 * 2**20, max_age_s=7 * 86_400)

Enroller = Callable[[str, str, HardwareProfile], Awaitable[DeviceIdentity]]


@dataclass(slots=True)
class GroupStats:
    """What the devices of one group saw (request outcomes and a bounded latency sample)."""

    requests: int = 0
    answered: int = 0
    degraded: int = 0
    failed: int = 0
    slo_requests: int = 0
    slo_met: int = 0
    #: Requests whose on-device compute was timed with real onnxruntime.
    real_requests: int = 0
    predicted_ms: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seen: int = 0
    MAX_SAMPLE = 20_000

    def sample(self, latency_ms: float, rng: random.Random) -> None:
        """Reservoir sampling: every latency equally likely to be kept, memory bounded."""
        self.seen += 1
        if len(self.latencies) < self.MAX_SAMPLE:
            self.latencies.append(latency_ms)
        else:
            j = rng.randrange(self.seen)
            if j < self.MAX_SAMPLE:
                self.latencies[j] = latency_ms


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    group: str
    hardware: HardwareProfile
    links: tuple[LinkMeasurement, ...]
    request_rate: float
    index: int = 0  # within its group


class SimDevice:
    def __init__(
        self,
        spec: DeviceSpec,
        *,
        transport: Transport,
        enroll: Enroller,
        stats: GroupStats,
        rng: random.Random,
        wall_ms: Callable[[], int],
        rate_factor: Callable[[float], float],
        latency_sigma: float,
        heartbeat_s: float,
    ) -> None:
        self.spec = spec
        self.link = faults.Link()
        self._transport = faults.FaultyTransport(transport, self.link)
        self._enroll = enroll
        self.stats = stats
        self._rng = rng
        self._wall_ms = wall_ms
        self._rate_factor = rate_factor
        self._sigma = latency_sigma
        self._heartbeat_s = heartbeat_s
        self._loop = asyncio.get_running_loop()
        self.identity: DeviceIdentity | None = None
        self._snapshot: AgentSnapshot | None = None
        self.outbox = MemoryOutbox(SIM_OUTBOX, wall_ms=wall_ms)
        self.core = self._new_core()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._request_timer: asyncio.TimerHandle | None = None
        self._stream = ControlStream(
            dispatch=self.dispatch, spawn=self._spawn, device_id=lambda: spec.device_id
        )
        self._stream.transport = self._transport
        self._tasks: dict[asyncio.Task[None], None] = {}  # insertion-ordered (a set follows ids)
        self._handles: set[asyncio.TimerHandle] = set()
        self.serving: Assignment | None = None
        self._segments_for = 0  # version whose segments are ready
        self._plan_bandwidth = 1.0  # the bandwidth factor in force when the serving plan arrived
        self._degraded = False
        self._blackhole_paid = False
        self.links = spec.links
        #: (hardware class, precision) -> the whole model's latency there, shared by the fleet.
        self.local_ms: dict[tuple[str, str], float] = {}
        #: (hardware class, precision) -> (latency scale, call overhead ms), from the applied policies.
        self.scales: dict[tuple[str, str], tuple[float, float]] = {}
        #: Set for the devices that time their own compute with real onnxruntime.
        self.real: RealRuntime | None = None
        self._timed_real = False
        self.running = False
        #: Records the core put in the outbox (the only ones that can be delivered), and dropped.
        self.produced = 0
        self.dropped = 0

    def _new_core(self) -> AgentCore:
        config = CoreConfig(
            hardware=self.spec.hardware, links=self.spec.links, heartbeat_interval_s=self._heartbeat_s
        )
        core = AgentCore(config, clock=self._loop.time, wall_clock_ms=self._wall_ms, rng=self._rng)
        core.endpoint = f"{self.spec.device_id}.sim.invalid:7500"  # never dialled: hops are simulated
        return core

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Power on: a fresh core from what was persisted (identity, snapshot, outbox), as after a
        reboot; the first start is a first boot."""
        if self.core.link is not Link.STARTING:
            self.core = self._new_core()
            # What was loaded is gone with the process; the core restores it from the snapshot.
            self.serving, self._segments_for, self._degraded = None, 0, False
        self.running = True
        self.dispatch(ev.Started(self.identity, self._snapshot, self.outbox.state()))
        self._schedule_request()

    def stop_workload(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    async def stop(self) -> None:
        """Power off: the connection closes, timers stop; identity, snapshot and outbox are kept."""
        self.running = False
        self.stop_workload()
        self._stream.close()
        for h in (self._timer, *self._handles):
            if h is not None:
                h.cancel()
        self._timer, self._timer_at = None, math.inf
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._transport.aclose()  # e.g. MQTT's goodbye; nothing for a shared gRPC channel

    @property
    def messages(self) -> int:
        """Control messages sent and received (the report's messages per second)."""
        return self._stream.messages

    @property
    def connected(self) -> bool:
        return self.running and self.core.link is Link.READY

    # --- driving the core ---------------------------------------------------------------------------

    def dispatch(self, event: ev.Event) -> None:
        if not self.running:
            return
        for action in self.core.step(event):
            try:
                self._execute(action)
            except Exception:
                log.exception("device=%s failed to perform %s", self.spec.device_id, type(action).__name__)
        wake = self.core.next_wakeup()
        if wake is not None and wake < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = wake
            self._timer = self._loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.dispatch(ev.Tick())
        if self._timer is None and self.running:
            wake = self.core.next_wakeup()
            if wake is not None:
                self._timer_at = max(wake, self._loop.time())
                self._timer = self._loop.call_at(self._timer_at, self._on_timer)

    def _later(self, delay_s: float, event: ev.Event) -> None:
        def fire() -> None:
            self._handles.discard(handle)
            self.dispatch(event)

        handle = self._loop.call_later(delay_s, fire)
        self._handles.add(handle)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks[task] = None
        task.add_done_callback(lambda t: self._tasks.pop(t, None))
        return task

    def _execute(self, action: act.Action) -> None:
        match action:
            case act.Enroll():
                self._spawn(self._run_enroll())
            case act.OpenStream(identity=identity):
                self._stream.open(identity)
            case act.CloseStream():
                self._stream.close()
            case act.Send(message=message):
                self._stream.send(message)
            case act.FetchArtifact(assignment=a) if not self.link.up:
                down = TransientError("cannot download: the link is down (simulated)")
                self._later(1.0, ev.ArtifactFailed(a, down))
            case act.FetchArtifact(assignment=a):
                self._later(self._download_s(a.artifact_size_bytes), ev.ArtifactReady(a))
            case act.LoadModel(assignment=a):
                self.serving = a  # the swap happens before the core hears of it, as in the daemon
                self._later(LOAD_S, ev.ModelLoaded(a))
            case act.PrepareSegments(assignment=a, restore=False) if not self.link.up:
                # (A restore reads the local cache and needs no link.)
                reason = "segment artifacts unreachable: the link is down (simulated)"
                self._later(1.0, ev.SegmentsFailed(a, reason, transient=True))
            case act.PrepareSegments(assignment=a):
                # The router switches to the new plan as its segments are ready (same model or not).
                if self.serving is None or a.version >= self.serving.version:
                    self.serving = a
                    self._segments_for = a.version
                    # The planner predicted transfers from the links reported until now.
                    self._plan_bandwidth = self.link.bandwidth_factor
                self._later(LOAD_S, ev.SegmentsReady(a))
            case act.FetchProfileArtifacts(request=request):
                refused = PermanentError("a simulated device has no hardware to profile")
                self._later(0.0, ev.ProfileArtifactsFailed(request.request_id, refused))
            case act.RunProfile():
                pass  # never asked: fetching the profile artifacts always fails
            case act.PersistIdentity(identity=identity):
                self.identity = identity
            case act.PersistSnapshot(snapshot=snapshot):
                self._snapshot = snapshot
            case (
                act.AppendTelemetry() | act.DeleteTelemetry() | act.LoadTelemetry() | act.RenumberTelemetry()
            ):
                if isinstance(action, act.AppendTelemetry):
                    self.produced += 1
                for event in outbox_perform(self.outbox, action):
                    if isinstance(event, ev.OutboxTrimmed):
                        self.dropped += event.dropped
                    self._later(0.0, event)
            case act.Fatal(reason=reason):
                log.error("device=%s cannot continue: %s", self.spec.device_id, reason)
                self.running = False

    def _download_s(self, size_bytes: int) -> float:
        mbps = min((m.bandwidth_mbps for m in self.spec.links), default=50.0) * self.link.bandwidth_factor
        return size_bytes * 8 / (mbps * 1e6)

    async def _run_enroll(self) -> None:
        try:
            credential = f"efd_sim_{self._rng.getrandbits(96):024x}"
            identity = await self._enroll(self.spec.device_id, credential, self.spec.hardware)
        except EdgefleetError as exc:
            self.dispatch(ev.EnrollFailed(exc))
        except Exception as exc:
            log.exception("device=%s enrollment failed unexpectedly", self.spec.device_id)
            self.dispatch(ev.EnrollFailed(TransientError(f"enrollment failed: {exc!r}")))
        else:
            self.dispatch(ev.EnrollSucceeded(identity))

    # --- the workload ---------------------------------------------------------------------------------

    def _schedule_request(self) -> None:
        rate = self.spec.request_rate * self._rate_factor(self._loop.time())
        if rate <= 0 or not self.running:
            return
        self._request_timer = self._loop.call_later(self._rng.expovariate(rate), self._on_request)

    def _on_request(self) -> None:
        self._request_timer = None
        self.dispatch(ev.InferenceDone(self._serve()))
        self._schedule_request()

    def _noise(self) -> float:
        return math.exp(self._rng.gauss(0.0, self._sigma)) if self._sigma else 1.0

    def _serve(self) -> InferenceRecord:
        self._timed_real = False
        record = self._serve_one()
        if self._timed_real:  # once per request, however many of its segments were timed
            self.stats.real_requests += 1
        return record

    def _serve_one(self) -> InferenceRecord:
        stats = self.stats
        stats.requests += 1
        a = self.serving
        if a is None:
            stats.failed += 1
            return InferenceRecord("", 0.0, Outcome.NO_MODEL, error="no model assigned")
        plan = a.plan
        path, latency = "local", 0.0
        if plan is None or plan.pattern == "local" or self._segments_for != a.version:
            real = self._real_ms(a.artifact_sha256, a.variant)
            if plan is not None and plan.pattern != "local":  # its segments are not ready yet
                predicted = self._fallback_ms(a)
            else:
                predicted = plan.predicted_latency_ms if plan is not None else 1.0
            latency = real if real is not None else predicted * self._noise()
        elif self.link.up:
            if self._degraded:
                self._degraded = False
                self._later(0.0, ev.PathChanged(degraded=False))
            self._blackhole_paid = False
            path = "partitioned"
            for s in plan.segments:
                transfer = s.predicted_transfer_ms * self._plan_bandwidth / self.link.bandwidth_factor
                compute = self._real_ms(s.artifact_sha256, s.precision) if s.tier == "device" else None
                if compute is None:  # a virtual device runs at its profile's speed, not a calibrated one
                    compute = s.uncalibrated_compute_ms * self._noise()
                latency += compute + (s.predicted_queue_ms + transfer) * self._noise()
        else:
            path = "fallback"
            if not self._degraded:
                self._degraded = True
                self._later(0.0, ev.PathChanged(degraded=True, reason=f"link {self.link.mode.value}"))
            real = self._real_ms(a.artifact_sha256, plan.fallback_variant or a.variant)
            latency = real if real is not None else self._fallback_ms(a) * self._noise()
            if self.link.mode is faults.LinkMode.BLACKHOLE and not self._blackhole_paid:
                self._blackhole_paid = True
                latency += BLACKHOLE_PENALTY_MS
        stats.answered += 1
        if path == "fallback":
            stats.degraded += 1
        stats.sample(latency, self._rng)
        if plan is not None and plan.slo_ms > 0:
            stats.slo_requests += 1
            stats.slo_met += latency <= plan.slo_ms
        return InferenceRecord(a.artifact_sha256, round(latency, 3), Outcome.OK, path=path)

    def _real_ms(self, sha256: str, variant: str) -> float | None:
        """This device's compute timed for real: onnxruntime on this host x the class's scale."""
        if self.real is None:
            return None
        scale = self.scales.get((self.spec.hardware.hardware_class, _precision(variant)))
        measured = self.real.time_ms(sha256) if scale is not None else None
        if measured is None or scale is None:
            return None
        self._timed_real = True
        return measured * scale[0] + scale[1]

    def _fallback_ms(self, a: Assignment) -> float:
        """The whole model on the device, at the fallback variant's precision (the plan predicts
        only the hops it planned; the run estimates the rest as the planner would a local plan)."""
        assert a.plan is not None
        precision = _precision(a.plan.fallback_variant or a.variant)
        estimate = self.local_ms.get((self.spec.hardware.hardware_class, precision))
        return estimate if estimate is not None else a.plan.predicted_latency_ms

    # --- faults -------------------------------------------------------------------------------------

    def measure_links(self, factor: float) -> None:
        """The device measures its links anew (after a bandwidth change); the controller re-plans."""
        self.link.bandwidth_factor = factor
        self.links = tuple(
            LinkMeasurement(m.pool, m.bandwidth_mbps * factor, m.rtt_ms, m.rtt_p95_ms)
            for m in self.spec.links
        )
        self.dispatch(ev.LinksMeasured(self.links))


def _precision(variant: str) -> str:
    return next((p for p in ("fp32", "fp16", "int8", "int4") if variant.startswith(p)), "fp32")
