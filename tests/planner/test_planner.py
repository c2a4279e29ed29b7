"""Planner behaviour on hand-built instances: capacity and priority, hysteresis, the binding
constraint and explanations, and optimality against the exact MILP on a contended fleet."""

from __future__ import annotations

import dataclasses

import pytest

from controller.planner import catalog, plan, synthetic
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
PRECISIONS4 = ("fp32", "fp16", "int8", "int4")


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


# --- re-planning, node placement and explanations (review findings) ------------------------------


def test_replanning_a_contended_fleet_keeps_every_device_on_its_configuration_and_node() -> None:
    # Three nodes of one site, shared by two priorities, full: before hysteresis covered the node,
    # re-planning this moved devices between the site's nodes although nothing had changed.
    data = synthetic.instance(
        3,
        devices=100,
        cuts=8,
        edge_sites=1,
        nodes_per_site=3,
        slots_per_node=1,
        cloud_workers=2,
        cloud_slots=2,
        slo_ms=30.0,
        request_rate=20.0,
        priorities=(0, 5),
    )
    first = plan(data)
    nodes = {p.edge_node for p in first.devices if p.edge_node}
    assert len(nodes) == 3  # every node serves someone...
    assert all(
        u.used_slots >= 0.9 * u.capacity_slots for u in first.usage if u.node in nodes
    )  # ...and is full
    again = plan(
        dataclasses.replace(
            data,
            current={p.device_id: p.key for p in first.devices},
            current_edge_node={p.device_id: p.edge_node for p in first.devices if p.edge_node},
        )
    )
    before = {p.device_id: (p.key, p.edge_node) for p in first.devices}
    moved = [p.device_id for p in again.devices if (p.key, p.edge_node) != before[p.device_id]]
    assert moved == []


def test_a_device_stays_on_its_current_node_when_it_fits_there() -> None:
    data = fleet(4, slots=100, nodes=3)
    first = plan(data)
    assert {p.edge_node for p in first.devices} >= {"e0", "e1"}
    # Tell the planner they all run on e2 now: there is room, so there they stay.
    again = plan(
        dataclasses.replace(
            data,
            current={p.device_id: p.key for p in first.devices},
            current_edge_node={p.device_id: "e2" for p in first.devices},
        )
    )
    assert {p.edge_node for p in again.devices} == {"e2"}


def test_an_edge_segment_always_takes_time_and_a_node() -> None:
    # A call overhead larger than the blocks it is subtracted from once made the whole edge segment
    # free: no slots, so no node, and load nobody tracked.
    data = synthetic.instance(1, devices=3, cuts=4, edge_sites=1, nodes_per_site=2)
    devices = tuple(
        dataclasses.replace(d, links={k: Link(500.0, 2.0) for k in d.links}) for d in data.devices
    )
    slow_phone = HardwareClassSpec(
        "phone-cpu",
        ("fp32", "fp16", "int8", "int4"),
        4 * 1024 * MIB,
        dict.fromkeys(PRECISIONS4, 20.0),
        dict.fromkeys(PRECISIONS4, 20.0),
    )
    edge = dataclasses.replace(catalog.resolve("edge-npu"), call_overhead_ms=5.0, source="policy:edge-npu")
    result = plan(
        dataclasses.replace(data, devices=devices, hardware={"edge-npu": edge, "phone-cpu": slow_phone})
    )
    on_edge = [p for p in result.devices if p.key.pattern is Pattern.DEVICE_EDGE]
    assert on_edge
    model = next(iter(data.models.values()))
    for p in on_edge:
        (seg,) = [s for s in p.segments if s.tier is Tier.EDGE]
        slowest = max(model.block_ms[(HOST, seg.precision, 1)][seg.start : seg.end])
        assert (
            seg.compute_ms >= slowest * edge.latency_scale[seg.precision] - 1e-9
        )  # never below its slowest block
        assert seg.slots > 0 and p.edge_node and seg.where == p.edge_node
    assert sum(u.devices for u in result.usage if u.tier is Tier.EDGE) == len(on_edge)


