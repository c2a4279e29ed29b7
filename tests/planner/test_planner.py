"""Planner behaviour on hand-built instances: capacity and priority, hysteresis, the binding
constraint and explanations, and optimality against the exact MILP on a contended fleet."""

from __future__ import annotations

import dataclasses

import pytest

from controller.planner import plan, synthetic
from controller.planner.exact import objective, solve_exact
from controller.planner.types import (
    HOST,
    Binding,
    ConfigKey,
    DeploymentInput,
    DeviceInput,
    HardwareClassSpec,
    Link,
    Pattern,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
    VariantInfo,
)
from tests.planner import reference

MIB = 2**20


def tiny_model(local_ms: float = 40.0) -> PlannerModel:
    """Two blocks; fp32 exact, int8 fast but below a 0.995 floor."""
    half = local_ms / 2 / 2.5  # phone-cpu runs fp32 at 2.5x the host
    return PlannerModel(
        name="m",
        cut_indices=(7,),
        boundary_bytes=(1000, 4000, 100),
        precisions=("fp32", "int8"),
        block_ms={(HOST, "fp32", 1): (half, half), (HOST, "int8", 1): (half / 3, half / 3)},
        block_bytes={"fp32": (20 * MIB, 20 * MIB), "int8": (5 * MIB, 5 * MIB)},
        block_loss={"fp32": (0.0, 0.0), "int8": (0.004, 0.004)},
        variants={"fp32": VariantInfo("fp32", 40 * MIB, 1.0), "int8": VariantInfo("int8", 10 * MIB, 0.99)},
    )


def fleet(n: int, *, slots: int, nodes: int = 1, **dep: object) -> PlanInput:
    ids = tuple(f"p{i:02d}" for i in range(n))
    pool = PoolInput(
        "edge",
        Tier.EDGE,
        "fast-edge",
        tuple(f"e{i}" for i in range(nodes)),
        slots_per_node=slots,
        utilization_cap=0.5,
        default_link=Link(100.0, 2.0),
    )
    deployment = DeploymentInput(
        name="d", model="m", device_ids=ids, slo_ms=20.0, min_quality=0.995, request_rate=100.0
    )
    deployment = dataclasses.replace(deployment, **dep)  # type: ignore[arg-type]
    devices = tuple(DeviceInput(i, "phone-cpu", 2048 * MIB) for i in ids)
    # An edge class 10x faster than the controller host at fp32, so the edge meets the SLO.
    fast = HardwareClassSpec(
        "fast-edge", ("fp32", "int8"), 16 * 1024 * MIB, {"fp32": 0.1, "int8": 0.1}, {"fp32": 0.1, "int8": 0.1}
    )
    return PlanInput(
        devices=devices,
        models={"m": tiny_model()},
        deployments=(deployment,),
        pools=(pool,),
        hardware={"fast-edge": fast},
    )


def test_capacity_is_shared_and_the_rest_told_why() -> None:
    # Local misses the 20 ms SLO (40 ms) and int8 the floor: only the edge meets both, and it holds
    # a limited number of devices.
    data = fleet(10, slots=1)
    result = plan(data)
    on_edge = [p for p in result.devices if p.key.pattern is Pattern.DEVICE_EDGE]
    per_device = on_edge[0].segments[-1].slots
    assert 0 < len(on_edge) < 10
    assert len(on_edge) == int(0.5 / per_device)  # as many as the node holds at its 50% cap, no more
    assert sum(s.slots for p in on_edge for s in p.segments if s.tier is Tier.EDGE) <= 0.5 + 1e-9
    rest = [p for p in result.devices if p.key.pattern is Pattern.LOCAL]
    assert rest and all(p.binding is Binding.CAPACITY for p in rest)
    assert all("shared capacity" in p.reason for p in rest)
    assert all(p.feasible and p.binding is None for p in on_edge)


def test_higher_priority_gets_capacity_first() -> None:
    data = fleet(10, slots=1)
    ids = [d.id for d in data.devices]
    low = dataclasses.replace(data.deployments[0], name="low", device_ids=tuple(ids[:5]), priority=0)
    high = dataclasses.replace(data.deployments[0], name="high", device_ids=tuple(ids[5:]), priority=10)
    result = plan(dataclasses.replace(data, deployments=(low, high)))
    by = {p.device_id: p for p in result.devices}
    high_edge = sum(by[i].key.pattern is Pattern.DEVICE_EDGE for i in ids[5:])
    low_edge = sum(by[i].key.pattern is Pattern.DEVICE_EDGE for i in ids[:5])
    assert high_edge == 5  # all of the high-priority devices offload...
    assert low_edge < 5  # ...and the low-priority ones get what is left


def test_a_device_in_two_deployments_goes_to_the_higher_priority() -> None:
    data = fleet(2, slots=100)
    other = dataclasses.replace(data.deployments[0], name="other", priority=5)
    result = plan(dataclasses.replace(data, deployments=(data.deployments[0], other)))
    assert {p.deployment for p in result.devices} == {"other"}
    assert all("also selected by deployment d" in p.reason for p in result.devices)


