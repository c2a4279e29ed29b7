"""Policies in force, and what they make every device run: plan, diff and apply.

Like kopf's processing, each operation is a pure *detect* step — policies and a snapshot of the
fleet (``read``, one store call), through the pure planner, to the assignments they call for — then
at most one *apply* step, a single store transaction (``Store.apply_policies``): every planned
device's desired assignment and the apply record, all or nothing. The reconcile loop then delivers
the new versions. Safe to repeat: the same files against the same fleet change nothing and record
nothing. The detect step is CPU work (about a second for 10,000 devices), so callers run it off the
store thread, between the read and the write.

Until partitioned inference lands (issue 5), a device whose plan cuts the model serves its planned
fallback variant on its own; the plan (segments, pools, node) travels with the assignment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.types import (
    KNOWN_HARDWARE_CLASSES,
    AssignmentChange,
    AssignmentPlan,
    Device,
    LinkMeasurement,
    Model,
    PlannedSegment,
    PolicyApply,
    PolicyFile,
    SegmentEndpoint,
    ServedSegment,
    TelemetryRecord,
)
from controller.planner import catalog, plan, report
from controller.planner.inputs import plan_input
from controller.planner.types import (
    Binding,
    ConfigKey,
    DeploymentInput,
    DevicePlan,
    Link,
    Pattern,
    Plan,
    PlanInput,
    PlannerModel,
    Tier,
    Weights,
)
from controller.policy import PolicyErrors, PolicySet, check_references, diff_policy_sets, load_policy_texts
from controller.service import calibration
from controller.service.segments import SegmentKey
from controller.store.base import ApplyOutcome, PlannedAssignment, Store

log = logging.getLogger(__name__)

_PATTERNS = {p.label: p for p in Pattern}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What planning reads from the store."""

    devices: tuple[Device, ...]
    models: Mapping[str, Model]
    latest: PolicyApply | None
    #: Recent telemetry of the devices calibration reads (``calibration.wanted``), by device id.
    telemetry: Mapping[str, tuple[TelemetryRecord, ...]] = dataclasses.field(default_factory=dict)


def read(store: Store) -> Snapshot:
    devices = tuple(store.list_devices())
    telemetry = {
        device_id: tuple(store.latest_telemetry(device_id, limit=calibration.WINDOW))
        for device_id in calibration.wanted(devices)
    }
    return Snapshot(devices, {m.name: m for m in store.list_models()}, store.latest_policy_apply(), telemetry)


