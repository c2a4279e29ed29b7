"""How an agent routes its own requests by its plan (agent.partition): hops, priority, link, refusals."""

from __future__ import annotations

import pytest

from agent.partition import _route
from common.errors import InvalidArgument
from common.types import Assignment, AssignmentPlan, PlannedSegment, SegmentEndpoint

SHA_EDGE = "e" * 64
SHA_CLOUD = "c" * 64
EDGE = (SegmentEndpoint("edge-1", "127.0.0.1:7001"),)
CLOUD = (SegmentEndpoint("gpu-1", "127.0.0.1:7002", 2.0), SegmentEndpoint("gpu-2", "127.0.0.1:7003"))


def offload(*, priority: int = 0, cloud: tuple[SegmentEndpoint, ...] = CLOUD) -> Assignment:
    # Full offload: the device runs no segment itself (its part is empty), edge then cloud.
    plan = AssignmentPlan(
        deployment="d",
        pattern="device+edge+cloud",
        segments=(
            PlannedSegment("edge", 0, 3, "int8", "edge-1", SHA_EDGE, 10, EDGE),
            PlannedSegment("cloud", 3, 0, "fp32", "gpu", SHA_CLOUD, 20, cloud),
        ),
        edge_pool="eu-edge",
        cloud_pool="gpu",
        priority=priority,
    )
    return Assignment(
        version=7, model_name="m", variant="fp32", artifact_sha256="a" * 64, artifact_size_bytes=1, plan=plan
    )


def test_route_follows_the_plan_with_its_priority_and_the_first_hops_link() -> None:
    route = _route(offload(priority=5), {}, {"eu-edge": 20.0, "gpu": 1000.0})
    assert route is not None
    assert route.version == 7 and route.own is None
    assert [(h.tier, h.segment_sha256, h.endpoints) for h in route.hops] == [
        ("edge", SHA_EDGE, EDGE),
        ("cloud", SHA_CLOUD, CLOUD),
    ]
    assert route.priority == 5
    assert route.bandwidth_mbps == 20.0  # compression decides by the link to the first hop


def test_local_plans_have_no_route_and_a_hop_without_workers_is_refused() -> None:
    assert (
        _route(Assignment(version=1, model_name="m", variant="fp32", artifact_sha256="a" * 64), {}, {})
        is None
    )
    with pytest.raises(InvalidArgument, match="v7: a partitioned plan without a worker"):
        _route(offload(cloud=()), {}, {})
