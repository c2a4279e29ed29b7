"""Conversion between domain dataclasses and SQLite rows / JSON columns, kept in one place.

Rows come from ``sqlite_utils.Database.query`` as ``dict[str, Any]``; JSON columns hold plain
objects with stable keys so a database stays readable by later code versions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from common.types import (
    Assignment,
    AssignmentFailure,
    AssignmentPlan,
    BlockAccuracy,
    BlockProfile,
    BlockTiming,
    BootstrapToken,
    CallOverhead,
    CutPoint,
    DataType,
    Device,
    DeviceEvent,
    HardwareProfile,
    HopTiming,
    InferenceRecord,
    LinkMeasurement,
    ModelVariant,
    Outcome,
    PlannedSegment,
    PolicyApply,
    ProfileReport,
    ProfileRequestRecord,
    RejectedVariant,
    ReportedState,
    SegmentEndpoint,
    ServedSegment,
    TelemetryRecord,
    TensorSpec,
)

Row = Mapping[str, Any]

KIND_INFERENCE = "inference"
KIND_EVENT = "event"


def _dumps(obj: object) -> str:
    # Sorted, compact keys: equal values give byte-equal JSON, which keeps diffs and dumps stable.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- hardware / reported state ------------------------------------------------------------------


def hardware_to_json(hw: HardwareProfile) -> str:
    return _dumps(
        {
            "hardware_class": hw.hardware_class,
            "cpu_cores": hw.cpu_cores,
            "memory_bytes": hw.memory_bytes,
            "execution_providers": list(hw.execution_providers),
            "os": hw.os,
            "onnxruntime_version": hw.onnxruntime_version,
            "agent_version": hw.agent_version,
            "labels": dict(hw.labels),
        }
    )


def hardware_from_json(text: str) -> HardwareProfile:
    d = json.loads(text)
    return HardwareProfile(
        hardware_class=str(d["hardware_class"]),
        cpu_cores=int(d.get("cpu_cores", 0)),
        memory_bytes=int(d.get("memory_bytes", 0)),
        execution_providers=tuple(str(p) for p in d.get("execution_providers", ())),
        os=str(d.get("os", "")),
        onnxruntime_version=str(d.get("onnxruntime_version", "")),
        agent_version=str(d.get("agent_version", "")),
        labels={str(k): str(v) for k, v in d.get("labels", {}).items()},
    )


def reported_to_json(r: ReportedState) -> str:
    return _dumps(
        {
            "acked_version": r.acked_version,
            "active_sha256": r.active_sha256,
            "last_known_good_sha256": r.last_known_good_sha256,
            "active_model_name": r.active_model_name,
            "active_variant": r.active_variant,
        }
    )


def reported_from_json(text: str) -> ReportedState:
    d = json.loads(text)
    return ReportedState(
        acked_version=int(d.get("acked_version", 0)),
        active_sha256=str(d.get("active_sha256", "")),
        last_known_good_sha256=str(d.get("last_known_good_sha256", "")),
        active_model_name=str(d.get("active_model_name", "")),
        active_variant=str(d.get("active_variant", "")),
    )


# --- tensor specs / models ----------------------------------------------------------------------


def specs_to_json(specs: tuple[TensorSpec, ...]) -> str:
    return _dumps([{"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)} for s in specs])


def specs_from_json(text: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name=str(d["name"]), dtype=DataType(d["dtype"]), shape=tuple(int(x) for x in d["shape"]))
        for d in json.loads(text)
    )


def variant_from_row(row: Row) -> ModelVariant:
    return ModelVariant(
        variant=row["variant"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        inputs=specs_from_json(row["inputs_json"]),
        outputs=specs_from_json(row["outputs_json"]),
        created_at_ms=row["created_at_ms"],
        precision=row["precision"],
        method=row["method"],
        latency_b1_ms=row["latency_b1_ms"],
        latency_b32_ms=row["latency_b32_ms"],
        accuracy=row["accuracy"],
        agreement=row["agreement"],
        cosine=row["cosine"],
    )


def variant_row(name: str, variant: ModelVariant, *, now_ms: int) -> dict[str, Any]:
    return {
        "model_name": name,
        "variant": variant.variant,
        "sha256": variant.sha256,
        "size_bytes": variant.size_bytes,
        "inputs_json": specs_to_json(variant.inputs),
        "outputs_json": specs_to_json(variant.outputs),
        "created_at_ms": now_ms,
        "precision": variant.precision,
        "method": variant.method,
        "latency_b1_ms": variant.latency_b1_ms,
        "latency_b32_ms": variant.latency_b32_ms,
        "accuracy": variant.accuracy,
        "agreement": variant.agreement,
        "cosine": variant.cosine,
    }


def rejection_from_row(row: Row) -> RejectedVariant:
    return RejectedVariant(precision=row["precision"], method=row["method"], reason=row["reason"])


def cut_points_to_json(cuts: Sequence[CutPoint]) -> str:
    return _dumps(
        [
            {
                "index": c.index,
                "tensors": [
                    {"name": t.name, "dtype": t.dtype.value, "shape": list(t.shape)} for t in c.tensors
                ],
                "bytes_per_sample": c.bytes_per_sample,
            }
            for c in cuts
        ]
    )


def cut_points_from_json(text: str) -> tuple[CutPoint, ...]:
    return tuple(
        CutPoint(
            index=c["index"],
            tensors=tuple(
                TensorSpec(name=t["name"], dtype=DataType(t["dtype"]), shape=tuple(t["shape"]))
                for t in c["tensors"]
            ),
            bytes_per_sample=c["bytes_per_sample"],
        )
        for c in json.loads(text)
    )


def call_overhead_to_json(items: Sequence[CallOverhead]) -> str:
    return _dumps(
        [
            {"batch_size": c.batch_size, "latency_ms": c.latency_ms, "dispatch_ms": c.dispatch_ms}
            for c in items
        ]
    )


def call_overhead_from_json(text: str) -> tuple[CallOverhead, ...]:
    return tuple(
        CallOverhead(int(c["batch_size"]), float(c["latency_ms"]), float(c.get("dispatch_ms", 0.0)))
        for c in json.loads(text)
    )


def block_profiles_to_json(blocks: Sequence[BlockProfile]) -> str:
    return _dumps(
        [
            {
                "start_cut": b.start_cut,
                "end_cut": b.end_cut,
                "precision": b.precision,
                "batch_size": b.batch_size,
                "latency_ms": b.latency_ms,
                "error": b.error,
                "artifact_sha256": b.artifact_sha256,
                "artifact_size_bytes": b.artifact_size_bytes,
            }
            for b in blocks
        ]
    )


def block_profiles_from_json(text: str) -> tuple[BlockProfile, ...]:
    """Rows written before block artifacts were stored have no artifact keys: no artifact."""
    return tuple(
        BlockProfile(
            start_cut=b["start_cut"],
            end_cut=b["end_cut"],
            precision=b["precision"],
            batch_size=b["batch_size"],
            latency_ms=b["latency_ms"],
            error=b.get("error", ""),
            artifact_sha256=b.get("artifact_sha256", ""),
            artifact_size_bytes=b.get("artifact_size_bytes", 0),
        )
        for b in json.loads(text)
    )


def block_accuracy_to_json(rows: Sequence[BlockAccuracy]) -> str:
    return _dumps(
        [
            {
                "start_cut": b.start_cut,
                "end_cut": b.end_cut,
                "precision": b.precision,
                "accuracy": b.accuracy,
                "cosine": b.cosine,
                "agreement": b.agreement,
                "error": b.error,
            }
            for b in rows
        ]
    )


def block_accuracy_from_json(text: str) -> tuple[BlockAccuracy, ...]:
    return tuple(
        BlockAccuracy(
            start_cut=b["start_cut"],
            end_cut=b["end_cut"],
            precision=b["precision"],
            accuracy=b.get("accuracy"),
            cosine=b.get("cosine"),
            agreement=b.get("agreement"),
            error=b.get("error", ""),
        )
        for b in json.loads(text)
    )


# --- profile requests and reports ---------------------------------------------------------------


def batch_sizes_to_json(batch_sizes: Sequence[int]) -> str:
    return _dumps(list(batch_sizes))


def profile_request_from_row(row: Row) -> ProfileRequestRecord:
    return ProfileRequestRecord(
        device_id=row["device_id"],
        model_name=row["model_name"],
        request_id=row["request_id"],
        batch_sizes=tuple(int(b) for b in json.loads(row["batch_sizes_json"])),
        runs=row["runs"],
        requested_at_ms=row["requested_at_ms"],
        completed_at_ms=row["completed_at_ms"],
    )


def profile_report_to_json(r: ProfileReport) -> str:
    """The report's content (its request id and model are columns of their own)."""
    return _dumps(
        {
            "timings": [
                {
                    "start_cut": t.start_cut,
                    "end_cut": t.end_cut,
                    "precision": t.precision,
                    "batch_size": t.batch_size,
                    "latency_ms": t.latency_ms,
                    "error": t.error,
                }
                for t in r.timings
            ],
            "call_overhead": [
                {"batch_size": c.batch_size, "latency_ms": c.latency_ms, "dispatch_ms": c.dispatch_ms}
                for c in r.call_overhead
            ],
            "error": r.error,
        }
    )