def planning_input(
    snapshot: Snapshot, policies: PolicySet, *, weights: Weights | None = None, **kwargs: Any
) -> tuple[PlanInput, calibration.Calibration]:
    """``plan_input`` for ``snapshot``'s fleet, calibrated from the devices' recent requests
    (``calibration``: what a partitioned request costs a device around its segment, and how its
    class's segments ran against their profiles), and the calibration applied. Pure."""
    data = plan_input(
        policies, snapshot.devices, snapshot.models, links=_links(snapshot.devices), weights=weights, **kwargs
    )
    data, found = calibration.calibrate(data, snapshot.devices, snapshot.telemetry)
    for c in found.compute:
        log.debug(
            "calibration: %s segments on %s devices ran x%.2f their profiled compute (median of %d hops "
            "on %d devices)",
            c.model,
            c.hardware_class,
            c.scale,
            c.hops,
            c.devices,
        )
    for o in found.overheads:
        log.debug(
            "calibration: a partitioned %s request costs a %s device %.2f ms beyond its segment and hops "
            "(median of %d requests from %d devices)",
            o.model,
            o.hardware_class,
            o.ms,
            o.requests,
            o.devices,
        )
    return data, found


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan, with what it was made from and the assignments it calls for."""

    policies: PolicySet
    plan: Plan
    assignments: tuple[PlannedAssignment, ...]  # the planned devices', before segments are built
    skipped: tuple[tuple[str, str], ...]  # (device id, why its plan cannot be applied)
    devices: Mapping[str, Device]
    data: PlanInput


def load(files: Sequence[PolicyFile]) -> PolicySet:
    """The policy set in ``files``; PolicyErrors listing every problem (file, line, field path)."""
    return load_policy_texts({f.path: f.content for f in files})


def files_json(files: Sequence[PolicyFile]) -> str:
    return json.dumps({"files": [{"path": f.path, "content": f.content} for f in files]}, sort_keys=True)


def files_from_json(text: str) -> tuple[PolicyFile, ...]:
    return tuple(PolicyFile(f["path"], f["content"]) for f in json.loads(text)["files"])


def check(policies: PolicySet, devices: Iterable[Device], models: Iterable[Model]) -> None:
    """Refuse policies naming models the controller lacks or hardware classes nobody knows."""
    classes = (
        set(KNOWN_HARDWARE_CLASSES) | set(catalog.CATALOG) | {d.hardware.hardware_class for d in devices}
    )
    errors = check_references(policies, known_models={m.name for m in models}, known_classes=classes)
    if errors:
        raise PolicyErrors(errors)


def make_plan(
    snapshot: Snapshot,
    policies: PolicySet,
    *,
    explain: Collection[str] = (),
    hysteresis: bool = True,
    weights: Weights | None = None,
) -> Planned:
    """Detect: the plan ``policies`` give for the fleet in ``snapshot``. With ``hysteresis``, devices
    keep their current placement unless another is clearly better. Pure."""
    devices, models = snapshot.devices, snapshot.models
    check(policies, devices, models.values())
    data, _ = planning_input(snapshot, policies, weights=weights)
    if hysteresis:
        current = {
            d.id: key
            for d in devices
            if d.assignment is not None
            and d.assignment.plan is not None
            and (pm := data.models.get(d.assignment.model_name)) is not None
            and (key := current_key(d.assignment.plan, pm)) is not None
        }
        current_edge_node = {
            d.id: d.assignment.plan.edge_node
            for d in devices
            if d.id in current and d.assignment is not None and d.assignment.plan is not None
            if d.assignment.plan.edge_node
        }
        data = dataclasses.replace(data, current=current, current_edge_node=current_edge_node)
    result = plan(data, explain_devices=explain)
    deployments = {dep.name: dep for dep in data.deployments}
    assignments, skipped = _assignments(result, models, deployments)
    by_id = {d.id: d for d in devices}
    released, kept = _released(result, by_id)
    return Planned(policies, result, assignments + released, skipped + kept, by_id, data)


def _released(
    result: Plan, devices: Mapping[str, Device]
) -> tuple[tuple[PlannedAssignment, ...], tuple[tuple[str, str], ...]]:
    """What the policies now give devices they no longer plan — none selects them any more, or nothing
    fits them: a device the policies placed (its assignment has a plan) runs nothing; a by-hand
    assignment is kept, without segments served for a pool it has left. A device the planner could
    not plan for want of a model profile keeps what it runs (a model imported again without eval
    data must not empty the fleet); it is listed as skipped."""
    dropped = [(d, why) for d, why in result.unplanned] + [(x.device_id, x.reason) for x in result.infeasible]
    released: list[PlannedAssignment] = []
    kept: list[tuple[str, str]] = []
    no_profile = {x.device_id for x in result.infeasible if x.binding is Binding.NO_PROFILE}
    for device_id, why in sorted(dropped):
        d = devices.get(device_id)
        cur = d.assignment if d is not None else None
        if cur is None or (cur.plan is None and not cur.serve):
            continue
        if device_id in no_profile:
            kept.append((device_id, f"{why}; its assignment is left as it is"))
        elif cur.plan is not None:
            released.append(PlannedAssignment(device_id, "", "", "", 0, None))
        else:
            released.append(
                PlannedAssignment(
                    device_id, cur.model_name, cur.variant, cur.artifact_sha256, cur.artifact_size_bytes, None
                )
            )
    return tuple(released), tuple(kept)


# --- segments: what the plan's devices must hold, and who serves what --------------------------


def segment_keys(planned: Planned) -> set[SegmentKey]:
    """Every segment a partitioned plan needs an artifact for."""
    keys: set[SegmentKey] = set()
    for a in planned.assignments:
        if a.plan is None or a.plan.pattern == "local":
            continue
        for seg in a.plan.segments:
            keys.add(SegmentKey(a.model_name, seg.start_cut, seg.end_cut, seg.precision))
    return keys


def materialize(
    planned: Planned, built: Mapping[SegmentKey, tuple[str, int]]
) -> tuple[PlannedAssignment, ...]:
    """The assignments to write: the planned devices' with their segments' artifacts and the
    endpoints that serve them, plus every pool node's, with the segments it must keep loaded (a node
    keeps its own model as assigned; only what it serves changes). Pure."""
    pools = {p.name: p for p in planned.data.pools}
    batching = {d.name: d.batching for d in planned.data.deployments}
    devices = planned.devices
    serve: dict[str, dict[str, ServedSegment]] = {n: {} for p in planned.data.pools for n in p.nodes}

    def endpoint(node: str, weight: float) -> SegmentEndpoint | None:
        address = devices[node].endpoint if node in devices else ""
        return SegmentEndpoint(node, address, weight) if address else None

    out: list[PlannedAssignment] = []
    for a in planned.assignments:
        if a.plan is None or a.plan.pattern == "local":
            out.append(a)
            continue
        b = batching.get(a.plan.deployment)
        segments: list[PlannedSegment] = []
        for seg in a.plan.segments:
            sha, size = built[SegmentKey(a.model_name, seg.start_cut, seg.end_cut, seg.precision)]
            nodes: tuple[str, ...] = ()
            weight = 1.0
            if seg.tier == Tier.EDGE.value:
                nodes, weight = (seg.where,), float(pools[a.plan.edge_pool].slots_per_node)
            elif seg.tier == Tier.CLOUD.value:
                pool = pools[a.plan.cloud_pool]
                nodes, weight = pool.nodes, float(pool.slots_per_node)
            endpoints = tuple(
                e for n in route_nodes(a.device_id, nodes) if (e := endpoint(n, weight)) is not None
            )
            for n in nodes:
                serve[n].setdefault(
                    sha,
                    ServedSegment(
                        sha,
                        size,
                        a.model_name,
                        seg.start_cut,
                        seg.end_cut,
                        seg.precision,
                        max_batch_size=b.max_batch_size if b else 1,
                        max_queue_delay_ms=b.max_queue_delay_ms if b else 0.0,
                    ),
                )
            segments.append(
                dataclasses.replace(seg, artifact_sha256=sha, artifact_size_bytes=size, endpoints=endpoints)
            )
        out.append(dataclasses.replace(a, plan=dataclasses.replace(a.plan, segments=tuple(segments))))
    for node in sorted(serve):
        d = devices.get(node)
        if d is None:
            continue
        cur = d.assignment
        served = tuple(sorted(serve[node].values(), key=lambda x: x.artifact_sha256))
        if cur is None and not served:
            continue
        out.append(
            PlannedAssignment(
                device_id=node,
                model_name=cur.model_name if cur else "",
                variant=cur.variant if cur else "",
                artifact_sha256=cur.artifact_sha256 if cur else "",
                artifact_size_bytes=cur.artifact_size_bytes if cur else 0,
                # A node is not planned as a client: a plan from before it joined the pool is dropped
                # (it would claim capacity the planner no longer counts).
                plan=None,
                serve=served,
            )
        )
    return tuple(out)


#: Cloud workers a device is told of for one hop: a pool of 500 would not fit in a route (at most
#: ``MAX_SEGMENT_ENDPOINTS``), and a handful is enough to spread load and ride out a worker's loss.
ENDPOINTS_PER_HOP = 16


def route_nodes(device_id: str, nodes: Sequence[str]) -> tuple[str, ...]:
    """The pool nodes one device routes a hop to: all of a small pool; of a large one the
    ``ENDPOINTS_PER_HOP`` with the highest rendezvous hash of (device, node), so every node gets an
    even share of the devices, and a node joining or leaving moves only the devices that ranked it."""
    if len(nodes) <= ENDPOINTS_PER_HOP:
        return tuple(nodes)

    def rank(node: str) -> bytes:
        return hashlib.blake2b(f"{device_id}\0{node}".encode(), digest_size=8).digest()

    return tuple(sorted(heapq.nlargest(ENDPOINTS_PER_HOP, nodes, key=rank)))


def _links(devices: Iterable[Device]) -> dict[str, dict[str, Link]]:
    return {d.id: {m.pool: _link(m) for m in d.links} for d in devices if d.links}


def _link(m: LinkMeasurement) -> Link:
    return Link(bandwidth_mbps=m.bandwidth_mbps, rtt_ms=m.rtt_ms, rtt_p95_ms=m.rtt_p95_ms or None)


def _assignments(
    result: Plan, models: Mapping[str, Model], deployments: Mapping[str, DeploymentInput]
) -> tuple[tuple[PlannedAssignment, ...], tuple[tuple[str, str], ...]]:
    out: list[PlannedAssignment] = []
    skipped: list[tuple[str, str]] = []
    for p in result.devices:
        runs = p.key.precisions[0] if p.key.pattern is Pattern.LOCAL else p.fallback
        if not runs:
            skipped.append(
                (
                    p.device_id,
                    "no whole-model variant fits its memory, so it would have nothing to answer with on its "
                    "own when a hop is down; its assignment is left as it is",
                )
            )
            continue
        variant = models[p.model].variant(runs)
        if variant is None:
            skipped.append((p.device_id, f"model {p.model} has no variant {runs!r}"))
            continue
        out.append(
            PlannedAssignment(
                device_id=p.device_id,
                model_name=p.model,
                variant=variant.variant,
                artifact_sha256=variant.sha256,
                artifact_size_bytes=variant.size_bytes,
                plan=_plan_of(p, deployments.get(p.deployment)),
            )
        )
    return tuple(out), tuple(skipped)


def _plan_of(p: DevicePlan, deployment: DeploymentInput | None) -> AssignmentPlan:
    if deployment is None:
        return assignment_plan(p)
    return assignment_plan(p, percentile=deployment.percentile, priority=deployment.priority)


def assignment_plan(p: DevicePlan, *, percentile: float = 0.0, priority: int = 0) -> AssignmentPlan:
    transfer = {h.target: h.transfer_ms for h in p.hops}
    return AssignmentPlan(
        deployment=p.deployment,
        pattern=p.key.pattern.label,
        segments=tuple(
            PlannedSegment(
                s.tier.value,
                s.start_cut,
                s.end_cut,
                s.precision,
                s.where,
                predicted_compute_ms=round(s.compute_ms, 4),
                predicted_queue_ms=round(s.queue_ms, 4),
                predicted_transfer_ms=round(transfer.get(s.tier, 0.0), 4),
                profiled_compute_ms=round(s.profiled_ms, 4),
            )
            for s in p.segments
        ),
        edge_pool=p.edge_pool,
        edge_node=p.edge_node,
        cloud_pool=p.cloud_pool,
        fallback_variant=p.fallback,
        predicted_latency_ms=round(p.latency_ms, 4),
        predicted_accuracy=round(p.quality, 6),
        slo_ms=p.slo_ms if math.isfinite(p.slo_ms) else 0.0,
        percentile=percentile,
        priority=priority,
    )


def current_key(plan_: AssignmentPlan, model: PlannerModel) -> ConfigKey | None:
    """The planner's key for a stored plan (for hysteresis), or None when it no longer maps onto the
    model's profiled cut points (e.g. the model was imported again)."""
    pattern = _PATTERNS.get(plan_.pattern)
    if pattern is None:
        return None
    boundary = {c: i + 1 for i, c in enumerate(model.cut_indices)}
    served = [s for s in plan_.segments if s.tier != Tier.DEVICE.value]
    try:
        cuts = tuple(0 if s.start_cut == 0 else boundary[s.start_cut] for s in served)
    except KeyError:
        return None
    return ConfigKey(
        pattern,
        cuts,
        tuple(s.precision for s in plan_.segments),
        plan_.edge_pool if pattern in (Pattern.DEVICE_EDGE, Pattern.DEVICE_EDGE_CLOUD) else "",
        plan_.cloud_pool if pattern in (Pattern.DEVICE_CLOUD, Pattern.DEVICE_EDGE_CLOUD) else "",
    )


