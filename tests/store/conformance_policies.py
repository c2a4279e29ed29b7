"""Conformance rules for planned assignments, device links and policy applies (mixed into
``StoreConformance``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.errors import NotFound
from common.types import (
    AssignmentAck,
    AssignmentFailure,
    AssignmentPlan,
    LinkMeasurement,
    PlannedSegment,
    PolicyApply,
    ReportedState,
)
from controller.store.base import PlannedAssignment, Store
from tests.store.helpers import HW, T0, enrolled

PLAN = AssignmentPlan(
    deployment="minilm-eu",
    pattern="device+edge",
    segments=(
        PlannedSegment("device", 0, 130, "int8", "p1", predicted_compute_ms=3.3, profiled_compute_ms=3.0),
        PlannedSegment("edge", 130, 0, "fp16", "edge-1"),
    ),
    edge_pool="eu-edge",
    edge_node="edge-1",
    fallback_variant="int8",
    predicted_latency_ms=23.5,
    predicted_accuracy=0.996,
)
SHA = "ab" * 32


def planned(
    device_id: str, plan: AssignmentPlan | None = PLAN, *, variant: str = "int8"
) -> PlannedAssignment:
    return PlannedAssignment(device_id, "minilm", variant, SHA, 1000, plan)


def record(digest: str = "d1" * 32, **changes: object) -> PolicyApply:
    base = PolicyApply(
        id=0,
        applied_at_ms=T0,
        applied_by="ops@laptop",
        git_commit="abc123",
        git_dirty=False,
        source="policies/",
        digest=digest,
        documents=3,
        devices_changed=0,
        summary_json='{"devices": 2}',
        message="first",
        policies_json='{"kinds": {}}',
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class PolicyRules:
    # --- planned assignments ---------------------------------------------------------------------

    def test_plan_is_stored_with_the_assignment(self, store: Store) -> None:
        enrolled(store, "p1")
        device, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=PLAN,
        )
        assert changed and device.assignment is not None and device.assignment.plan == PLAN
        assert store.get_device("p1").assignment == device.assignment

    def test_new_placement_is_a_new_version_new_predictions_are_not(self, store: Store) -> None:
        enrolled(store, "p1")
        first, _ = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=PLAN,
        )
        repredicted = replace(
            PLAN,
            predicted_latency_ms=25.0,
            predicted_accuracy=0.995,
            segments=tuple(
                replace(
                    s,
                    predicted_compute_ms=4.0,
                    predicted_queue_ms=1.0,
                    predicted_transfer_ms=2.0,
                    profiled_compute_ms=3.5,
                )
                for s in PLAN.segments
            ),
        )
        same, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=repredicted,
        )
        assert not changed and same.desired_version == first.desired_version
        moved = replace(PLAN, edge_node="edge-2")
        again, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=moved,
        )
        assert changed and again.desired_version == first.desired_version + 1
        assert again.assignment is not None and again.assignment.plan == moved
        # Dropping the plan (assigned by hand now) is a change too.
        hand, changed = store.set_assignment(
            "p1", model_name="minilm", variant="int8", artifact_sha256=SHA, artifact_size_bytes=1000
        )
        assert changed and hand.assignment is not None and hand.assignment.plan is None
        # A new objective is a change: the device's record of what it must meet follows the policy.
        _, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=PLAN,
        )
        assert changed
        _, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=replace(PLAN, slo_ms=40.0, percentile=99.0),
        )
        assert changed
        stored = store.get_device("p1").assignment
        assert (
            stored is not None
            and stored.plan is not None
            and (stored.plan.slo_ms, stored.plan.percentile) == (40.0, 99.0)
        )

    # --- links -----------------------------------------------------------------------------------

    def test_links_from_hello_and_heartbeat(self, store: Store) -> None:
        enrolled(store, "p1")
        links = (LinkMeasurement("us-edge", 40.0, 9.0, 15.0), LinkMeasurement("eu-edge", 50.0, 8.0))
        device = store.device_connected(
            "p1", hardware=HW, reported=ReportedState(), records_dropped=0, now_ms=T0, links=links
        )
        assert [m.pool for m in device.links] == ["eu-edge", "us-edge"]  # ordered by pool
        # A hello without links (None) keeps them.
        kept = store.device_connected(
            "p1", hardware=HW, reported=ReportedState(), records_dropped=0, now_ms=T0
        )
        assert kept.links == device.links
        assert not store.set_links("p1", tuple(reversed(links)), now_ms=T0 + 1)  # the same, in another order
        assert store.set_links("p1", (LinkMeasurement("eu-edge", 5.0, 80.0),), now_ms=T0 + 2)
        assert store.get_device("p1").links == (LinkMeasurement("eu-edge", 5.0, 80.0),)
        with pytest.raises(NotFound):
            store.set_links("ghost", links, now_ms=T0)

    # --- policy applies --------------------------------------------------------------------------

    def test_apply_sets_assignments_and_records_once(self, store: Store) -> None:
        enrolled(store, "p1", "p2")
        outcome = store.apply_policies(record(), [planned("p1"), planned("p2", None, variant="fp32")])
        assert outcome.recorded and outcome.record.id > 0
        assert outcome.record.devices_changed == 2
        assert {d.id for d in outcome.changed} == {"p1", "p2"}
        p1 = store.get_device("p1")
        assert p1.assignment is not None and p1.assignment.plan == PLAN
        assert store.latest_policy_apply() == outcome.record
        # The same policies and plan again: nothing written, the latest apply returned.
        again = store.apply_policies(
            record(message="again"), [planned("p1"), planned("p2", None, variant="fp32")]
        )
        assert not again.recorded and again.changed == () and again.record == outcome.record
        assert store.get_device("p1").desired_version == p1.desired_version
        assert len(store.list_policy_applies()) == 1

    def test_new_digest_is_recorded_even_without_assignment_changes(self, store: Store) -> None:
        enrolled(store, "p1")
        store.apply_policies(record(), [planned("p1")])
        second = store.apply_policies(record("d2" * 32), [planned("p1")])
        assert second.recorded and second.changed == () and second.record.devices_changed == 0
        history = store.list_policy_applies()
        assert [a.digest for a in history] == ["d2" * 32, "d1" * 32]  # newest first
        assert all(a.policies_json == "" for a in history)  # listings leave the policies out
        latest = store.latest_policy_apply()
        assert latest is not None and latest.policies_json == '{"kinds": {}}'
        assert store.list_policy_applies(limit=1) == history[:1]

    def test_apply_is_all_or_nothing(self, store: Store) -> None:
        enrolled(store, "p1")
        with pytest.raises(NotFound):
            store.apply_policies(record(), [planned("p1"), planned("ghost")])
        assert store.get_device("p1").assignment is None
        assert store.latest_policy_apply() is None
        assert store.list_policy_applies() == []

    def test_policies_never_resend_a_failed_version_but_an_operator_can(self, store: Store) -> None:
        enrolled(store, "p1")
        store.apply_policies(record(), [planned("p1")])
        v = store.get_device("p1").desired_version
        failed = AssignmentAck(
            version=v, reported=ReportedState(), failure=AssignmentFailure.LOAD_FAILED, message="boom"
        )
        store.record_ack("p1", failed, now_ms=T0 + 1)
        # The same files again, or a re-plan setting the same target: the failed version stays.
        again = store.apply_policies(record(message="again"), [planned("p1")])
        assert not again.recorded and again.changed == ()
        _, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=PLAN,
            retry_failed=False,
        )
        assert not changed
        assert store.get_device("p1").desired_version == v
        # Assigning it by hand is the operator's retry: a new version.
        device, changed = store.set_assignment(
            "p1",
            model_name="minilm",
            variant="int8",
            artifact_sha256=SHA,
            artifact_size_bytes=1000,
            plan=PLAN,
        )
        assert changed and device.desired_version == v + 1
