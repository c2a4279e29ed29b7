"""How fleetctl shows things: stable JSON/YAML documents for scripts, rich tables for people."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from ruamel.yaml import YAML

from common.types import (
    AssignmentPlan,
    CreatedToken,
    Device,
    DeviceLatency,
    Model,
    ProfileRequestRecord,
    SegmentEvaluation,
    SegmentSpec,
)


def _iso(ms: int) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def device_status(d: Device) -> str:
    if (
        d.last_failure is not None
        and d.failed_version >= d.acked_version
        and d.failed_version == d.desired_version
    ):
        return "failed"
    if d.desired_version == 0:
        return "unassigned"
    return "converged" if d.converged else "pending"


def device_doc(d: Device) -> dict[str, Any]:
    """The stable JSON shape of a device (``fleetctl get devices -o json``)."""
    a = d.assignment
    return {
        "id": d.id,
        "hardware": d.hardware.hardware_class,
        "connected": d.connected,
        "status": device_status(d),
        "desired_version": d.desired_version,
        "acked_version": d.acked_version,
        "assignment": None
        if a is None
        else {
            "version": a.version,
            "model": a.model_name,
            "variant": a.variant,
            "sha256": a.artifact_sha256,
            "plan": None if a.plan is None else plan_doc(a.plan),
        },
        "active_sha256": d.reported.active_sha256 or None,
        "last_known_good_sha256": d.reported.last_known_good_sha256 or None,
        "last_seen": _iso(d.last_seen_ms),
        "enrolled_at": _iso(d.enrolled_at_ms),
        "resources": {
            "cpu_cores": d.hardware.cpu_cores,
            "memory_bytes": d.hardware.memory_bytes,
            "execution_providers": list(d.hardware.execution_providers),
            "onnxruntime_version": d.hardware.onnxruntime_version,
            "os": d.hardware.os,
            "agent_version": d.hardware.agent_version,
        },
        "labels": dict(d.hardware.labels),
        "last_failure": None
        if d.last_failure is None
        else {"reason": d.last_failure.value, "message": d.last_failure_message, "version": d.failed_version},
        "records_received": d.records_received,
        "records_dropped": d.records_dropped,
        "last_sequence": d.last_sequence,
        "links": [
            {
                "pool": m.pool,
                "bandwidth_mbps": m.bandwidth_mbps,
                "rtt_ms": m.rtt_ms,
                "rtt_p95_ms": m.rtt_p95_ms or None,
            }
            for m in d.links
        ],
    }


def plan_doc(p: AssignmentPlan) -> dict[str, Any]:
    """How the planner placed a device's model, as ``describe device -o json`` shows it."""
    return {
        "deployment": p.deployment,
        "pattern": p.pattern,
        "segments": [
            {
                "tier": s.tier,
                "start_cut": s.start_cut,
                "end_cut": s.end_cut,
                "precision": s.precision,
                "where": s.where,
            }
            for s in p.segments
        ],
        "edge_pool": p.edge_pool or None,
        "edge_node": p.edge_node or None,
        "cloud_pool": p.cloud_pool or None,
        "fallback_variant": p.fallback_variant or None,
        "predicted_latency_ms": p.predicted_latency_ms,
        "predicted_accuracy": p.predicted_accuracy,
    }