def test_devices_no_deployment_selects_are_listed() -> None:
    data = fleet(2, slots=100)
    extra = DeviceInput("stray", "phone-cpu")
    result = plan(dataclasses.replace(data, devices=(*data.devices, extra)))
    assert result.unplanned == (("stray", "no deployment selects it"),)


@pytest.mark.parametrize(
    ("change", "binding", "words"),
    [
        ({"memory": 8 * MIB, "partitioning": False}, Binding.MEMORY, "nothing fits"),
        (
            {"precisions": {Tier.DEVICE: ("int8",), Tier.EDGE: ("int8",), Tier.CLOUD: ()}},
            Binding.ACCURACY,
            "floor",
        ),
        ({"slo_ms": 1.0}, Binding.LATENCY, "closest"),
    ],
)
def test_the_binding_constraint_is_named(change: dict[str, object], binding: Binding, words: str) -> None:
    data = fleet(1, slots=100)
    memory = change.pop("memory", None)
    if isinstance(memory, int):
        data = dataclasses.replace(data, devices=(dataclasses.replace(data.devices[0], memory_bytes=memory),))
    data = dataclasses.replace(data, deployments=(dataclasses.replace(data.deployments[0], **change),))  # type: ignore[arg-type]
    result = plan(data)
    if binding is Binding.MEMORY:
        assert [x.binding for x in result.infeasible] == [Binding.MEMORY]
        assert words in result.infeasible[0].reason
        return
    (p,) = result.devices
    assert p.binding is binding and not p.feasible
    assert words in p.reason


def test_explain_lists_the_other_patterns_and_why_they_lost() -> None:
    data = fleet(1, slots=100)
    (p,) = plan(data, explain_devices={"p00"}).devices
    assert p.key.pattern is Pattern.DEVICE_EDGE
    local = next(a for a in p.alternatives if a.key.pattern is Pattern.LOCAL)
    assert "misses the SLO" in local.why_not or "below the accuracy floor" in local.why_not
    assert plan(data).devices[0].alternatives == ()  # only for the devices asked about


def test_hysteresis_keeps_the_current_configuration_unless_the_gain_is_larger() -> None:
    data = synthetic.instance(4, devices=30, cuts=4, edge_sites=2)
    dep = data.deployments[0]
    pools = {p.name: p for p in data.pools}
    current: dict[str, ConfigKey] = {}
    gaps: dict[str, float] = {}
    for device in data.devices:
        edge = next(p for p in data.pools if p.tier is Tier.EDGE and p.clients and device.id in p.clients)
        opts = sorted(
            (o for o in reference.options(data, device, dep, edge, pools["cloud"])[0] if o.fits),
            key=lambda o: -o.score,
        )
        best, second = opts[0], opts[1]
        pool_of = {
            Pattern.LOCAL: ("", ""),
            Pattern.DEVICE_EDGE: (edge.name, ""),
            Pattern.DEVICE_CLOUD: ("", "cloud"),
        }
        e, c = pool_of.get(second.pattern, (edge.name, "cloud"))
        current[device.id] = ConfigKey(second.pattern, second.cuts, second.precisions, e, c)
        gaps[device.id] = best.score - second.score
    distinct = sorted(set(gaps.values()))
    assert len(distinct) >= 2
    middle = len(distinct) // 2
    median = (distinct[middle - 1] + distinct[middle]) / 2  # between two gaps: no ties with it
    weights = dataclasses.replace(data.weights, hysteresis=median)
    result = plan(dataclasses.replace(data, current=current, weights=weights))
    for p in result.devices:
        kept = p.key == current[p.device_id]
        # Kept exactly when moving would gain no more than the hysteresis.
        assert kept == (gaps[p.device_id] <= median + 1e-9), (p.device_id, gaps[p.device_id], median)
    assert any(p.key == current[p.device_id] for p in result.devices)
    assert any(p.key != current[p.device_id] for p in result.devices)


def test_contended_fleet_is_within_two_percent_of_the_exact_optimum() -> None:
    pytest.importorskip("scipy")
    data = synthetic.instance(
        1,
        devices=300,
        cuts=6,
        edge_sites=3,
        nodes_per_site=2,
        slots_per_node=1,
        cloud_workers=1,
        cloud_slots=1,
        slo_ms=25.0,
        request_rate=40.0,
        min_quality=0.995,
    )
    result = plan(data)
    exact = solve_exact(data, time_limit_s=60.0)
    ours = objective(result)
    assert exact.objective >= ours - 1e-6  # the MILP is exact: the planner cannot beat it
    assert (exact.objective - ours) / abs(exact.objective) <= 0.02
    # ...and capacity really binds here (otherwise this would test nothing).
    assert any(u.used_slots >= 0.9 * u.capacity_slots for u in result.usage if u.tier is Tier.EDGE)
    for u in result.usage:
        assert u.used_slots <= u.capacity_slots + 1e-9