def profile_report_from_json(request_id: str, model_name: str, text: str) -> ProfileReport:
    d = json.loads(text)
    return ProfileReport(
        request_id=request_id,
        model_name=model_name,
        timings=tuple(
            BlockTiming(
                start_cut=t["start_cut"],
                end_cut=t["end_cut"],
                precision=t["precision"],
                batch_size=t["batch_size"],
                latency_ms=t["latency_ms"],
                error=t.get("error", ""),
            )
            for t in d.get("timings", ())
        ),
        call_overhead=tuple(
            CallOverhead(
                batch_size=c["batch_size"], latency_ms=c["latency_ms"], dispatch_ms=c.get("dispatch_ms", 0.0)
            )
            for c in d.get("call_overhead", ())
        ),
        error=d.get("error", ""),
    )


# --- telemetry ----------------------------------------------------------------------------------


def telemetry_body_to_json(body: InferenceRecord | DeviceEvent) -> tuple[str, str]:
    """Return (kind, body_json)."""
    if isinstance(body, InferenceRecord):
        return KIND_INFERENCE, _dumps(
            {
                "model_sha256": body.model_sha256,
                "latency_ms": body.latency_ms,
                "outcome": body.outcome.value,
                "error": body.error,
                "path": body.path,
                "hops": [dataclasses.asdict(h) for h in body.hops],
                "assignment_version": body.assignment_version,
            }
        )
    return KIND_EVENT, _dumps(
        {"kind": body.kind, "message": body.message, "assignment_version": body.assignment_version}
    )


