"""Calibration of the planner from request telemetry (controller.service.calibration): what a
partitioned request costs the device around its segment and hops, and the planner adding it."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest

from common.types import (
    Assignment,
    AssignmentPlan,
    Device,
    HardwareProfile,
    HopTiming,
    InferenceRecord,
    Outcome,
    PlannedSegment,
    TelemetryRecord,
)
from controller.planner import catalog, plan, synthetic
from controller.planner.configs import ConfigTable, build_table
from controller.planner.types import DeploymentInput, Pattern, PoolInput, Tier
from controller.service import calibration
from controller.service.calibration import RequestOverhead, request_overheads

VERSION = 3
PLAN = AssignmentPlan(
    deployment="d",
    pattern="device+edge",
    segments=(PlannedSegment("device", 0, 20, "int8", "p1"), PlannedSegment("edge", 20, 0, "fp32", "e1")),
    edge_pool="edge",
    edge_node="e1",
)


def phone(
    device_id: str = "p1", *, seen: int = 0, plan: AssignmentPlan = PLAN, cls: str = "phone-cpu"
) -> Device:
    return Device(
        device_id,
        HardwareProfile(cls),
        last_seen_ms=seen,
        assignment=Assignment(VERSION, "m", "fp32", "a" * 64, plan=plan),
    )


EDGE = Device("e1", HardwareProfile("edge-npu"), assignment=Assignment(1))


def request(
    seq: int,
    overhead: float,
    *,
    version: int = VERSION,
    outcome: Outcome = Outcome.OK,
    path: str = "partitioned",
) -> TelemetryRecord:
    """A request whose latency is its hops' parts (2 + 1 + 0.5 + 3 ms) plus ``overhead``."""
    hops = (
        HopTiming("p1", "device", compute_ms=2.0),
        HopTiming("e1", "edge", queue_ms=0.5, compute_ms=1.0, transfer_ms=3.0),
    )
    body = InferenceRecord(
        "a" * 64, 6.5 + overhead, outcome, path=path, hops=hops, assignment_version=version
    )
    return TelemetryRecord(seq, 0, body)


def test_the_overhead_is_the_median_of_what_the_parts_leave() -> None:
    records = [request(i, 0.7) for i in range(40)] + [request(100 + i, 50.0) for i in range(5)]
    assert request_overheads([phone(), EDGE], {"p1": records}) == (
        RequestOverhead("m", "phone-cpu", 0.7, 45, 1),
    )
    # Per (model, class of the requesting device), over its devices; rounded to 0.01 ms.
    other = phone("p2", cls="phone-npu")
    got = request_overheads(
        [phone(), phone("p3"), other, EDGE],
        {
            "p1": [request(i, 0.5) for i in range(20)],
            "p3": [request(i, 0.61234) for i in range(21)],
            "p2": [request(i, 2.0) for i in range(40)],
        },
    )
    assert got == (
        RequestOverhead("m", "phone-cpu", 0.61, 41, 2),
        RequestOverhead("m", "phone-npu", 2.0, 40, 1),
    )


def test_only_requests_comparable_with_the_plan_in_force_count() -> None:
    comparable = [request(i, 0.8) for i in range(calibration.MIN_REQUESTS - 1)]
    assert request_overheads([phone(), EDGE], {"p1": comparable}) == ()  # one short
    others = [
        request(1000, 9.0, version=VERSION - 1),  # served under the previous plan
        request(1001, 9.0, outcome=Outcome.ERROR),
        request(1002, 9.0, path="fallback"),
    ]
    assert request_overheads([phone(), EDGE], {"p1": comparable + others}) == ()
    enough = [*comparable, request(2000, 0.8)]
    assert request_overheads([phone(), EDGE], {"p1": enough})[0].ms == 0.8
    # A device now planned local, or unknown to the controller, is not read at all.
    local = phone(plan=dataclasses.replace(PLAN, pattern="local", segments=()))
    assert request_overheads([local, EDGE], {"p1": enough}) == ()
    assert request_overheads([EDGE], {"p1": enough}) == ()
    # Parts that add up to more than the latency (clocks of two machines) give no negative cost.
    assert request_overheads([phone(), EDGE], {"p1": [request(i, -1.0) for i in range(40)]}) == ()


