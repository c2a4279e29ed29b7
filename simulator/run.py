"""One scenario run, the same for both engines: build the fleet, bring it up, play the timeline,
sample, drain, account for every record, check the assertions, return the report.

Everything here takes its time from the running loop (real or virtual) and its randomness from the
scenario's seed, so on the virtual engine a run repeats exactly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import TransientError
from common.types import BlockProfile, HardwareProfile, LinkMeasurement, PolicyFile
from controller.policy.loader import load_policies, policy_files
from simulator.device import DeviceSpec, GroupStats, SimDevice
from simulator.faults import LinkMode
from simulator.hosts import ControllerHost
from simulator.realrt import RealRuntime
from simulator.scenario import Assertion, Event, Scenario

log = logging.getLogger(__name__)

#: After the workload stops: how long the run waits for every record to reach the controller.
DRAIN_S = 120.0
#: Devices started per ramp step (``connect_rate`` per second overall).
RAMP_STEP_S = 0.1

Progress = Callable[[dict[str, Any]], None]


@dataclass
class _EventResult:
    at_s: float
    kind: str
    detail: str
    converged_s: float | None = None
    error: str = ""


@dataclass
class _Run:
    scenario: Scenario
    host: ControllerHost
    base: Path
    rng: random.Random
    devices: list[SimDevice] = field(default_factory=list)
    by_group: dict[str, list[SimDevice]] = field(default_factory=dict)
    stats: dict[str, GroupStats] = field(default_factory=dict)
    events: list[_EventResult] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)
    watchers: set[asyncio.Task[None]] = field(default_factory=set)
    poll_s: float = 1.0
    event_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    restores: list[asyncio.Task[None]] = field(default_factory=list)
    #: Devices that left (decommissioned): the controller still owes them nothing.
    left: set[str] = field(default_factory=set)
    blocks: tuple[BlockProfile, ...] = ()
    #: (hardware class, precision) -> the whole model's latency there (see ``_local_estimates``).
    local_ms: dict[tuple[str, str], float] = field(default_factory=dict)
    scales: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    real: RealRuntime | None = None
    t0: float = 0.0
    next_index: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0


async def run_scenario(
    scenario: Scenario,
    host: ControllerHost,
    *,
    base: Path,
    engine: str,
    progress: Progress | None = None,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """``poll_s``: how often convergence after an event is checked (each check lists the fleet)."""
    wall_started = time.monotonic()
    run = _Run(scenario, host, base, random.Random(scenario.seed), poll_s=poll_s)
    if scenario.workload.real_fraction > 0:
        run.real = RealRuntime(host.data_dir / "artifacts", seed=scenario.seed)
    run.series = {k: [] for k in ("t_s", "connected", "converged", "answered", "degraded", "failed")}
    loop = asyncio.get_running_loop()
    try:
        await host.start()
        model = await host.model(scenario.model.name)
        run.blocks = model.block_profiles
        run.t0 = loop.time()
        for group in scenario.fleet:
            run.stats[group.name] = GroupStats()
            run.by_group[group.name] = []
        specs = [spec for group in scenario.fleet for spec in _specs(run, group.name, group.count)]
        ramp = _spawn(run, _ramp(run, specs))
        timeline = _spawn(run, _timeline(run))
        sampler = _spawn(run, _sample_forever(run, progress))
        await asyncio.sleep(scenario.duration)
        await timeline
        await ramp
        # Faults end by the end of the run (validated); an apply still running is waited for.
        await asyncio.gather(*run.event_tasks, return_exceptions=True)
        await asyncio.gather(*run.restores, return_exceptions=True)
        for d in run.devices:
            d.stop_workload()
        await _drain(run)
        sampler.cancel()
        await _sample(run)
        records = await _account(run)
        for w in list(run.watchers):
            w.cancel()
        await asyncio.gather(*run.watchers, return_exceptions=True)
        connected_at_end = sum(d.connected for d in run.devices)
        usage = host.usage()
        report = _report(run, engine, records, connected_at_end, usage, time.monotonic() - wall_started)
    finally:
        for w in list(run.watchers):  # the ramp and events must not start anything now
            w.cancel()
        await asyncio.gather(*run.watchers, return_exceptions=True)
        # The controller first: then the devices' goodbyes cost it nothing (it records them at once).
        await host.aclose()
        await asyncio.gather(*(d.stop() for d in run.devices), return_exceptions=True)
    return report


def _spawn(run: _Run, coro: Any) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
    run.watchers.add(task)
    task.add_done_callback(run.watchers.discard)
    return task


# --- the fleet -----------------------------------------------------------------------------------------


def _specs(run: _Run, group_name: str, count: int) -> list[DeviceSpec]:
    group = next(g for g in run.scenario.fleet if g.name == group_name)
    start = run.next_index.get(group_name, 0)
    run.next_index[group_name] = start + count
    specs = []
    for i in range(start, start + count):
        device_id = f"{group.name}-{i:05d}"
        rng = random.Random(f"{run.scenario.seed}:{device_id}:links")
        links = tuple(
            LinkMeasurement(
                link.pool, round(link.bandwidth_mbps.sample(rng), 3), round(link.rtt_ms.sample(rng), 3)
            )
            for link in group.links
        )
        labels = {"fleet-sim/group": group.name, **group.labels}
        hardware = HardwareProfile(
            hardware_class=group.hardware_class,
            cpu_cores=4,
            memory_bytes=4 << 30,
            labels=labels,
            agent_version="sim",
        )
        specs.append(DeviceSpec(device_id, group.name, hardware, links, group.request_rate, index=i))
    return specs


def _new_device(run: _Run, spec: DeviceSpec) -> SimDevice:
    w = run.scenario.workload
    loop = asyncio.get_running_loop()

    def rate_factor(t: float) -> float:
        if not w.diurnal_amplitude:
            return 1.0
        return 1.0 + w.diurnal_amplitude * math.sin(2 * math.pi * (t - run.t0) / w.period)

    from simulator.vclock import EPOCH_MS

    device = SimDevice(
        spec,
        transport=run.host.transport(len(run.devices)),
        enroll=run.host.enroll,
        stats=run.stats[spec.group],
        rng=random.Random(f"{run.scenario.seed}:{spec.device_id}"),
        wall_ms=lambda: EPOCH_MS + int(loop.time() * 1000),
        rate_factor=rate_factor,
        latency_sigma=w.latency_sigma,
        heartbeat_s=run.scenario.controller.heartbeat_interval,
    )
    device.local_ms = run.local_ms
    device.scales = run.scales
    # Which devices run real onnxruntime: every 1/real_fraction-th of each group, so the share is
    # exact however small the fleet, and a device keeps its role when others join.
    f = w.real_fraction
    if run.real is not None and math.floor((spec.index + 1) * f) > math.floor(spec.index * f):
        device.real = run.real
    run.devices.append(device)
    run.by_group[spec.group].append(device)
    return device


async def _ramp(run: _Run, specs: list[DeviceSpec]) -> None:
    """Start devices at ``connect_rate`` per second (a fleet that comes up, not a thundering herd)."""
    per_step = max(1, round(run.scenario.controller.connect_rate * RAMP_STEP_S))
    for i in range(0, len(specs), per_step):
        for spec in specs[i : i + per_step]:
            _new_device(run, spec).start()
        if i + per_step < len(specs):
            await asyncio.sleep(RAMP_STEP_S)


# --- the timeline ----------------------------------------------------------------------------------------


async def _timeline(run: _Run) -> None:
    for event in sorted(run.scenario.timeline, key=lambda e: e.at):
        delay = event.at - run.now()
        if delay > 0:
            await asyncio.sleep(delay)
        result = _EventResult(round(run.now(), 3), event.kind, _describe(event))
        run.events.append(result)
        log.info("t=%.1fs %s: %s", result.at_s, result.kind, result.detail)
        # Each on its own: an apply to 10,000 devices takes a while, and the next event keeps its time.
        run.event_tasks.append(_spawn(run, _run_event(run, event, result)))


async def _run_event(run: _Run, event: Event, result: _EventResult) -> None:
    """An event that fails (e.g. its policies are refused) is reported and fails the run."""
    try:
        await _apply_event(run, event, result)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        result.error = str(exc) or type(exc).__name__
        log.error("t=%.1fs %s failed: %s", result.at_s, result.kind, result.error)


def _describe(event: Event) -> str:
    b = event.body
    match event.kind:
        case "apply":
            return str(b)
        case "cut_links" | "blackhole":
            return f"{b.percent:g}% of {b.group} for {b.duration:g}s"
        case "reboot":
            return f"{b.percent:g}% of {b.group} reboot offline, link back after {b.duration:g}s"
        case "drop_bandwidth":
            return f"{b.percent:g}% of {b.group} to {b.factor:g}x bandwidth for {b.duration:g}s"
        case "restart_controller" | "restart_broker":
            return f"down for {b.down_for:g}s"
        case "join" | "leave":
            return f"{b.count} devices of {b.group}"
    return ""


def _pick(run: _Run, group: str, percent: float) -> list[SimDevice]:
    devices = [d for d in run.by_group[group] if d.running]
    n = round(len(devices) * percent / 100)
    return sorted(run.rng.sample(devices, n), key=lambda d: d.spec.device_id) if n else []


async def _apply_event(run: _Run, event: Event, result: _EventResult) -> None:
    b = event.body
    match event.kind:
        case "apply":
            files = _policy_files(run.base / b)
            started = time.monotonic()
            changed = await run.host.apply(files, f"fleet-sim {run.scenario.name}: {b}")
            log.info(
                "apply %s: %d devices changed, the call took %.1fs wall",
                b,
                changed,
                time.monotonic() - started,
            )
            _local_estimates(run, run.base / b)
            result.detail += f" ({changed} devices changed)"
            # From the moment the operator applied: the call itself is part of converging.
            _watch(run, result, settle_from=result.at_s)
        case "cut_links" | "blackhole" | "drop_bandwidth":
            picked = _pick(run, b.group, b.percent)
            mode = {"cut_links": LinkMode.CUT, "blackhole": LinkMode.BLACKHOLE}.get(event.kind)
            for d in picked:
                if mode is not None:
                    d.link.set(mode)
                else:
                    d.measure_links(b.factor)
            run.restores.append(_spawn(run, _restore_after(run, result, picked, b.duration, event.kind)))
        case "reboot":
            picked = _pick(run, b.group, b.percent)
            for d in picked:
                d.link.set(LinkMode.CUT)
                await d.stop()
                d.start()  # a fresh core from its snapshot: it must serve again without the controller
            run.restores.append(_spawn(run, _restore_after(run, result, picked, b.duration, "cut_links")))
        case "restart_controller":
            await run.host.restart(b.down_for)
            _watch(run, result, settle_from=result.at_s + b.down_for)
        case "restart_broker":
            await run.host.restart_broker(b.down_for)
            _watch(run, result, settle_from=result.at_s + b.down_for)
        case "join":
            for spec in _specs(run, b.group, b.count):
                _new_device(run, spec).start()
            _watch(run, result, settle_from=run.now())
        case "leave":
            # Decommissioned: no new requests, what they hold is delivered, then they power off.
            leaving = _pick(run, b.group, 100)[: b.count]
            for d in leaving:
                d.stop_workload()
            _spawn(run, _leave(run, result, leaving))


async def _restore_after(
    run: _Run, result: _EventResult, picked: list[SimDevice], duration: float, kind: str
) -> None:
    await asyncio.sleep(duration)
    for d in picked:
        if kind == "drop_bandwidth":
            d.measure_links(1.0)
        else:
            d.link.set(LinkMode.UP)
    _watch(run, result, settle_from=run.now())


async def _leave(run: _Run, result: _EventResult, leaving: list[SimDevice]) -> None:
    deadline = run.now() + DRAIN_S
    # An observer's poll: the devices' outboxes signal nothing, and must not be changed to.
    while run.now() < deadline and any(d.outbox.state().count for d in leaving):  # noqa: ASYNC110
        await asyncio.sleep(run.poll_s)
    for d in leaving:
        await d.stop()
        run.left.add(d.spec.device_id)
    _watch(run, result, settle_from=run.now())


def _watch(run: _Run, result: _EventResult, *, settle_from: float) -> None:
    """Record how long after ``settle_from`` every running device is connected and converged."""

    async def watch() -> None:
        while True:
            connected = all(d.connected for d in run.devices if d.running)
            try:
                settled = connected and await _unconverged(run) == 0
            except TransientError:  # the controller is down (a restart): not settled yet
                settled = False
            if settled:
                result.converged_s = round(run.now() - settle_from, 3)
                return
            await asyncio.sleep(run.poll_s)

    _spawn(run, watch())


def _local_estimates(run: _Run, policies: Path) -> None:
    """What the whole model costs on each hardware class at each precision, for requests served by
    the fallback: the host-measured blocks times the class's latency scale (as the planner
    estimates a local plan), plus its call overhead."""
    classes = load_policies([policies]).hardware_classes
    run.local_ms.clear()
    run.scales.clear()
    for name, hc in classes.items():
        scales = hc.spec.latency_scale or {}
        overhead = hc.spec.call_overhead_ms or 0.0
        for precision, scale in scales.items():
            run.scales[(name, str(precision))] = (scale, overhead)
            blocks = [b.latency_ms for b in run.blocks if b.precision == precision and b.batch_size == 1]
            if blocks:
                run.local_ms[(name, str(precision))] = sum(blocks) * scale + overhead


def _policy_files(path: Path) -> list[PolicyFile]:
    files, errors = policy_files([path])
    if errors:
        raise ValueError("; ".join(str(e) for e in errors))
    return [PolicyFile(str(f.relative_to(path.parent)), f.read_text(encoding="utf-8")) for f in files]


# --- sampling, draining, accounting ------------------------------------------------------------------------


async def _sample_forever(run: _Run, progress: Progress | None) -> None:
    while True:
        await _sample(run)
        if progress is not None:
            progress({k: v[-1] for k, v in run.series.items()} | {"devices": len(run.devices)})
        await asyncio.sleep(run.scenario.sample_every)


async def _sample(run: _Run) -> None:
    s = run.series
    running = [d for d in run.devices if d.running]
    s["t_s"].append(round(run.now(), 3))
    s["connected"].append(sum(d.connected for d in running))
    try:
        s["converged"].append(max(0, len(running) - await _unconverged(run)))
    except TransientError:  # the controller is down (a restart): nobody is known to have converged
        s["converged"].append(0)
    s["answered"].append(sum(g.answered for g in run.stats.values()))
    s["degraded"].append(sum(g.degraded for g in run.stats.values()))
    s["failed"].append(sum(g.failed for g in run.stats.values()))


async def _unconverged(run: _Run) -> int:
    """Running devices behind their desired version (the ones that left are owed nothing)."""
    return sum(1 for device_id in await run.host.unconverged() if device_id not in run.left)


async def _drain(run: _Run) -> None:
    deadline = run.now() + DRAIN_S
    while run.now() < deadline:
        if all(d.outbox.state().count == 0 for d in run.devices if d.running):
            return
        await asyncio.sleep(run.poll_s)
    left = sum(d.outbox.state().count for d in run.devices if d.running)
    log.warning("records still unacknowledged after a %gs drain: %d", DRAIN_S, left)


async def _account(run: _Run) -> dict[str, int]:
    seen = await run.host.records()
    produced = delivered = dropped = duplicated = lost = undelivered = 0
    for d in run.devices:
        got = seen.get(d.spec.device_id)
        received = got.received if got is not None else 0
        produced += d.produced
        delivered += min(received, d.produced)
        dropped += d.dropped
        duplicated += max(0, received - d.produced)
        waiting = d.outbox.state().count if d.running else 0
        undelivered += waiting
        lost += max(0, d.produced - received - d.dropped - waiting)
    return {
        "produced": produced,
        "delivered": delivered,
        "dropped": dropped,
        "duplicated": duplicated,
        "lost": lost,
        # Still in a running device's outbox when the drain gave up: late, not lost.
        "undelivered": undelivered,
    }


# --- the report --------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _report(
    run: _Run,
    engine: str,
    records: dict[str, int],
    connected_at_end: int,
    usage: dict[str, float],
    wall_s: float,
) -> dict[str, Any]:
    sc = run.scenario
    groups = []
    for g in sc.fleet:
        st = run.stats[g.name]
        served = [
            d.serving for d in run.by_group[g.name] if d.serving is not None and d.serving.plan is not None
        ]
        predicted = [a.plan.predicted_latency_ms for a in served if a.plan is not None]
        slo = [a.plan.slo_ms for a in served if a.plan is not None and a.plan.slo_ms > 0]
        groups.append(
            {
                "group": g.name,
                "hardware_class": g.hardware_class,
                "devices": len(run.by_group[g.name]),
                "requests": st.requests,
                "p50_ms": round(_percentile(st.latencies, 0.5), 3),
                "p95_ms": round(_percentile(st.latencies, 0.95), 3),
                "predicted_ms": round(statistics.median(predicted), 3) if predicted else 0.0,
                "slo_ms": max(slo) if slo else 0.0,
                "attainment": round(st.slo_met / st.slo_requests, 4) if st.slo_requests else 0.0,
                "degraded": st.degraded,
                "failed": st.failed,
                "real_requests": st.real_requests,
            }
        )
    answered = sum(s.answered for s in run.stats.values())
    degraded = sum(s.degraded for s in run.stats.values())
    failed = sum(s.failed for s in run.stats.values())
    slo_requests = sum(s.slo_requests for s in run.stats.values())
    slo_met = sum(s.slo_met for s in run.stats.values())
    messages = sum(d.messages for d in run.devices)
    elapsed = wall_s if engine == "realtime" else max(run.now(), 1e-9)
    report: dict[str, Any] = {
        "scenario": sc.name,
        "engine": engine,
        "seed": sc.seed,
        "devices": len(run.devices),
        "duration_s": sc.duration,
        "wall_s": round(wall_s, 3),
        # The first apply's: how long the fleet took to run the plan it was given.
        "converged_s": next((e.converged_s for e in run.events if e.kind == "apply"), None),
        "events": [e.__dict__ for e in run.events],
        "availability": {"answered": answered, "degraded": degraded, "failed": failed},
        "records": records,
        "slo": {
            "requests": slo_requests,
            "attainment": round(slo_met / slo_requests, 4) if slo_requests else 0.0,
        },
        "groups": groups,
        "controller": {
            "cpu_s": round(usage["cpu_s"], 3),
            "cpu_percent": round(100 * usage["cpu_s"] / wall_s, 1) if wall_s > 0 else 0.0,
            "rss_mb_peak": round(usage["rss_mb_peak"], 1),
            # Realtime: per wall second; virtual: per simulated second.
            "messages_per_s": round(messages / elapsed, 1),
        },
        "timeseries": run.series,
        "connected_at_end": connected_at_end,
        "controller_restarts": run.host.restarts,
    }
    report["assertions"] = [_check(a, report, run) for a in sc.assertions]
    failed_events = [e for e in run.events if e.error]
    if failed_events:
        detail = "; ".join(f"{e.kind} at {e.at_s:g}s: {e.error}" for e in failed_events)
        report["assertions"].append({"name": "every event ran", "passed": False, "detail": detail[:2000]})
    report["passed"] = all(a["passed"] for a in report["assertions"])
    return report


def _check(a: Assertion, report: dict[str, Any], run: _Run) -> dict[str, Any]:
    kind, value = a.kind, a.value
    av, rec = report["availability"], report["records"]
    requests = av["answered"] + av["failed"]
    match kind:
        case "converged_within":
            applies = [e for e in run.events if e.kind == "apply"]
            worst = [e.converged_s for e in applies]
            ok = bool(applies) and all(c is not None and c <= value for c in worst)
            detail = (
                ", ".join("never" if c is None else f"{c:g}s" for c in worst) or "no apply in the timeline"
            )
            return {"name": f"converged_within {value:g}s", "passed": ok, "detail": f"converged in {detail}"}
        case "records_lost_max" | "records_duplicated_max":
            what = kind.removeprefix("records_").removesuffix("_max")
            return {
                "name": f"records_{what} <= {value}",
                "passed": rec[what] <= value,
                "detail": f"{rec[what]} {what}",
            }
        case "slo_attainment_min":
            got = report["slo"]["attainment"]
            return {"name": f"slo_attainment >= {value:g}", "passed": got >= value, "detail": f"{got:.4f}"}
        case "degraded_max" | "failed_max":
            what = kind.removesuffix("_max")
            got = av[what] / requests if requests else 0.0
            return {
                "name": f"{what} <= {value:g}",
                "passed": got <= value,
                "detail": f"{got:.4f} of {requests}",
            }
        case "all_connected":
            running = sum(1 for d in run.devices if d.running)
            ok = (report["connected_at_end"] == running) == value
            return {
                "name": "all_connected",
                "passed": ok,
                "detail": f"{report['connected_at_end']}/{running}",
            }
    raise AssertionError(kind)