def telemetry_from_row(row: Row) -> TelemetryRecord:
    d = json.loads(row["body_json"])
    body: InferenceRecord | DeviceEvent
    if row["kind"] == KIND_INFERENCE:
        body = InferenceRecord(
            model_sha256=str(d["model_sha256"]),
            latency_ms=float(d["latency_ms"]),
            outcome=Outcome(d["outcome"]),
            error=str(d.get("error", "")),
            path=str(d.get("path", "")),
            hops=tuple(HopTiming(**h) for h in d.get("hops", ())),
            assignment_version=int(d.get("assignment_version", 0)),
        )
    elif row["kind"] == KIND_EVENT:
        body = DeviceEvent(
            kind=str(d["kind"]),
            message=str(d["message"]),
            assignment_version=int(d.get("assignment_version", 0)),
        )
    else:
        raise ValueError(f"unknown telemetry kind {row['kind']!r} in the database")
    return TelemetryRecord(sequence=row["sequence"], timestamp_ms=row["timestamp_ms"], body=body)


# --- tokens / devices ---------------------------------------------------------------------------


def token_from_row(row: Row) -> BootstrapToken:
    return BootstrapToken(
        token_id=row["token_id"],
        expires_at_ms=row["expires_at_ms"],
        uses_total=row["uses_total"],
        uses_left=row["uses_left"],
        created_at_ms=row["created_at_ms"],
        description=row["description"],
    )


