"""serde for plans, links and the policy RPCs: round trips, and refusals that name the field."""

from __future__ import annotations

import re

import pytest

from common import serde
from common.errors import InvalidArgument
from common.limits import MAX_LINKS, MAX_POLICY_BYTES, MAX_POLICY_FILES
from common.types import (
    Assignment,
    AssignmentChange,
    AssignmentPlan,
    Heartbeat,
    LinkMeasurement,
    PlannedSegment,
    PolicyApply,
    PolicyFile,
)

PLAN = AssignmentPlan(
    deployment="minilm-eu",
    pattern="device+edge+cloud",
    segments=(
        PlannedSegment("device", 0, 130, "int8", "p1", predicted_compute_ms=3.3, profiled_compute_ms=3.0),
        PlannedSegment("edge", 130, 230, "fp16", "edge-1"),
        PlannedSegment("cloud", 230, 0, "fp32", "gpu-central"),
    ),
    edge_pool="eu-edge",
    edge_node="edge-1",
    cloud_pool="gpu-central",
    fallback_variant="int8",
    predicted_latency_ms=41.5,
    predicted_accuracy=0.995,
)
SHA = "ab" * 32


def test_assignment_with_plan_round_trips() -> None:
    a = Assignment(
        version=3, model_name="minilm", variant="int8", artifact_sha256=SHA, artifact_size_bytes=9, plan=PLAN
    )
    assert serde.assignment_from_pb(serde.assignment_to_pb(a)) == a
    plain = Assignment(
        version=1, model_name="minilm", variant="fp32", artifact_sha256=SHA, artifact_size_bytes=9
    )
    assert serde.assignment_from_pb(serde.assignment_to_pb(plain)).plan is None


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda pb: setattr(pb.plan, "pattern", "sideways"), "assignment.plan.pattern"),
        (lambda pb: pb.plan.ClearField("segments"), "assignment.plan.segments"),
        (
            lambda pb: pb.plan.segments.add(tier="edge", precision="fp16", where="e"),
            "assignment.plan.segments",
        ),
        (lambda pb: setattr(pb.plan.segments[1], "tier", "moon"), "assignment.plan.segments[1].tier"),
        (lambda pb: setattr(pb.plan.segments[0], "where", "Not A Name"), "assignment.plan.segments[0].where"),
        (
            lambda pb: setattr(pb.plan, "predicted_latency_ms", float("nan")),
            "assignment.plan.predicted_latency_ms",
        ),
        (lambda pb: setattr(pb.plan, "deployment", ""), "assignment.plan.deployment"),
        (
            lambda pb: setattr(pb.plan.segments[0], "profiled_compute_ms", -1.0),
            "assignment.plan.segments[0].profiled_compute_ms",
        ),
    ],
)
def test_bad_plans_are_refused_by_field(change: object, path: str) -> None:
    pb = serde.assignment_to_pb(
        Assignment(
            version=3,
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=9,
            plan=PLAN,
        )
    )
    change(pb)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match="^" + re.escape(path)):
        serde.assignment_from_pb(pb)


def test_links_round_trip_and_bad_ones_are_refused() -> None:
    hb = Heartbeat(
        sent_at_ms=5, links=(LinkMeasurement("eu-edge", 50.0, 8.0, 12.0), LinkMeasurement("gpu", 20.0, 60.0))
    )
    assert serde.heartbeat_from_pb(serde.heartbeat_to_pb(hb)) == hb
    bad = serde.heartbeat_to_pb(Heartbeat(sent_at_ms=5, links=(LinkMeasurement("eu-edge", 0.0, 8.0),)))
    with pytest.raises(InvalidArgument, match=r"^heartbeat\.links\[0\]\.bandwidth_mbps"):
        serde.heartbeat_from_pb(bad)
    twice = serde.heartbeat_to_pb(
        Heartbeat(sent_at_ms=5, links=(LinkMeasurement("a", 1, 1), LinkMeasurement("a", 2, 2)))
    )
    with pytest.raises(InvalidArgument, match="listed twice"):
        serde.heartbeat_from_pb(twice)
    many = tuple(LinkMeasurement(f"p{i}", 1.0, 1.0) for i in range(MAX_LINKS + 1))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_LINKS}"):
        serde.heartbeat_from_pb(serde.heartbeat_to_pb(Heartbeat(sent_at_ms=5, links=many)))
    negative = serde.heartbeat_to_pb(Heartbeat(sent_at_ms=5, links=(LinkMeasurement("a", 1.0, -1.0),)))
    with pytest.raises(InvalidArgument, match=r"^heartbeat\.links\[0\]\.rtt_ms"):
        serde.heartbeat_from_pb(negative)


def test_policy_requests_round_trip() -> None:
    files = (PolicyFile("policies/a.yaml", "kind: X\n"), PolicyFile("policies/b.yaml", ""))
    pb = serde.plan_policies_request_to_pb(files, explain=["p1"], devices=True)
    assert serde.plan_policies_request_from_pb(pb) == (files, ("p1",), True)
    req = serde.apply_policies_request_from_pb(
        serde.apply_policies_request_to_pb(
            files, applied_by="ops@h", git_commit="0123abcd", git_dirty=True, source="policies/", message="m"
        )
    )
    assert (req.files, req.applied_by, req.git_commit, req.git_dirty, req.source, req.message) == (
        files,
        "ops@h",
        "0123abcd",
        True,
        "policies/",
        "m",
    )
    record = PolicyApply(
        3, 10, "ops@h", "0123abcd", True, "policies/", "cd" * 32, 4, 2, '{"devices": 2}', "m"
    )
    changes = (AssignmentChange("p1", "(nothing)", "digits/int8 local"),)
    got = serde.apply_policies_response_from_pb(
        serde.apply_policies_response_to_pb(record, changed=True, changes=changes)
    )
    assert got == (record, True, changes)
    assert serde.list_policy_applies_response_from_pb(serde.list_policy_applies_response_to_pb([record])) == (
        record,
    )


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ([], "no policy files"),
        ([PolicyFile(f"f{i}.yaml", "") for i in range(MAX_POLICY_FILES + 1)], f"at most {MAX_POLICY_FILES}"),
        ([PolicyFile("big.yaml", "x" * (MAX_POLICY_BYTES + 1))], f"at most {MAX_POLICY_BYTES}"),
        ([PolicyFile("a.yaml", ""), PolicyFile("a.yaml", "")], "listed twice"),
        ([PolicyFile("", "kind: X")], r"files\[0\]\.path: empty"),
    ],
)
def test_bad_policy_file_lists_are_refused(files: list[PolicyFile], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        serde.plan_policies_request_from_pb(serde.plan_policies_request_to_pb(files))


def test_a_commit_that_is_not_hex_is_refused() -> None:
    pb = serde.apply_policies_request_to_pb(
        [PolicyFile("a.yaml", "")],
        applied_by="x",
        git_commit="main; rm -rf /",
        git_dirty=False,
        source="",
        message="",
    )
    with pytest.raises(InvalidArgument, match=r"^git_commit"):
        serde.apply_policies_request_from_pb(pb)
