"""Planner invariants, on random instances (hypothesis), checked against an independent reference."""

from __future__ import annotations

import dataclasses
import os
import random

from hypothesis import HealthCheck, given, settings

from controller.planner import plan
from controller.planner.types import Pattern, PlanInput, PoolInput, Tier
from tests.planner import reference
from tests.planner.strategies import instances

SETTINGS = settings(
    max_examples=int(os.environ.get("PLANNER_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _pools_of(data: PlanInput, device_id: str) -> tuple[PoolInput | None, PoolInput | None]:
    dep = data.deployments[0]
    if not dep.partitioning:
        return None, None

    def first(tier: Tier) -> PoolInput | None:
        for p in sorted((p for p in data.pools if p.tier is tier), key=lambda p: p.name):
            if p.nodes and (p.clients is None or device_id in p.clients):
                return p
        return None

    return first(Tier.EDGE), first(Tier.CLOUD)


@SETTINGS
@given(instances())
def test_uncapacitated_choice_equals_exhaustive_enumeration(data: PlanInput) -> None:
    result = plan(data)
    dep = data.deployments[0]
    planned = {p.device_id: p for p in result.devices}
    for device in data.devices:
        edge, cloud = _pools_of(data, device.id)
        best = reference.best(data, device, dep, edge, cloud)
        if best is None:
            assert device.id not in planned, f"{device.id}: nothing fits, yet it was planned"
            assert any(x.device_id == device.id for x in result.infeasible)
            continue
        got = planned[device.id]
        assert abs(got.score - best.score) < 1e-7, (device.id, got.key, got.score, best)
        assert (
            abs(
                got.latency_ms
                - next(
                    o.latency
                    for o in reference.options(data, device, dep, edge, cloud)[0]
                    if o.fits
                    and (o.pattern, o.cuts, o.precisions)
                    == (got.key.pattern, got.key.cuts, got.key.precisions)
                )
            )
            < 1e-6
        )


@SETTINGS
@given(instances())
def test_feasible_devices_meet_slo_and_floor(data: PlanInput) -> None:
    """Uncapacitated: a device that has any configuration meeting both objectives gets one."""
    result = plan(data)
    dep = data.deployments[0]
    planned = {p.device_id: p for p in result.devices}
    for device in data.devices:
        edge, cloud = _pools_of(data, device.id)
        opts, _ = reference.options(data, device, dep, edge, cloud)
        can = any(
            o.fits and o.latency <= dep.slo_ms + 1e-9 and o.quality >= dep.min_quality - 1e-9 for o in opts
        )
        if can:
            got = planned[device.id]
            assert got.meets_slo and got.meets_accuracy and got.binding is None
            assert got.latency_ms <= dep.slo_ms + 1e-9 and got.quality >= dep.min_quality - 1e-9


@SETTINGS
@given(instances(capacitated=True))
def test_segments_memory_and_capacity(data: PlanInput) -> None:
    result = plan(data)
    model = next(iter(data.models.values()))
    for p in result.devices:
        # Segments cover the model exactly once, in order, tiers in path order.
        assert p.segments, p
        assert p.segments[0].start == 0 and p.segments[-1].end == model.blocks
        for left, right in zip(p.segments, p.segments[1:], strict=False):
            assert left.end == right.start and left.start < left.end
        tiers = [s.tier for s in p.segments]
        assert tiers == sorted(tiers, key=[Tier.DEVICE, Tier.EDGE, Tier.CLOUD].index)
        assert tuple(t for t in p.key.pattern.tiers if t in tiers) == tuple(tiers)
        assert all(s.end > s.start for s in p.segments if s.tier is not Tier.DEVICE)
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
                assert s.where in pools[p.edge_pool].nodes
                per_node[(p.edge_pool, s.where)] = per_node.get((p.edge_pool, s.where), 0.0) + s.slots
            elif s.tier is Tier.CLOUD:
                per_pool[p.cloud_pool] = per_pool.get(p.cloud_pool, 0.0) + s.slots
    for (pool, _node), used in per_node.items():
        assert used <= pools[pool].node_capacity_slots + 1e-9
    for pool, used in per_pool.items():
        assert used <= pools[pool].capacity_slots + 1e-9


@SETTINGS
@given(instances(capacitated=True))
def test_same_input_same_plan(data: PlanInput) -> None:
    first = plan(data)
    again = plan(data)
    assert first == again
    shuffled = list(data.devices)
    random.Random(7).shuffle(shuffled)
    assert plan(dataclasses.replace(data, devices=tuple(shuffled))) == first