# --- diff -------------------------------------------------------------------------------------------


def describe(model: str, variant: str, plan_: AssignmentPlan | None) -> str:
    """One line for an assignment, as diffs and history show it."""
    if not model:
        return "(nothing)"
    if plan_ is None:
        return f"{model}/{variant} (by hand)"
    if plan_.pattern == "local":
        return f"{model}/{variant} local"
    parts = []
    for s in plan_.segments:
        where = "device" if s.tier == "device" else s.where
        parts.append(f"{s.precision}@{where}")
    return f"{model} {plan_.pattern} [{' > '.join(parts)}], fallback {plan_.fallback_variant}"


def changes(planned: Planned) -> list[AssignmentChange]:
    """What applying would change, device by device (same rules as the store: placement, not
    predictions)."""
    from controller.store._rules import placement

    def shape(p: AssignmentPlan | None) -> tuple[object, ...]:
        """The placement without what only building makes (artifacts, endpoints): a dry run builds nothing."""
        if p is None:
            return placement(None)
        bare = tuple(
            dataclasses.replace(x, artifact_sha256="", artifact_size_bytes=0, endpoints=())
            for x in p.segments
        )
        return placement(dataclasses.replace(p, segments=bare))

    out: list[AssignmentChange] = []
    for a in planned.assignments:
        d = planned.devices[a.device_id]
        cur = d.assignment
        before = (cur.model_name, cur.variant, cur.artifact_sha256, shape(cur.plan)) if cur else None
        after = (a.model_name, a.variant, a.artifact_sha256, shape(a.plan))
        if before == after:
            continue
        out.append(
            AssignmentChange(
                a.device_id,
                describe(cur.model_name, cur.variant, cur.plan) if cur else "(nothing)",
                describe(a.model_name, a.variant, a.plan),
            )
        )
    return out