def tables(**calibrated: Any) -> tuple[ConfigTable, ConfigTable]:
    """A phone's configuration table with an edge pool, as planned without calibration and with the
    model's ``calibrated`` fields set."""
    model = synthetic.model(random.Random(0), name="m", cuts=4, precisions=("fp32", "int8"))
    dep = DeploymentInput("d", "m", ("p1",), slo_ms=100.0)
    edge = (PoolInput("edge", Tier.EDGE, "edge-npu", ("e1",)), catalog.resolve("edge-npu"))
    phone_spec = catalog.resolve("phone-cpu")
    return (
        build_table(model, dep, phone_spec, edge, None),
        build_table(dataclasses.replace(model, **calibrated), dep, phone_spec, edge, None),
    )


def test_the_planner_adds_it_to_the_partitioned_configurations_of_that_class() -> None:
    plain, table = tables(request_overhead_ms={"phone-cpu": 0.7, "phone-npu": 9.0})
    local = table.pattern == int(Pattern.LOCAL)
    assert local.any() and (~local).any()
    np.testing.assert_allclose(table.base_ms, plain.base_ms + np.where(local, 0.0, 0.7))
    np.testing.assert_array_equal(table.device_ms, plain.device_ms)  # its own column, not compute

    # In a plan: part of the latency, said in the reason, not counted as transfer.
    data = synthetic.instance(3)
    name = next(iter(data.models))
    classes = {d.hardware_class for d in data.devices}
    extra = dataclasses.replace(
        data,
        models={
            name: dataclasses.replace(data.models[name], request_overhead_ms=dict.fromkeys(classes, 0.7))
        },
    )
    partitioned = [p for p in plan(extra).devices if p.key.pattern is not Pattern.LOCAL]
    assert partitioned
    for p in partitioned:
        assert p.overhead_ms == 0.7
        assert abs(p.latency_ms - (p.compute_ms + p.queue_ms + p.transfer_ms + 0.7)) < 1e-9
        assert "0.70 ms the device spends on a partitioned request" in p.reason


def test_calibration_reads_the_most_recently_seen_partitioned_devices() -> None:
    local = phone("p2", seen=9, plan=dataclasses.replace(PLAN, pattern="local", segments=()))
    fleet = [phone("p1", seen=5), local, phone("p3", seen=7), EDGE]
    assert calibration.wanted(fleet) == ["p3", "p1"]
    assert calibration.wanted(fleet, limit=1) == ["p3"]


# -- compute ------------------------------------------------------------------------------------

#: The segments' compute as the profiles predict it: 4 ms on the phone, 2 ms on the edge node. The
#: figures the plan predicted are already scaled (x1.5): calibration must not compound them.
SCALED_PLAN = dataclasses.replace(
    PLAN,
    segments=(
        PlannedSegment("device", 0, 20, "int8", "p1", predicted_compute_ms=6.0, profiled_compute_ms=4.0),
        PlannedSegment("edge", 20, 0, "fp32", "e1", predicted_compute_ms=3.0, profiled_compute_ms=2.0),
    ),
)


def served(
    seq: int, device_ms: float, edge_ms: float, *, batch: int = 1, version: int = VERSION
) -> TelemetryRecord:
    hops = (
        HopTiming("p1", "device", compute_ms=device_ms),
        HopTiming("e1", "edge", compute_ms=edge_ms, transfer_ms=1.0, batch_size=batch),
    )
    body = InferenceRecord(
        "a" * 64,
        device_ms + edge_ms + 1.5,
        Outcome.OK,
        path="partitioned",
        hops=hops,
        assignment_version=version,
    )
    return TelemetryRecord(seq, 0, body)


def test_the_compute_scale_is_per_class_of_the_device_that_ran_the_segment_against_its_profile() -> None:
    records = [served(i, 4.4, 2.6) for i in range(40)] + [served(100 + i, 40.0, 20.0) for i in range(3)]
    got = calibration.compute_scales([phone(plan=SCALED_PLAN), EDGE], {"p1": records})
    # Measured over the profiled figure (4.4 / 4.0, 2.6 / 2.0), never over the already scaled one
    # (which would give x0.73 and x0.87); the median shrugs off the three slow requests.
    assert got == (
        calibration.ComputeScale("m", "edge-npu", 1.3, 43, 1),
        calibration.ComputeScale("m", "phone-cpu", 1.1, 43, 1),
    )
    # A plan recorded before profiled_compute_ms existed: its prediction is the profile's.
    old = dataclasses.replace(
        PLAN,
        segments=tuple(
            dataclasses.replace(s, predicted_compute_ms=s.profiled_compute_ms, profiled_compute_ms=0.0)
            for s in SCALED_PLAN.segments
        ),
    )
    assert calibration.compute_scales([phone(plan=old), EDGE], {"p1": records}) == got