def model_doc(m: Model, manifests: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The stable JSON shape of a model (``fleetctl get models -o json``, ``fleetctl models describe``).

    With ``manifests`` (by sha256; ``models describe``), each variant also carries its artifact's
    manifest (null: the artifact has none)."""
    doc: dict[str, Any] = {
        "name": m.name,
        "created_at": _iso(m.created_at_ms),
        "variants": [
            {
                "variant": v.variant,
                "sha256": v.sha256,
                "size_bytes": v.size_bytes,
                "inputs": [
                    {"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)} for s in v.inputs
                ],
                "outputs": [
                    {"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)} for s in v.outputs
                ],
                "precision": v.precision or None,
                "method": v.method or None,
                "latency_ms": {"1": v.latency_b1_ms or None, "32": v.latency_b32_ms or None},
                "accuracy": v.accuracy,
                "agreement": v.agreement,
                "cosine": v.cosine,
                "created_at": _iso(v.created_at_ms),
            }
            for v in m.variants
        ],
        "rejected": [{"precision": r.precision, "method": r.method, "reason": r.reason} for r in m.rejected],
        "cut_points": [
            {
                "index": c.index,
                "tensors": [
                    {"name": t.name, "dtype": t.dtype.value, "shape": list(t.shape)} for t in c.tensors
                ],
                "bytes_per_sample": None if c.bytes_per_sample < 0 else c.bytes_per_sample,
            }
            for c in m.cut_points
        ],
        "block_profiles": [
            {
                "start_cut": b.start_cut or None,
                "end_cut": b.end_cut or None,
                "precision": b.precision,
                "batch_size": b.batch_size,
                "latency_ms": b.latency_ms if not b.error else None,
                "error": b.error or None,
                "artifact_sha256": b.artifact_sha256 or None,
                "artifact_size_bytes": b.artifact_size_bytes or None,
            }
            for b in m.block_profiles
        ],
        "block_accuracy": [
            {
                "start_cut": b.start_cut or None,
                "end_cut": b.end_cut or None,
                "precision": b.precision,
                "accuracy": b.accuracy,
                "cosine": b.cosine,
                "agreement": b.agreement,
                "error": b.error or None,
            }
            for b in m.block_accuracy
        ],
        "profile_inputs": _artifact(m.profile_inputs_sha256, m.profile_inputs_size_bytes),
        "eval_data": _artifact(m.eval_data_sha256, m.eval_data_size_bytes),
        "class_profiles": [
            {
                "hardware_class": c.hardware_class,
                "start_cut": c.start_cut or None,
                "end_cut": c.end_cut or None,
                "precision": c.precision,
                "batch_size": c.batch_size,
                "latency_ms": c.latency_ms if c.devices else None,
                "devices": c.devices,
                "error": c.error or None,
            }
            for c in m.class_profiles
        ],
        "call_overhead_ms": {str(c.batch_size): c.latency_ms for c in m.call_overhead},
        "class_call_overhead": [
            {
                "hardware_class": c.hardware_class,
                "batch_size": c.batch_size,
                "latency_ms": c.latency_ms,
                "dispatch_ms": c.dispatch_ms,
                "devices": c.devices,
            }
            for c in m.class_call_overhead
        ],
    }
    if manifests is not None:
        for variant_doc in doc["variants"]:
            variant_doc["manifest"] = manifests.get(variant_doc["sha256"])
    return doc


def _artifact(sha256: str, size_bytes: int) -> dict[str, Any] | None:
    return {"sha256": sha256, "size_bytes": size_bytes} if sha256 else None


def _ms(value: float) -> str:
    return f"{value:.3f}" if value else "-"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


_PRECISION_ORDER = {p: i for i, p in enumerate(("fp32", "fp16", "int8", "int4"))}


def variants_table(m: Model) -> Table:
    """Every variant of one model with its measurements, then every rejected candidate with the reason."""
    table = Table(box=None, header_style="bold", title=f"model {m.name}", title_justify="left")
    for col in ("VARIANT", "METHOD", "SIZE", "B1 MS", "B32 MS", "ACCURACY", "COSINE", "STATUS"):
        table.add_column(col, overflow="fold")
    for v in sorted(
        m.variants, key=lambda v: (_PRECISION_ORDER.get(v.variant, len(_PRECISION_ORDER)), v.variant)
    ):
        table.add_row(
            v.variant,
            v.method or "-",
            f"{v.size_bytes / 1024:.1f} KiB",
            _ms(v.latency_b1_ms),
            _ms(v.latency_b32_ms),
            _score(v.accuracy),
            _score(v.cosine),
            "accepted",
        )
    for r in m.rejected:
        table.add_row(r.precision, r.method or "-", "-", "-", "-", "-", "-", f"rejected: {r.reason}")
    return table


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join("N" if d < 0 else str(d) for d in shape) + "]"


def cut_points_table(m: Model) -> Table:
    """Every cut point: where it is, which tensors cross it, and how many bytes per sample."""
    table = Table(
        box=None, header_style="bold", title=f"cut points ({len(m.cut_points)})", title_justify="left"
    )
    for col in ("INDEX", "CROSSING TENSORS", "BYTES/SAMPLE"):
        table.add_column(col, overflow="fold")
    for c in m.cut_points:
        table.add_row(
            str(c.index),
            ", ".join(f"{t.name} {t.dtype.value}{_shape(t.shape)}" for t in c.tensors),
            "?" if c.bytes_per_sample < 0 else str(c.bytes_per_sample),
        )
    return table


def block_profiles_table(m: Model) -> Table:
    """Block x (precision, batch) grid of measured latency in ms (``input``/``output``: model ends)."""
    cells = {
        (b.start_cut, b.end_cut, b.precision, b.batch_size): "failed" if b.error else f"{b.latency_ms:.4f}"
        for b in m.block_profiles
    }
    overhead = ", ".join(f"batch {c.batch_size} {c.latency_ms:.4f}" for c in m.call_overhead)
    return _grid(f"block profiles (ms per call, host; call overhead {overhead or 'not measured'})", cells)


def class_profile_tables(m: Model) -> list[Table]:
    """One grid per hardware class: the median over its devices' latest reports (ms per call), each
    cell with the number of devices behind it when not every device of the class measured it."""
    tables: list[Table] = []
    for hardware_class in sorted({c.hardware_class for c in m.class_profiles}):
        rows = [c for c in m.class_profiles if c.hardware_class == hardware_class]
        most = max(c.devices for c in rows)
        cells = {
            (c.start_cut, c.end_cut, c.precision, c.batch_size): "failed"
            if not c.devices
            else f"{c.latency_ms:.4f}" + ("" if c.devices == most else f" ({c.devices})")
            for c in rows
        }
        tables.append(
            _grid(f"block profiles (ms per call, {hardware_class}, median of {most} device(s))", cells)
        )
    return tables


def block_accuracy_table(m: Model) -> Table:
    """Block x precision grid of the model's quality with only that block lowered (the judged metric:
    accuracy with labels, else cosine to fp32), and the fp32 reference on the same rows."""
    reference = next(
        (b for b in m.block_accuracy if (b.start_cut, b.end_cut, b.precision) == (0, 0, "fp32")), None
    )
    metric = "accuracy" if reference is not None and reference.accuracy is not None else "cosine"
    shown = f"{metric}; fp32 {_score(getattr(reference, metric))}" if reference is not None else metric
    title = f"block accuracy (only this block lowered, {shown})"
    # At least as wide as its title: rich wraps a title to the table's width, and this one is narrow.
    table = Table(box=None, header_style="bold", title=title, title_justify="left", min_width=len(title))
    rows = [b for b in m.block_accuracy if b is not reference]
    precisions = sorted(
        {b.precision for b in rows}, key=lambda p: (_PRECISION_ORDER.get(p, len(_PRECISION_ORDER)), p)
    )
    cells = {(b.start_cut, b.end_cut, b.precision): b for b in rows}
    table.add_column("BLOCK")
    for precision in precisions:
        table.add_column(precision.upper(), justify="right")
    for start, end in sorted({(b.start_cut, b.end_cut) for b in rows}, key=lambda k: (k[0], k[1] == 0, k[1])):
        row = [f"{start or 'input'}..{end or 'output'}"]
        for precision in precisions:
            b = cells.get((start, end, precision))
            row.append("-" if b is None else ("failed" if b.error else _score(getattr(b, metric))))
        table.add_row(*row)
    return table


def _grid(title: str, cells: dict[tuple[int, int, str, int], str]) -> Table:
    """A block x (precision, batch) table of ``cells`` by (start, end, precision, batch)."""
    table = Table(box=None, header_style="bold", title=title, title_justify="left", min_width=len(title))
    columns = sorted(
        {(k[2], k[3]) for k in cells},
        key=lambda k: (_PRECISION_ORDER.get(k[0], len(_PRECISION_ORDER)), k[0], k[1]),
    )
    blocks = sorted({(k[0], k[1]) for k in cells}, key=lambda k: (k[0], k[1] == 0, k[1]))
    table.add_column("BLOCK")
    for precision, batch in columns:
        table.add_column(f"{precision.upper()} B{batch}", justify="right")
    for start, end in blocks:
        row = [f"{start or 'input'}..{end or 'output'}"]
        row += [cells.get((start, end, precision, batch), "-") for precision, batch in columns]
        table.add_row(*row)
    return table


def evaluation_doc(e: SegmentEvaluation) -> dict[str, Any]:
    """The stable JSON shape of ``fleetctl models evaluate``."""
    return {
        "model": e.model_name,
        "segments": [
            {"start_cut": s.start_cut or None, "end_cut": s.end_cut or None, "precision": s.precision}
            for s in e.segments
        ],
        "rows": e.rows,
        "measured": {"accuracy": e.accuracy, "cosine": e.cosine, "agreement": e.agreement},
        "predicted": {
            "accuracy": e.predicted_accuracy,
            "cosine": e.predicted_cosine,
            "agreement": e.predicted_agreement,
        },
    }


def evaluation_table(e: SegmentEvaluation) -> Table:
    title = f"model {e.model_name}: {' | '.join(_segment(s) for s in e.segments)} on {e.rows} eval rows"
    table = Table(box=None, header_style="bold", title=title, title_justify="left", min_width=len(title))
    for col in ("", "ACCURACY", "COSINE", "AGREEMENT"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("measured", _score(e.accuracy), _score(e.cosine), _score(e.agreement))
    table.add_row(
        "predicted (additive)",
        _score(e.predicted_accuracy),
        _score(e.predicted_cosine),
        _score(e.predicted_agreement),
    )
    return table


def profile_requests_doc(records: Sequence[ProfileRequestRecord]) -> list[dict[str, Any]]:
    return [
        {
            "device": r.device_id,
            "model": r.model_name,
            "request_id": r.request_id,
            "batch_sizes": list(r.batch_sizes),
            "runs": r.runs,
            "requested_at": _iso(r.requested_at_ms),
        }
        for r in records
    ]


def _segment(s: SegmentSpec) -> str:
    return f"{s.start_cut or 'input'}..{s.end_cut or 'output'}@{s.precision}"


def token_doc(t: CreatedToken) -> dict[str, Any]:
    return {"token_id": t.token_id, "token": t.token, "expires_at": _iso(t.expires_at_ms), "uses": t.uses}


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2)
    yaml = YAML()
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()


def devices_table(devices: Sequence[Device]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("ID", "HARDWARE", "CONNECTED", "STATUS", "DESIRED", "ACKED", "MODEL", "LAST SEEN"):
        table.add_column(col)
    for d in devices:
        a = d.assignment
        table.add_row(
            d.id,
            d.hardware.hardware_class,
            "yes" if d.connected else "no",
            device_status(d),
            str(d.desired_version),
            str(d.acked_version),
            f"{a.model_name}/{a.variant}" if a else "-",
            _iso(d.last_seen_ms) or "-",
        )
    return table


def models_table(models: Sequence[Model]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "VARIANT", "SHA256", "SIZE", "INPUTS", "OUTPUTS"):
        table.add_column(col)
    for m in models:
        for v in m.variants:
            table.add_row(
                m.name,
                v.variant,
                v.sha256[:12],
                f"{v.size_bytes / 1024:.1f} KiB",
                ", ".join(f"{s.name}{list(s.shape)}" for s in v.inputs),
                ", ".join(f"{s.name}{list(s.shape)}" for s in v.outputs),
            )
    return table


def device_detail(d: Device, console: Console) -> None:
    doc = device_doc(d)
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in doc.items():
        if key == "assignment" and isinstance(value, dict) and value.get("plan"):
            plan = value["plan"]
            value = {k: v for k, v in value.items() if k != "plan"}
            value = ", ".join(f"{k}={v}" for k, v in value.items())
            table.add_row(key, value)
            where = " > ".join(f"{s['precision']}@{s['where']}" for s in plan["segments"])
            table.add_row(
                "plan",
                escape(
                    f"{plan['deployment']}: {plan['pattern']} [{where}], fallback {plan['fallback_variant']}, "
                    f"predicted {plan['predicted_latency_ms']:.1f} ms, accuracy {plan['predicted_accuracy']:.4f}"
                ),
            )
            continue
        if key == "links":
            value = (
                ", ".join(f"{m['pool']} {m['bandwidth_mbps']:g} Mbit/s {m['rtt_ms']:g} ms" for m in value)
                or "-"
            )
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


# --- latency against the plan ---------------------------------------------------------------------


def latency_doc(x: DeviceLatency) -> dict[str, Any]:
    error = x.prediction_error
    return {
        "device": x.device_id,
        "window": x.window,
        "requests": x.requests,
        "outcomes": dict(x.outcomes),
        "paths": dict(x.paths),
        "measured": x.measured,
        "p50_ms": x.p50_ms if x.measured else None,
        "p95_ms": x.p95_ms if x.measured else None,
        "p99_ms": x.p99_ms if x.measured else None,
        "percentile": x.percentile or None,
        "at_percentile_ms": x.at_percentile_ms if x.measured else None,
        "predicted_ms": x.predicted_ms or None,
        "prediction_error": round(error, 4) if error is not None else None,
        "slo_ms": x.slo_ms or None,
        "meets_slo": x.meets_slo,
        "hops": [
            {
                "tier": h.tier,
                "device": h.device_id,
                "requests": h.requests,
                "compute_ms": {
                    "p50": h.compute_ms_p50,
                    "p95": h.compute_ms_p95,
                    "predicted": h.predicted_compute_ms,
                },
                "queue_ms": {"p50": h.queue_ms_p50, "predicted": h.predicted_queue_ms},
                "transfer_ms": {"p50": h.transfer_ms_p50, "predicted": h.predicted_transfer_ms},
                "mean_batch_size": round(h.mean_batch_size, 2),
            }
            for h in x.hops
        ],
    }


def latency_detail(x: DeviceLatency, console: Console) -> None:
    outcomes = ", ".join(f"{k} {v}" for k, v in x.outcomes) or "none"
    console.print(f"device {x.device_id}: {x.requests} requests in its last {x.window} records ({outcomes})")
    if not x.measured:
        console.print("no successful request on its plan's path in the window")
        return
    pct = f"p{x.percentile:g}" if x.percentile else "p95"
    line = f"{pct} {x.at_percentile_ms:.2f} ms over {x.measured} requests (p50 {x.p50_ms:.2f}, p99 {x.p99_ms:.2f})"
    if x.predicted_ms:
        error = x.prediction_error
        line += f"; predicted {x.predicted_ms:.2f} ms" + (f" ({error:+.0%})" if error is not None else "")
    if x.slo_ms:
        line += f"; SLO {x.slo_ms:g} ms: " + ("met" if x.meets_slo else "MISSED")
    console.print(line, highlight=False)
    if not x.hops:
        return
    table = Table(
        "hop", "device", "compute p50 / p95 (predicted)", "queue p50 (pred.)", "transfer p50 (pred.)", "batch"
    )
    for h in x.hops:
        table.add_row(
            h.tier,
            h.device_id,
            f"{h.compute_ms_p50:.2f} / {h.compute_ms_p95:.2f} ({h.predicted_compute_ms:.2f})",
            f"{h.queue_ms_p50:.2f} ({h.predicted_queue_ms:.2f})",
            f"{h.transfer_ms_p50:.2f} ({h.predicted_transfer_ms:.2f})",
            f"{h.mean_batch_size:.1f}",
        )
    console.print(table)