def device_from_row(row: Row) -> Device:
    assignment: Assignment | None = None
    # A device that was never assigned has no Assignment at all, not an empty one at version 0.
    if row["model_name"] or row["desired_version"]:
        assignment = Assignment(
            version=row["desired_version"],
            model_name=row["model_name"],
            variant=row["variant"],
            artifact_sha256=row["artifact_sha256"],
            artifact_size_bytes=row["artifact_size_bytes"],
            plan=plan_from_json(row["plan_json"]),
            serve=serve_from_json(row["serve_json"]),
        )
    failure = row["last_failure"]
    return Device(
        id=row["id"],
        hardware=hardware_from_json(row["hardware_json"]),
        enrolled_at_ms=row["enrolled_at_ms"],
        connected=bool(row["connected"]),
        last_seen_ms=row["last_seen_ms"],
        desired_version=row["desired_version"],
        acked_version=row["acked_version"],
        assignment=assignment,
        reported=reported_from_json(row["reported_json"]),
        last_failure=AssignmentFailure(failure) if failure is not None else None,
        last_failure_message=row["last_failure_message"],
        failed_version=row["failed_version"],
        records_received=row["records_received"],
        last_sequence=row["last_sequence"],
        records_dropped=row["records_dropped"],
        links=links_from_json(row["links_json"]),
        endpoint=row["endpoint"],
    )


def device_state_columns(device: Device) -> dict[str, Any]:
    """Columns that ``_rules`` transitions may change (not identity, credential or telemetry counters)."""
    a = device.assignment
    return {
        "hardware_json": hardware_to_json(device.hardware),
        "connected": int(device.connected),
        "last_seen_ms": device.last_seen_ms,
        "desired_version": device.desired_version,
        "acked_version": device.acked_version,
        "model_name": a.model_name if a else "",
        "variant": a.variant if a else "",
        "artifact_sha256": a.artifact_sha256 if a else "",
        "artifact_size_bytes": a.artifact_size_bytes if a else 0,
        "reported_json": reported_to_json(device.reported),
        "last_failure": device.last_failure.value if device.last_failure else None,
        "last_failure_message": device.last_failure_message,
        "failed_version": device.failed_version,
        "records_dropped": device.records_dropped,
        "plan_json": plan_to_json(a.plan) if a and a.plan else "",
        "links_json": links_to_json(device.links),
        "serve_json": serve_to_json(a.serve) if a else "[]",
        "endpoint": device.endpoint,
    }


# --- plans, links, policy applies ---------------------------------------------------------------


def plan_to_json(plan: AssignmentPlan) -> str:
    return _dumps(
        {
            "deployment": plan.deployment,
            "pattern": plan.pattern,
            "segments": [
                {
                    "tier": s.tier,
                    "start_cut": s.start_cut,
                    "end_cut": s.end_cut,
                    "precision": s.precision,
                    "where": s.where,
                    "artifact_sha256": s.artifact_sha256,
                    "artifact_size_bytes": s.artifact_size_bytes,
                    "endpoints": [dataclasses.asdict(e) for e in s.endpoints],
                    "predicted_compute_ms": s.predicted_compute_ms,
                    "predicted_queue_ms": s.predicted_queue_ms,
                    "predicted_transfer_ms": s.predicted_transfer_ms,
                    "profiled_compute_ms": s.profiled_compute_ms,
                }
                for s in plan.segments
            ],
            "edge_pool": plan.edge_pool,
            "edge_node": plan.edge_node,
            "cloud_pool": plan.cloud_pool,
            "fallback_variant": plan.fallback_variant,
            "predicted_latency_ms": plan.predicted_latency_ms,
            "predicted_accuracy": plan.predicted_accuracy,
            "slo_ms": plan.slo_ms,
            "percentile": plan.percentile,
            "priority": plan.priority,
        }
    )