def test_only_comparable_hops_of_big_enough_segments_count_and_the_scale_is_bounded() -> None:
    short = [served(i, 4.4, 2.6) for i in range(calibration.MIN_REQUESTS - 1)]
    assert calibration.compute_scales([phone(plan=SCALED_PLAN), EDGE], {"p1": short}) == ()
    # Batched hops (a batch-1 profile says nothing of them) and other versions' requests do not count.
    others = [served(1000, 4.4, 2.6, batch=8, version=VERSION - 1), served(1001, 4.4, 2.6, batch=8)]
    got = calibration.compute_scales([phone(plan=SCALED_PLAN), EDGE], {"p1": short + others})
    assert [(c.hardware_class, c.hops) for c in got] == [("phone-cpu", calibration.MIN_REQUESTS)]
    # A segment the profiles put under MIN_SCALED_SEGMENT_MS is mostly one call's fixed cost.
    tiny = dataclasses.replace(
        SCALED_PLAN,
        segments=(
            dataclasses.replace(
                SCALED_PLAN.segments[0], profiled_compute_ms=calibration.MIN_SCALED_SEGMENT_MS / 2
            ),
            SCALED_PLAN.segments[1],
        ),
    )
    enough = [served(i, 4.4, 2.6) for i in range(40)]
    assert [
        c.hardware_class for c in calibration.compute_scales([phone(plan=tiny), EDGE], {"p1": enough})
    ] == ["edge-npu"]
    # Bounded, and nothing where the segments ran as profiled.
    wild = [served(i, 400.0, 2.0) for i in range(40)]
    assert calibration.compute_scales([phone(plan=SCALED_PLAN), EDGE], {"p1": wild}) == (
        calibration.ComputeScale("m", "phone-cpu", calibration.MAX_SCALE, 40, 1),
    )
    # A hop run by a device the controller does not know is skipped.
    assert (
        calibration.compute_scales([phone(plan=SCALED_PLAN)], {"p1": enough})[0].hardware_class == "phone-cpu"
    )


def test_the_planner_scales_that_class_s_segments_and_says_so() -> None:
    plain, scaled = tables(compute_scale={"edge-npu": 1.25})
    np.testing.assert_allclose(scaled.edge_ms, plain.edge_ms * 1.25)
    np.testing.assert_allclose(scaled.edge_queue_ms, plain.edge_queue_ms * 1.25)  # the queue follows
    np.testing.assert_array_equal(scaled.device_ms, plain.device_ms)  # another class: untouched

    data = synthetic.instance(3)
    name = next(iter(data.models))
    classes = {d.hardware_class for d in data.devices}
    base = plan(data)
    slower = plan(
        dataclasses.replace(
            data,
            models={name: dataclasses.replace(data.models[name], compute_scale=dict.fromkeys(classes, 1.2))},
        )
    )
    by_id = {p.device_id: p for p in base.devices}
    checked = 0
    for p in slower.devices:
        device_segments = [s for s in p.segments if s.tier is Tier.DEVICE]
        for s in device_segments:
            assert abs(s.compute_ms - 1.2 * s.profiled_ms) < 1e-9
        before = by_id.get(p.device_id)
        if before is not None and before.key == p.key and device_segments:
            # Same configuration: the profiled compute is what the unscaled plan predicted.
            want = {s.tier: s.compute_ms for s in before.segments}
            for s in device_segments:
                assert abs(s.profiled_ms - want[s.tier]) < 1e-9
            checked += 1
        if device_segments:
            assert "scaled from the profiles" in p.reason and "x1.20" in p.reason
    assert checked


def test_the_assignment_carries_the_profiled_compute_beside_the_scaled_prediction() -> None:
    from controller.service.policies import assignment_plan

    data = synthetic.instance(3)
    name = next(iter(data.models))
    classes = {d.hardware_class for d in data.devices}
    scaled = dataclasses.replace(
        data, models={name: dataclasses.replace(data.models[name], compute_scale=dict.fromkeys(classes, 1.5))}
    )
    p = next(p for p in plan(scaled).devices if any(s.tier is Tier.DEVICE for s in p.segments))
    planned = assignment_plan(p)
    own = next(s for s in planned.segments if s.tier == "device")
    assert own.profiled_compute_ms > 0
    assert own.predicted_compute_ms == pytest.approx(1.5 * own.profiled_compute_ms, abs=1e-3)
    assert own.uncalibrated_compute_ms == own.profiled_compute_ms