def diff(
    snapshot: Snapshot, policies: PolicySet
) -> tuple[dict[str, Any], list[AssignmentChange], dict[str, Any]]:
    """(policy documents changed vs the policies in force, per-device assignment changes, plan summary)."""
    latest = snapshot.latest
    current = (
        load(files_from_json(latest.policies_json)) if latest and latest.policies_json else PolicySet.of()
    )
    planned = make_plan(snapshot, policies)
    summary = report.summary(planned.plan)
    if planned.skipped:
        summary["skipped"] = [{"device": d, "reason": why} for d, why in planned.skipped]
    return diff_policy_sets(current, policies).to_doc(), changes(planned), summary


# --- apply ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: ApplyOutcome
    changes: tuple[AssignmentChange, ...]


@dataclass(frozen=True, slots=True)
class ApplyPlan:
    """What ``apply`` writes: the record, the plan (whose segments are built before the write), and
    the changes for the reply."""

    record: PolicyApply
    planned: Planned
    changes: tuple[AssignmentChange, ...]


def prepare_apply(
    snapshot: Snapshot,
    files: Sequence[PolicyFile],
    *,
    applied_by: str,
    git_commit: str,
    git_dirty: bool,
    source: str,
    message: str,
    now_ms: int,
) -> ApplyPlan:
    """Detect for an apply: parse, check and plan the policies in ``files`` (pure)."""
    policies = load(files)
    planned = make_plan(snapshot, policies)
    summary = report.summary(planned.plan)
    if planned.skipped:
        summary["skipped"] = len(planned.skipped)
    record = PolicyApply(
        id=0,
        applied_at_ms=now_ms,
        applied_by=applied_by,
        git_commit=git_commit,
        git_dirty=git_dirty,
        source=source,
        digest=policies.digest(),
        documents=sum(policies.kind_counts().values()),
        devices_changed=0,
        summary_json=json.dumps(summary, sort_keys=True),
        message=message,
        policies_json=files_json(files),
    )
    return ApplyPlan(record, planned, tuple(changes(planned)))