def plan_from_json(text: str) -> AssignmentPlan | None:
    if not text:
        return None
    d = json.loads(text)
    return AssignmentPlan(
        deployment=d["deployment"],
        pattern=d["pattern"],
        segments=tuple(
            PlannedSegment(
                tier=s["tier"],
                start_cut=s["start_cut"],
                end_cut=s["end_cut"],
                precision=s["precision"],
                where=s["where"],
                artifact_sha256=s.get("artifact_sha256", ""),
                artifact_size_bytes=s.get("artifact_size_bytes", 0),
                endpoints=tuple(SegmentEndpoint(**e) for e in s.get("endpoints", ())),
                predicted_compute_ms=s.get("predicted_compute_ms", 0.0),
                predicted_queue_ms=s.get("predicted_queue_ms", 0.0),
                predicted_transfer_ms=s.get("predicted_transfer_ms", 0.0),
                profiled_compute_ms=s.get("profiled_compute_ms", 0.0),
            )
            for s in d["segments"]
        ),
        edge_pool=d.get("edge_pool", ""),
        edge_node=d.get("edge_node", ""),
        cloud_pool=d.get("cloud_pool", ""),
        fallback_variant=d.get("fallback_variant", ""),
        predicted_latency_ms=d.get("predicted_latency_ms", 0.0),
        predicted_accuracy=d.get("predicted_accuracy", 0.0),
        slo_ms=d.get("slo_ms", 0.0),
        percentile=d.get("percentile", 0.0),
        priority=d.get("priority", 0),
    )


def serve_to_json(serve: Sequence[ServedSegment]) -> str:
    return _dumps([dataclasses.asdict(x) for x in serve])


def serve_from_json(text: str) -> tuple[ServedSegment, ...]:
    return tuple(ServedSegment(**x) for x in json.loads(text or "[]"))


def links_to_json(links: Sequence[LinkMeasurement]) -> str:
    return _dumps(
        [
            {
                "pool": m.pool,
                "bandwidth_mbps": m.bandwidth_mbps,
                "rtt_ms": m.rtt_ms,
                "rtt_p95_ms": m.rtt_p95_ms,
            }
            for m in sorted(links, key=lambda m: m.pool)
        ]
    )


def links_from_json(text: str) -> tuple[LinkMeasurement, ...]:
    return tuple(LinkMeasurement(**m) for m in json.loads(text or "[]"))


def policy_apply_from_row(row: Row) -> PolicyApply:
    return PolicyApply(
        id=row["id"],
        applied_at_ms=row["applied_at_ms"],
        applied_by=row["applied_by"],
        git_commit=row["git_commit"],
        git_dirty=bool(row["git_dirty"]),
        source=row["source"],
        digest=row["digest"],
        documents=row["documents"],
        devices_changed=row["devices_changed"],
        summary_json=row["summary_json"],
        message=row["message"],
        policies_json=row["policies_json"],
    )


def policy_apply_row(a: PolicyApply) -> dict[str, Any]:
    return {
        "applied_at_ms": a.applied_at_ms,
        "applied_by": a.applied_by,
        "git_commit": a.git_commit,
        "git_dirty": int(a.git_dirty),
        "source": a.source,
        "digest": a.digest,
        "documents": a.documents,
        "devices_changed": a.devices_changed,
        "summary_json": a.summary_json,
        "message": a.message,
        "policies_json": a.policies_json,
    }
