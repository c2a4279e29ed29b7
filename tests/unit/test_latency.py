"""A device's measured latency against its plan (controller.service.latency) and its wire form."""

from __future__ import annotations

import numpy as np
import pytest
from edgefleet.v1 import admin_pb2 as admin_pb

from common import serde
from common.errors import InvalidArgument
from common.limits import MAX_LATENCY_WINDOW
from common.types import (
    Assignment,
    AssignmentPlan,
    Device,
    DeviceEvent,
    HardwareProfile,
    HopTiming,
    InferenceRecord,
    Outcome,
    PlannedSegment,
    TelemetryRecord,
)
from controller.service.latency import summarize

SHA = "ab" * 32
PLAN = AssignmentPlan(
    deployment="digits-eu",
    pattern="device+edge",
    segments=(
        PlannedSegment("device", 0, 2, "fp32", "p1", predicted_compute_ms=1.0),
        PlannedSegment(
            "edge",
            2,
            0,
            "int8",
            "e1",
            predicted_compute_ms=2.0,
            predicted_queue_ms=0.5,
            predicted_transfer_ms=3.0,
        ),
    ),
    edge_pool="eu-edge",
    edge_node="e1",
    predicted_latency_ms=8.0,
    slo_ms=10.0,
    percentile=90.0,
    priority=3,
)


def device(plan: AssignmentPlan | None = PLAN) -> Device:
    return Device(
        id="p1",
        hardware=HardwareProfile("phone-cpu"),
        assignment=Assignment(version=1, model_name="digits", variant="fp32", artifact_sha256=SHA, plan=plan),
    )


def partitioned(seq: int, ms: float, *, edge_ms: float = 2.5, batch: int = 4) -> TelemetryRecord:
    hops = (
        HopTiming("p1", "device", compute_ms=1.2),
        HopTiming("e1", "edge", queue_ms=0.4, compute_ms=edge_ms, transfer_ms=2.0, batch_size=batch),
    )
    return TelemetryRecord(seq, 0, InferenceRecord(SHA, ms, Outcome.OK, path="partitioned", hops=hops))


def test_percentiles_are_over_ok_requests_on_the_plans_path_only() -> None:
    latencies = [float(i) for i in range(1, 101)]  # 1..100 ms
    records = [partitioned(i, ms) for i, ms in enumerate(latencies, 1)]
    records += [
        TelemetryRecord(200, 0, InferenceRecord(SHA, 999.0, Outcome.ERROR, "edge down", path="partitioned")),
        TelemetryRecord(201, 0, InferenceRecord(SHA, 500.0, Outcome.OK, path="local")),  # not the plan's path
        TelemetryRecord(202, 0, DeviceEvent("model_swapped", "v1")),
    ]
    x = summarize(device(), records, window=1000)
    assert x.requests == 102 and x.measured == 100
    assert dict(x.outcomes) == {"error": 1, "ok": 101}
    assert dict(x.paths) == {"local": 1, "partitioned": 101}
    assert x.p50_ms == pytest.approx(np.percentile(latencies, 50))
    # The deployment's percentile (p90 here), beside its prediction and SLO.
    assert x.at_percentile_ms == pytest.approx(np.percentile(latencies, 90))
    assert x.prediction_error == pytest.approx((x.at_percentile_ms - 8.0) / 8.0)
    assert x.meets_slo is False  # p90 ~ 90 ms against 10 ms


def test_hops_are_measured_per_position_beside_the_plans_prediction() -> None:
    records = [partitioned(i, 6.0, edge_ms=float(i), batch=i % 3 + 1) for i in range(1, 11)]
    x = summarize(device(), records, window=1000)
    assert x.meets_slo is True
    device_hop, edge_hop = x.hops
    assert (device_hop.tier, device_hop.device_id, device_hop.requests) == ("device", "p1", 10)
    assert device_hop.predicted_compute_ms == 1.0 and device_hop.predicted_transfer_ms == 0.0
    assert (edge_hop.tier, edge_hop.device_id) == ("edge", "e1")
    assert edge_hop.compute_ms_p50 == pytest.approx(5.5)
    assert edge_hop.compute_ms_p95 == pytest.approx(np.percentile(range(1, 11), 95))
    assert edge_hop.mean_batch_size == pytest.approx(np.mean([i % 3 + 1 for i in range(1, 11)]))
    assert (edge_hop.predicted_compute_ms, edge_hop.predicted_queue_ms, edge_hop.predicted_transfer_ms) == (
        2.0,
        0.5,
        3.0,
    )


def test_a_device_without_a_plan_or_requests_says_so() -> None:
    x = summarize(device(None), [], window=10)
    assert (x.requests, x.measured, x.prediction_error, x.meets_slo, x.hops) == (0, 0, None, None, ())
    local = [TelemetryRecord(i, 0, InferenceRecord(SHA, 2.0, Outcome.OK)) for i in range(1, 4)]
    x = summarize(device(None), local, window=10)
    assert x.measured == 3 and x.p95_ms == 2.0 and x.percentile == 0.0 and x.meets_slo is None


def test_latency_round_trips_and_bad_requests_name_the_field() -> None:
    x = summarize(device(), [partitioned(i, 5.0 + i) for i in range(1, 6)], window=50)
    assert serde.device_latency_from_pb(serde.device_latency_to_pb(x)) == x
    assert serde.get_device_latency_request_from_pb(serde.get_device_latency_request_to_pb("p1")) == (
        "p1",
        1000,
    )
    with pytest.raises(InvalidArgument, match="window"):
        serde.get_device_latency_request_from_pb(
            admin_pb.GetDeviceLatencyRequest(device_id="p1", window=MAX_LATENCY_WINDOW + 1)
        )
    with pytest.raises(InvalidArgument, match="device_id"):
        serde.get_device_latency_request_from_pb(admin_pb.GetDeviceLatencyRequest(device_id="Bad Id"))


def test_plan_predictions_and_objective_round_trip_and_are_checked() -> None:
    a = device().assignment
    assert a is not None
    assert serde.assignment_from_pb(serde.assignment_to_pb(a)) == a
    pb = serde.assignment_to_pb(a)
    pb.plan.percentile = 100.0
    with pytest.raises(InvalidArgument, match=r"assignment.plan.percentile"):
        serde.assignment_from_pb(pb)
    pb = serde.assignment_to_pb(a)
    pb.plan.segments[1].predicted_queue_ms = -1.0
    with pytest.raises(InvalidArgument, match=r"assignment.plan.segments\[1\].predicted_queue_ms"):
        serde.assignment_from_pb(pb)
