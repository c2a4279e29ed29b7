"""A device's measured request latency against its plan's predictions (pure).

The agents record every request with its path and, for a partitioned one, each hop's queue, compute
and transfer time; this module reduces a window of those records to what an operator (and, later, a
rollout gate) compares with the plan: the latency at the deployment's percentile beside the planner's
prediction and the SLO, and each hop's measured parts beside the predicted ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from common.types import (
    Device,
    DeviceLatency,
    HopLatency,
    HopTiming,
    InferenceRecord,
    Outcome,
    PlannedSegment,
    TelemetryRecord,
)


def summarize(device: Device, records: Sequence[TelemetryRecord], *, window: int) -> DeviceLatency:
    """The device's latency over ``records`` (its latest, at most ``window``) against its plan."""
    inferences = [r.body for r in records if isinstance(r.body, InferenceRecord)]
    outcomes = Counter(r.outcome.value for r in inferences)
    paths = Counter(r.path or "local" for r in inferences)
    plan = device.assignment.plan if device.assignment is not None else None
    wanted_path = "partitioned" if plan is not None and plan.pattern != "local" else "local"
    ok = [r for r in inferences if r.outcome is Outcome.OK and (r.path or "local") == wanted_path]
    base = DeviceLatency(
        device_id=device.id,
        window=window,
        requests=len(inferences),
        outcomes=tuple(sorted(outcomes.items())),
        paths=tuple(sorted(paths.items())),
        measured=len(ok),
        percentile=plan.percentile if plan is not None else 0.0,
        predicted_ms=plan.predicted_latency_ms if plan is not None else 0.0,
        slo_ms=plan.slo_ms if plan is not None else 0.0,
    )
    if not ok:
        return base
    latencies = np.array([r.latency_ms for r in ok])
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
    at = float(np.percentile(latencies, base.percentile)) if base.percentile > 0 else p95
    segments = plan.segments if plan is not None else ()
    return replace(base, p50_ms=p50, p95_ms=p95, p99_ms=p99, at_percentile_ms=at, hops=_hops(ok, segments))


def _hops(records: Sequence[InferenceRecord], segments: Sequence[PlannedSegment]) -> tuple[HopLatency, ...]:
    """Per hop position (device, edge, cloud in request order): the measured parts and the plan's."""
    by_position: dict[int, list[HopTiming]] = {}
    for r in records:
        for i, h in enumerate(r.hops):
            by_position.setdefault(i, []).append(h)
    out: list[HopLatency] = []
    for i in sorted(by_position):
        hops = by_position[i]
        tier = hops[-1].tier
        predicted = next((s for s in segments if s.tier == tier), None)
        compute = np.array([h.compute_ms for h in hops])
        out.append(
            HopLatency(
                tier=tier,
                device_id=Counter(h.device_id for h in hops).most_common(1)[0][0],
                requests=len(hops),
                compute_ms_p50=float(np.percentile(compute, 50)),
                compute_ms_p95=float(np.percentile(compute, 95)),
                queue_ms_p50=float(np.percentile([h.queue_ms for h in hops], 50)),
                transfer_ms_p50=float(np.percentile([h.transfer_ms for h in hops], 50)),
                mean_batch_size=float(np.mean([h.batch_size for h in hops])),
                predicted_compute_ms=predicted.predicted_compute_ms if predicted else 0.0,
                predicted_queue_ms=predicted.predicted_queue_ms if predicted else 0.0,
                predicted_transfer_ms=predicted.predicted_transfer_ms if predicted else 0.0,
            )
        )
    return tuple(out)
