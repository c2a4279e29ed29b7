"""serde for partitioned serving: segment endpoints, served segments, RunSegment and hop timings
round-trip, and what a peer could get wrong is refused naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from common import serde
from common.errors import InvalidArgument
from common.limits import MAX_INFER_INPUT_BYTES, MAX_ROUTE_HOPS, MAX_SEGMENT_ENDPOINTS
from common.types import (
    Assignment,
    AssignmentPlan,
    DataType,
    HopTiming,
    InferResponse,
    PlannedSegment,
    RouteHop,
    RunSegmentRequest,
    RunSegmentResponse,
    SegmentEndpoint,
    ServedSegment,
    Tensor,
)
from protos.edgefleet.v1 import agent_pb2 as agent_pb

SHA_MODEL = "a1" * 32
SHA_OWN = "b2" * 32
SHA_EDGE = "c3" * 32
SHA_CLOUD = "d4" * 32
EDGE = SegmentEndpoint("edge-1", "127.0.0.1:7001", 2.0)
CLOUD = (SegmentEndpoint("gpu-1", "10.0.0.5:7002"), SegmentEndpoint("gpu-2", "[::1]:7003", 0.5))
X = Tensor("hidden", DataType.FLOAT32, (1, 4), bytes(16))


def _plan() -> AssignmentPlan:
    return AssignmentPlan(
        deployment="minilm",
        pattern="device+edge+cloud",
        segments=(
            PlannedSegment("device", 0, 3, "int8", "p1", SHA_OWN, 10),
            PlannedSegment("edge", 3, 5, "fp16", "edge-1", SHA_EDGE, 20, (EDGE,)),
            PlannedSegment("cloud", 5, 0, "fp32", "gpu-pool", SHA_CLOUD, 30, CLOUD),
        ),
        edge_pool="eu-edge",
        edge_node="edge-1",
        cloud_pool="gpu-pool",
        fallback_variant="int8",
    )


def _served() -> tuple[ServedSegment, ...]:
    return (
        ServedSegment(SHA_EDGE, 20, "minilm", 3, 5, "fp16", max_batch_size=8, max_queue_delay_ms=2.5),
        ServedSegment(SHA_CLOUD, 30, "minilm", 5, 0, "fp32"),
    )


def test_assignment_with_endpoints_and_served_segments_round_trips() -> None:
    a = Assignment(
        version=4,
        model_name="minilm",
        variant="int8",
        artifact_sha256=SHA_MODEL,
        artifact_size_bytes=9,
        plan=_plan(),
        serve=_served(),
    )
    back = serde.assignment_from_pb(serde.assignment_to_pb(a))
    assert back == a
    assert back.own_segment is not None and back.own_segment.artifact_sha256 == SHA_OWN
    # Its own segment and those it serves, each once.
    assert back.segment_artifacts() == ((SHA_OWN, 10), (SHA_EDGE, 20), (SHA_CLOUD, 30))


def test_a_serve_only_assignment_round_trips_without_a_model() -> None:
    # An edge node may only serve segments for others and run no model of its own.
    a = Assignment(version=2, serve=_served())
    assert serde.assignment_from_pb(serde.assignment_to_pb(a)) == a


def _request() -> RunSegmentRequest:
    return RunSegmentRequest(
        segment_sha256=SHA_EDGE,
        inputs=(X, Tensor("mask", DataType.INT64, (1, 4), bytes(32), encoding="zlib")),
        route=(RouteHop(SHA_CLOUD, CLOUD, "cloud"),),
        priority=3,
        origin_device="p1",
        request_id="req-7",
        output_names=("logits",),
        tier="edge",
    )


def test_run_segment_request_and_response_round_trip() -> None:
    r = _request()
    assert serde.run_segment_request_from_pb(serde.run_segment_request_to_pb(r)) == r
    resp = RunSegmentResponse(
        outputs=(X,),
        hops=(
            HopTiming("edge-1", "edge", queue_ms=1.5, compute_ms=3.0, transfer_ms=0.4, batch_size=4),
            HopTiming("gpu-2", "cloud", compute_ms=2.0),
        ),
    )
    assert serde.run_segment_response_from_pb(serde.run_segment_response_to_pb(resp)) == resp


@pytest.mark.parametrize(
    "resp",
    [
        RunSegmentResponse(outputs=(X,), hops=(HopTiming("edge-1", "edge", queue_ms=0.5, batch_size=32),)),
        RunSegmentResponse(outputs=(), hops=()),  # nothing to fill in: still a response, not "empty"
    ],
)
def test_a_stream_result_holds_the_response_it_was_made_from(resp: RunSegmentResponse) -> None:
    pb = serde.segment_result_to_pb(resp)
    assert pb.WhichOneof("result") == "response"
    assert serde.segment_result_from_pb(agent_pb.SegmentResult.FromString(pb.SerializeToString())) == resp


def test_infer_response_carries_the_path_and_every_hop() -> None:
    resp = InferResponse(
        outputs=(X,),
        model_sha256=SHA_MODEL,
        latency_ms=12.5,
        hops=(HopTiming("p1", "device", compute_ms=4.0), HopTiming("edge-1", "edge", compute_ms=3.0)),
        path="partitioned",
    )
    assert serde.infer_response_from_pb(serde.infer_response_to_pb(resp)) == resp
    degraded = InferResponse(
        outputs=(X,),
        model_sha256=SHA_MODEL,
        latency_ms=2.0,
        hops=(HopTiming("p1", "device", compute_ms=2.0),),
        path="fallback",
        fallback_reason="edge hop edge-1 (127.0.0.1:7001) is unreachable",
    )
    assert serde.infer_response_from_pb(serde.infer_response_to_pb(degraded)) == degraded
    local = InferResponse(outputs=(X,), model_sha256=SHA_MODEL, latency_ms=1.0)
    assert serde.infer_response_from_pb(serde.infer_response_to_pb(local)).path == "local"


def _bad_request(change: Callable[[agent_pb.RunSegmentRequest], Any]) -> agent_pb.RunSegmentRequest:
    pb = serde.run_segment_request_to_pb(_request())
    change(pb)
    return pb


def _too_many_hops(pb: agent_pb.RunSegmentRequest) -> None:
    for _ in range(MAX_ROUTE_HOPS):
        pb.route.append(pb.route[0])


def _too_big(pb: agent_pb.RunSegmentRequest) -> None:
    n = MAX_INFER_INPUT_BYTES // 4 + 1
    del pb.inputs[:]
    pb.inputs.append(serde.tensor_to_pb(Tensor("x", DataType.FLOAT32, (n,), bytes(4 * n))))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda pb: setattr(pb, "tier", "device"), "tier"),
        (lambda pb: setattr(pb, "segment_sha256", "nope"), "segment_sha256"),
        (lambda pb: setattr(pb.route[0], "tier", "device"), "route[0].tier"),
        (lambda pb: pb.route[0].ClearField("endpoints"), "route[0].endpoints"),
        (lambda pb: setattr(pb.route[0].endpoints[0], "address", "no-port"), "route[0].endpoints[0].address"),
        (lambda pb: setattr(pb.route[0].endpoints[1], "address", "h:70000"), "route[0].endpoints[1].address"),
        (lambda pb: setattr(pb.route[0].endpoints[0], "weight", 0.0), "route[0].endpoints[0].weight"),
        (
            lambda pb: setattr(pb.route[0].endpoints[0], "weight", float("nan")),
            "route[0].endpoints[0].weight",
        ),
        (lambda pb: setattr(pb.route[0], "segment_sha256", ""), "route[0].segment_sha256"),
        (lambda pb: pb.output_names.append(""), "output_names[1]"),
        (lambda pb: setattr(pb.inputs[1], "encoding", "lz4"), "tensor 'mask'"),
        (lambda pb: setattr(pb.inputs[0], "data", b"\0" * 3), "tensor 'hidden'"),
        (_too_many_hops, "route"),
        (_too_big, "inputs"),
    ],
)
def test_bad_run_segment_requests_are_refused_naming_the_field(
    change: Callable[[agent_pb.RunSegmentRequest], Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        serde.run_segment_request_from_pb(_bad_request(change))
    assert field in str(err.value)


def test_a_duplicate_tensor_is_reported_before_a_later_malformed_one() -> None:
    def duplicate_then_bad(pb: agent_pb.RunSegmentRequest) -> None:
        pb.inputs.append(pb.inputs[0])  # inputs[2] repeats 'hidden'
        pb.inputs.append(serde.tensor_to_pb(Tensor("late", DataType.FLOAT32, (1,), b"\0" * 3)))

    with pytest.raises(InvalidArgument, match=r"^inputs\[2\]: duplicate tensor name 'hidden'$"):
        serde.run_segment_request_from_pb(_bad_request(duplicate_then_bad))


def test_a_refused_value_too_long_to_be_valid_is_not_kept_in_the_check_cache() -> None:
    from common.serde import _validate

    huge = "a" * (1 << 20)  # a peer's megabyte: refused, and not held on to
    for check, cache in ((_validate._sha256, _validate._is_sha256), (_validate._name, _validate._is_name)):
        cache.cache_clear()
        with pytest.raises(InvalidArgument, match=r"^field: "):
            check("field", huge)
        assert cache.cache_info().currsize == 0
        check("field", "ab" * 32)  # a valid one is kept
        assert cache.cache_info().currsize == 1


def test_too_many_endpoints_are_refused() -> None:
    many = tuple(SegmentEndpoint(f"e-{i}", f"127.0.0.1:{1000 + i}") for i in range(MAX_SEGMENT_ENDPOINTS + 1))
    r = RunSegmentRequest(SHA_EDGE, (X,), route=(RouteHop(SHA_CLOUD, many, "cloud"),))
    with pytest.raises(InvalidArgument, match=r"route\[0\]\.endpoints"):
        serde.run_segment_request_from_pb(serde.run_segment_request_to_pb(r))


@pytest.mark.parametrize(
    ("served", "field"),
    [
        ((ServedSegment(SHA_EDGE, 20, "minilm", 3, 5, "fp16", max_batch_size=0),), "serve[0].max_batch_size"),
        (
            (ServedSegment(SHA_EDGE, 20, "minilm", 3, 5, "fp16", max_queue_delay_ms=-1.0),),
            "serve[0].max_queue_delay_ms",
        ),
        ((ServedSegment("zz", 20, "minilm", 3, 5, "fp16"),), "serve[0].artifact_sha256"),
        ((ServedSegment(SHA_EDGE, 20, "minilm", 3, 5, "fp16"),) * 2, "listed twice"),
    ],
)
def test_bad_served_segments_are_refused_naming_the_field(
    served: tuple[ServedSegment, ...], field: str
) -> None:
    pb = serde.assignment_to_pb(Assignment(version=2, serve=served))
    with pytest.raises(InvalidArgument) as err:
        serde.assignment_from_pb(pb)
    assert field in str(err.value)


def test_hops_with_an_unknown_tier_or_negative_times_are_refused() -> None:
    for hop, field in (
        (HopTiming("edge-1", "moon"), "hops[0].tier"),
        (HopTiming("edge-1", "edge", compute_ms=-1.0), "hops[0].compute_ms"),
    ):
        pb = serde.run_segment_response_to_pb(RunSegmentResponse(outputs=(X,), hops=(hop,)))
        with pytest.raises(InvalidArgument) as err:
            serde.run_segment_response_from_pb(pb)
        assert field in str(err.value)