def test_a_device_whose_best_configuration_needs_more_than_a_node_is_told_so() -> None:
    data = fleet(1, slots=1)
    data = dataclasses.replace(
        data, deployments=(dataclasses.replace(data.deployments[0], request_rate=2000.0),)
    )
    (p,) = plan(data, explain_devices={"p00"}).devices
    assert p.binding is Binding.CAPACITY
    assert "needs 3.20 slots of an edge node" in p.reason and "a node of edge holds 0.50" in p.reason
    assert "went to other devices" not in p.reason
    edge = next(a for a in p.alternatives if a.key.pattern is Pattern.DEVICE_EDGE)
    assert "a node of edge holds 0.50" in edge.why_not


def test_a_configuration_kept_by_hysteresis_is_explained_as_such() -> None:
    data = fleet(1, slots=100)
    current = ConfigKey(Pattern.DEVICE_EDGE, (1,), ("int8", "fp32"), "edge", "")
    weights = dataclasses.replace(data.weights, hysteresis=0.01)
    (p,) = plan(
        dataclasses.replace(data, current={"p00": current}, weights=weights), explain_devices={"p00"}
    ).devices
    assert p.key == current and p.binding is None
    assert "kept as it is by hysteresis" in p.reason and "below the hysteresis margin of 0.01" in p.reason
    better = max(p.alternatives, key=lambda a: a.score)
    assert better.score > p.score and "hysteresis" in better.why_not and "capacity" not in better.why_not


def test_the_accuracy_floor_message_names_memory_when_what_reaches_it_does_not_fit() -> None:
    data = fleet(1, slots=100)
    data = dataclasses.replace(
        data,
        devices=(dataclasses.replace(data.devices[0], memory_bytes=20 * MIB),),
        deployments=(dataclasses.replace(data.deployments[0], partitioning=False, slo_ms=100.0),),
    )
    (p,) = plan(data).devices
    assert p.binding is Binding.ACCURACY
    # The best over what fits (int8), not over configurations it cannot hold (fp32's 1.0).
    assert "the best that fits: 0.9900" in p.reason and "1.0000" not in p.reason
    assert "need at least 40.0 MiB of memory, 16.0 MiB may be used" in p.reason


def test_reasons_own_up_to_estimated_accuracy_and_unknown_hardware() -> None:
    data = fleet(1, slots=1)
    model = dataclasses.replace(tiny_model(), estimated_loss=frozenset({"int8"}))
    data = dataclasses.replace(
        data,
        models={"m": model},
        deployments=(dataclasses.replace(data.deployments[0], request_rate=400.0),),
    )
    (p,) = plan(data).devices
    assert len(set(p.key.precisions)) > 1  # a mix: int8 on the device, fp32 on the edge
    assert "its accuracy is an estimate" in p.reason and "int8" in p.reason
    # Measured variants (one precision everywhere) need no such note.
    uniform = plan(
        dataclasses.replace(data, deployments=(dataclasses.replace(data.deployments[0], request_rate=100.0),))
    )
    assert all("estimate" not in d.reason for d in uniform.devices if len(set(d.key.precisions)) == 1)
    # A class nobody described is timed as the host, and its reason says so (an infeasible one too).
    mystery = dataclasses.replace(data.devices[0], hardware_class="mystery-soc", memory_bytes=0)
    (q,) = plan(dataclasses.replace(data, devices=(mystery,))).devices
    assert "'mystery-soc' is in neither the catalog nor a HardwareClass policy" in q.reason
    tiny = dataclasses.replace(mystery, memory_bytes=MIB)
    off = dataclasses.replace(data.deployments[0], partitioning=False)
    (x,) = plan(dataclasses.replace(data, devices=(tiny,), deployments=(off,))).infeasible
    assert x.binding is Binding.MEMORY and "neither the catalog nor a HardwareClass policy" in x.reason