def commit_apply(store: Store, prepared: ApplyPlan, assignments: Sequence[PlannedAssignment]) -> Applied:
    """Apply: one store transaction (on the store thread)."""
    outcome = store.apply_policies(prepared.record, assignments)
    record = prepared.record
    if outcome.recorded:
        log.info(
            "policies applied (apply %d, digest %s, commit %s%s by %s): %d devices changed",
            outcome.record.id,
            record.digest[:12],
            record.git_commit[:12] or "-",
            " dirty" if record.git_dirty else "",
            record.applied_by or "-",
            len(outcome.changed),
        )
    else:
        log.info("policies unchanged (digest %s): nothing applied", record.digest[:12])
    changed = {d.id for d in outcome.changed}
    return Applied(outcome, tuple(c for c in prepared.changes if c.device_id in changed))


def replan(snapshot: Snapshot) -> Planned | None:
    """The policies in force planned again against the fleet in ``snapshot`` (new devices, links,
    profiles, endpoints), with hysteresis. Pure; None when nothing is applied."""
    latest = snapshot.latest
    if latest is None or not latest.policies_json:
        return None
    try:
        policies = load(files_from_json(latest.policies_json))
        return make_plan(snapshot, policies)
    except PolicyErrors as exc:  # e.g. a model it names was deleted since
        log.warning("re-plan of apply %d skipped: %s", latest.id, exc)
        return None


def set_assignments(store: Store, assignments: Sequence[PlannedAssignment]) -> list[str]:
    """Set each assignment (on the store thread); the devices that got a new version. A re-plan
    records no history entry: it carries out the policies already applied, it does not change them."""
    changed: list[str] = []
    for a in assignments:
        _, did = store.set_assignment(
            a.device_id,
            model_name=a.model_name,
            variant=a.variant,
            artifact_sha256=a.artifact_sha256,
            artifact_size_bytes=a.artifact_size_bytes,
            plan=a.plan,
            serve=a.serve,
            retry_failed=False,
        )
        if did:
            changed.append(a.device_id)
    if changed:
        log.info("re-plan moved %d devices: %s", len(changed), ", ".join(changed[:20]))
    return changed
