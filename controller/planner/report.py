"""A ``Plan`` as a JSON-ready document (``fleetctl plan -o json``, the admin API) and a summary.

The document is the planner's output verbatim in plain types, ``schema: 1``; keys are stable for
scripts. Times are milliseconds, sizes bytes, accuracy relative to fp32.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from controller.planner.types import Alternative, DevicePlan, Plan, SegmentPlan, Tier

SCHEMA = 1


def plan_to_doc(plan: Plan, *, devices: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": SCHEMA, "summary": summary(plan)}
    if devices:
        doc["devices"] = [device_doc(p) for p in plan.devices]
    doc["infeasible"] = [
        {"device": x.device_id, "deployment": x.deployment, "binding": x.binding.value, "reason": x.reason}
        for x in plan.infeasible
    ]
    doc["unplanned"] = [{"device": d, "reason": why} for d, why in plan.unplanned]
    doc["usage"] = [
        {
            "pool": u.pool,
            "node": u.node,
            "tier": u.tier.value,
            "capacity_slots": round(u.capacity_slots, 6),
            "used_slots": round(u.used_slots, 6),
            "devices": u.devices,
        }
        for u in plan.usage
    ]
    return doc


def summary(plan: Plan) -> dict[str, Any]:
    patterns = Counter(p.key.pattern.label for p in plan.devices)
    bindings = Counter(p.binding.value for p in plan.devices if p.binding is not None)
    bindings.update(x.binding.value for x in plan.infeasible)
    n = len(plan.devices)
    return {
        "devices": n,
        "meeting_objectives": sum(p.feasible for p in plan.devices),
        "infeasible": len(plan.infeasible),
        "unplanned": len(plan.unplanned),
        "patterns": dict(sorted(patterns.items())),
        "binding": dict(sorted(bindings.items())),
        "mean_latency_ms": round(sum(p.latency_ms for p in plan.devices) / n, 3) if n else None,
        "mean_accuracy": round(sum(p.quality for p in plan.devices) / n, 6) if n else None,
        "objective": round(plan.objective, 6),
    }


def device_doc(p: DevicePlan) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device": p.device_id,
        "deployment": p.deployment,
        "model": p.model,
        "pattern": p.key.pattern.label,
        # Model cut indices where the request leaves for another tier (0: at the inputs: full offload).
        "cuts": [s.start_cut for s in p.segments if s.tier is not Tier.DEVICE],
        "segments": [_segment(s) for s in p.segments],
        "hops": [
            {
                "from": h.source.value,
                "to": h.target.value,
                "bytes_per_request": h.bytes_per_request,
                "transfer_ms": round(h.transfer_ms, 4),
            }
            for h in p.hops
        ],
        "edge_pool": p.edge_pool,
        "edge_node": p.edge_node,
        "cloud_pool": p.cloud_pool,
        "fallback": p.fallback,
        "fallback_meets_floor": p.fallback_meets_floor,
        "predicted": {
            "latency_ms": round(p.latency_ms, 4),
            "compute_ms": round(p.compute_ms, 4),
            "queue_ms": round(p.queue_ms, 4),
            "transfer_ms": round(p.transfer_ms, 4),
            "overhead_ms": round(p.overhead_ms, 4),
            "accuracy": round(p.quality, 6),
        },
        "memory_bytes": p.memory_bytes,
        "memory_limit_bytes": p.memory_limit_bytes,
        "slo_ms": p.slo_ms,
        "min_accuracy": p.min_quality,
        "meets_slo": p.meets_slo,
        "meets_accuracy": p.meets_accuracy,
        "binding": p.binding.value if p.binding else None,
        "reason": p.reason,
    }
    if p.alternatives:
        doc["alternatives"] = [_alternative(a) for a in p.alternatives]
    return doc


def _segment(s: SegmentPlan) -> dict[str, Any]:
    return {
        "tier": s.tier.value,
        "start_cut": s.start_cut,
        "end_cut": s.end_cut,
        "precision": s.precision,
        "where": s.where,
        "compute_ms": round(s.compute_ms, 4),
        # What the block profiles alone predict; compute_ms differs where calibration scaled it.
        "profiled_compute_ms": round(s.profiled_ms, 4),
        "queue_ms": round(s.queue_ms, 4),
        "slots": round(s.slots, 6),
    }


def _alternative(a: Alternative) -> dict[str, Any]:
    return {
        "pattern": a.key.pattern.label,
        "cuts": list(a.cut_indices),
        "precisions": list(a.key.precisions),
        "latency_ms": round(a.latency_ms, 4),
        "accuracy": round(a.quality, 6),
        "memory_bytes": a.memory_bytes,
        "why_not": a.why_not,
    }
