"""Planner invariants, on random instances (hypothesis), checked against an independent reference."""

from __future__ import annotations

import dataclasses
import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.planner import plan
from controller.planner.types import (
    ConfigKey,
    DeploymentInput,
    DeviceInput,
    Pattern,
    PlanInput,
    PoolInput,
    Tier,
)
from tests.planner import reference
from tests.planner.strategies import instances

SETTINGS = settings(
    max_examples=int(os.environ.get("PLANNER_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_TOL = 1e-7


def _key(o: reference.Option, edge: PoolInput | None, cloud: PoolInput | None) -> ConfigKey:
    uses_edge = o.pattern in (Pattern.DEVICE_EDGE, Pattern.DEVICE_EDGE_CLOUD)
    uses_cloud = o.pattern in (Pattern.DEVICE_CLOUD, Pattern.DEVICE_EDGE_CLOUD)
    return ConfigKey(
        o.pattern,
        o.cuts,
        o.precisions,
        edge.name if uses_edge and edge else "",
        cloud.name if uses_cloud and cloud else "",
    )


def _options(
    data: PlanInput, device: DeviceInput
) -> tuple[DeploymentInput | None, list[reference.Option], PoolInput | None, PoolInput | None]:
    dep = reference.deployment_of(data, device.id)
    if dep is None:
        return None, [], None, None
    edge, cloud = reference.pools_of(data, device.id, dep)
    opts = [o for o in reference.options(data, device, dep, edge, cloud)[0] if o.fits]
    return dep, opts, edge, cloud


@SETTINGS
@given(instances())
def test_uncapacitated_choice_equals_exhaustive_enumeration(data: PlanInput) -> None:
    """Every device gets its best configuration by exhaustive enumeration — or its current one, when
    that is within the hysteresis of the best; and so a device that has any configuration meeting
    both objectives gets one."""
    result = plan(data)
    planned = {p.device_id: p for p in result.devices}
    h = data.weights.hysteresis
    for device in data.devices:
        dep, opts, edge, cloud = _options(data, device)
        if dep is None:
            assert device.id in dict(result.unplanned)
            continue
        if not opts:
            assert device.id not in planned, f"{device.id}: nothing fits, yet it was planned"
            assert any(x.device_id == device.id for x in result.infeasible)
            continue
        got = planned[device.id]
        assert got.deployment == dep.name
        best = max(opts, key=lambda o: o.score)
        current = next((o for o in opts if _key(o, edge, cloud) == data.current.get(device.id)), None)
        margin = None if current is None else current.score + h - best.score
        if margin is not None and margin > _TOL:
            assert got.key == data.current[device.id], (device.id, got.key, current, best)
        elif margin is None or margin < -_TOL:
            assert abs(got.score - best.score) < _TOL, (device.id, got.key, got.score, best)
        mine = next(o for o in opts if _key(o, edge, cloud) == got.key)
        assert abs(got.score - mine.score) < _TOL and abs(got.latency_ms - mine.latency) < 1e-6
        if any(o.latency <= dep.slo_ms + 1e-9 and o.quality >= dep.min_quality - 1e-9 for o in opts):
            assert got.meets_slo and got.meets_accuracy and got.binding is None
            assert got.latency_ms <= dep.slo_ms + 1e-9 and got.quality >= dep.min_quality - 1e-9


def _check_segments_memory_and_capacity(data: PlanInput) -> None:
    result = plan(data)
    for p in result.devices:
        model = data.models[p.model]
        # Segments cover the model exactly once, in order, tiers in path order.
        assert p.segments, p
        assert p.segments[0].start == 0 and p.segments[-1].end == model.blocks
        for left, right in zip(p.segments, p.segments[1:], strict=False):
            assert left.end == right.start and left.start < left.end
        tiers = [s.tier for s in p.segments]
        assert tiers == sorted(tiers, key=[Tier.DEVICE, Tier.EDGE, Tier.CLOUD].index)
        assert tuple(t for t in p.key.pattern.tiers if t in tiers) == tuple(tiers)
        assert all(s.end > s.start for s in p.segments if s.tier is not Tier.DEVICE)
        # A serving segment always takes time, and an edge one always has a node.
        assert all(s.compute_ms > 0 for s in p.segments if s.tier is not Tier.DEVICE)
        assert (p.edge_node != "") == (Tier.EDGE in tiers)
        # Memory is never exceeded.
        assert p.memory_bytes <= p.memory_limit_bytes
        if p.key.pattern is Pattern.LOCAL:
            assert p.hops == ()
        assert abs(p.latency_ms - (p.compute_ms + p.queue_ms + p.transfer_ms)) < 1e-6
    # No pool over capacity (recomputed from the segments, not from the planner's own tally).
    pools = {pool.name: pool for pool in data.pools}
    per_node: dict[tuple[str, str], float] = {}
    per_pool: dict[str, float] = {}
    for p in result.devices:
        for s in p.segments:
            if s.tier is Tier.EDGE:
                assert s.where in pools[p.edge_pool].nodes and s.where == p.edge_node
                per_node[(p.edge_pool, s.where)] = per_node.get((p.edge_pool, s.where), 0.0) + s.slots
            elif s.tier is Tier.CLOUD:
                per_pool[p.cloud_pool] = per_pool.get(p.cloud_pool, 0.0) + s.slots
    for (pool, _node), used in per_node.items():
        assert used <= pools[pool].node_capacity_slots + 1e-9
    for pool, used in per_pool.items():
        assert used <= pools[pool].capacity_slots + 1e-9


@SETTINGS
@given(instances(capacitated=True))
def test_segments_memory_and_capacity(data: PlanInput) -> None:
    _check_segments_memory_and_capacity(data)


@SETTINGS
@given(instances(capacitated=True, priorities=False), st.floats(1.0, 3.0))
def test_ample_capacity_lets_every_device_meet_its_objectives(data: PlanInput, slack: float) -> None:
    """Capacitated: when every device has a configuration meeting its SLO and floor that fits the
    shared capacity alone, and there is room for all of them at once (each pool's nodes could each
    hold every such load of the pool), every device meets both. Devices that cannot meet even with
    free capacity are left out of the instance; the request rates are scaled down until the room is
    there (without batching, a lower rate changes loads, not latencies)."""
    data = dataclasses.replace(
        data, deployments=tuple(dataclasses.replace(d, batching=None) for d in data.deployments)
    )
    need: dict[str, list[float]] = {}  # per pool, the least load of each device's meeting options
    able: list[str] = []
    for device in data.devices:
        dep, opts, edge, cloud = _options(data, device)
        if dep is None:
            continue
        meeting = [o for o in opts if o.latency <= dep.slo_ms + 1e-9 and o.quality >= dep.min_quality - 1e-9]
        if not meeting:
            continue
        able.append(device.id)
        least = min(meeting, key=lambda o: (o.edge_slots + o.cloud_slots, -o.score))
        if edge is not None and least.edge_slots > 0:
            need.setdefault(edge.name, []).append(least.edge_slots)
        if cloud is not None and least.cloud_slots > 0:
            need.setdefault(cloud.name, []).append(least.cloud_slots)
    if not able:
        return
    scale = 1.0
    for pool in data.pools:
        loads = need.get(pool.name, [])
        if not loads:
            continue
        want = sum(loads) + max(loads) if pool.tier is Tier.EDGE else sum(loads)
        room = pool.node_capacity_slots if pool.tier is Tier.EDGE else pool.capacity_slots
        scale = min(scale, room / (want * slack))
    kept = set(able)
    data = dataclasses.replace(
        data,
        devices=tuple(d for d in data.devices if d.id in kept),
        deployments=tuple(
            dataclasses.replace(
                d,
                device_ids=tuple(i for i in d.device_ids if i in kept),
                request_rate=d.request_rate * scale,
            )
            for d in data.deployments
        ),
    )
    result = plan(data)
    assert not result.infeasible
    for p in result.devices:
        assert p.feasible, (p.device_id, p.reason)


@SETTINGS
@given(instances(capacitated=True))
def test_same_input_same_plan_and_replanning_it_moves_nobody(data: PlanInput) -> None:
    """Deterministic, whatever the order of the devices; and a plan's own configurations and edge
    nodes, fed back as the current ones, come back as they are (hysteresis covers the node too)."""
    first = plan(data)
    assert plan(data) == first
    shuffled = list(data.devices)
    random.Random(7).shuffle(shuffled)
    assert plan(dataclasses.replace(data, devices=tuple(shuffled))) == first
    current = {p.device_id: p.key for p in first.devices}
    nodes = {p.device_id: p.edge_node for p in first.devices if p.edge_node}
    again = plan(dataclasses.replace(data, current=current, current_edge_node=nodes))
    before = {p.device_id: (p.key, p.edge_node) for p in first.devices}
    assert {p.device_id: (p.key, p.edge_node) for p in again.devices} == before
