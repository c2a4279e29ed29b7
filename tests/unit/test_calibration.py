"""Calibration of the planner from request telemetry (controller.service.calibration): what a
partitioned request costs the device around its segment and hops, and the planner adding it."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

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
from controller.planner.configs import build_table
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


def test_the_planner_adds_it_to_the_partitioned_configurations_of_that_class() -> None:
    model = synthetic.model(random.Random(0), name="m", cuts=4, precisions=("fp32", "int8"))
    dep = DeploymentInput("d", "m", ("p1",), slo_ms=100.0)
    edge = (PoolInput("edge", Tier.EDGE, "edge-npu", ("e1",)), catalog.resolve("edge-npu"))
    phone_spec = catalog.resolve("phone-cpu")
    plain = build_table(model, dep, phone_spec, edge, None)
    costed = dataclasses.replace(model, request_overhead_ms={"phone-cpu": 0.7, "phone-npu": 9.0})
    table = build_table(costed, dep, phone_spec, edge, None)
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
