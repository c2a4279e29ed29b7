"""Tables for ``fleetctl plan``, ``diff``, ``apply`` and ``history`` (the JSON forms are the documents
the controller returns, printed as they are)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.types import AssignmentChange, PolicyApply

MAX_TABLE_ROWS = 200


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def summary_line(summary: dict[str, Any]) -> str:
    patterns = ", ".join(f"{k} {v}" for k, v in summary.get("patterns", {}).items()) or "none"
    binding = ", ".join(f"{k} {v}" for k, v in summary.get("binding", {}).items())
    line = (
        f"{summary.get('devices', 0)} devices planned, {summary.get('meeting_objectives', 0)} meet their "
        f"SLO and accuracy floor ({patterns})"
    )
    if summary.get("infeasible"):
        line += f"; {summary['infeasible']} get nothing"
    if binding:
        line += f"; binding: {binding}"
    if summary.get("unplanned"):
        line += f"; {summary['unplanned']} not selected by any deployment"
    return line


def placement(d: dict[str, Any]) -> str:
    parts = []
    for s in d["segments"]:
        span = f"{s['start_cut'] or 'in'}..{s['end_cut'] or 'out'}"
        parts.append(f"{s['precision']}@{'device' if s['tier'] == 'device' else s['where']} {span}")
    return " > ".join(parts)


def plan_tables(doc: dict[str, Any], console: Console) -> None:
    console.print(summary_line(doc["summary"]), highlight=False)
    devices = doc.get("devices", [])
    if devices:
        t = Table(
            "device",
            "deployment",
            "pattern",
            "placement",
            "latency ms",
            "SLO ms",
            "accuracy",
            "fallback",
            "status",
        )
        for d in devices[:MAX_TABLE_ROWS]:
            p = d["predicted"]
            status = "ok" if d["binding"] is None else f"[red]{d['binding']}[/red]"
            t.add_row(
                d["device"],
                d["deployment"],
                d["pattern"],
                placement(d),
                f"{p['latency_ms']:.1f}",
                f"{d['slo_ms']:g}",
                f"{p['accuracy']:.4f}",
                d["fallback"] or "-",
                status,
            )
        console.print(t)
        if len(devices) > MAX_TABLE_ROWS:
            console.print(f"... and {len(devices) - MAX_TABLE_ROWS} more devices (-o json lists every one)")
    if doc.get("usage"):
        t = Table("pool", "node", "tier", "devices", "used slots", "capacity", "use")
        for u in doc["usage"]:
            cap = u["capacity_slots"]
            t.add_row(
                u["pool"],
                u["node"] or "-",
                u["tier"],
                str(u["devices"]),
                f"{u['used_slots']:.3f}",
                f"{cap:.3f}",
                f"{u['used_slots'] / cap:.0%}" if cap else "-",
            )
        console.print(t)
    for x in doc.get("infeasible", []):
        console.print(
            f"[red]{x['device']}[/red] ({x['deployment']}): {x['binding']}: {x['reason']}", highlight=False
        )
    for x in doc.get("skipped", []):
        console.print(f"[yellow]{x['device']}[/yellow]: not applied: {x['reason']}", highlight=False)


def explain(doc: dict[str, Any], device_id: str, console: Console) -> bool:
    d = next((x for x in doc.get("devices", []) if x["device"] == device_id), None)
    if d is None:
        why = next((x for x in doc.get("infeasible", []) if x["device"] == device_id), None)
        why = why or next((x for x in doc.get("unplanned", []) if x["device"] == device_id), None)
        if why is None:
            return False
        console.print(f"{device_id}: {why['reason']}", highlight=False)
        return True
    p = d["predicted"]
    console.print(
        f"[bold]{device_id}[/bold] ({d['deployment']}, model {d['model']}): {d['reason']}", highlight=False
    )
    t = Table("segment", "tier", "where", "precision", "compute ms", "queue ms", "slots")
    for s in d["segments"]:
        t.add_row(
            f"{s['start_cut'] or 'inputs'}..{s['end_cut'] or 'outputs'}",
            s["tier"],
            s["where"],
            s["precision"],
            f"{s['compute_ms']:.2f}",
            f"{s['queue_ms']:.2f}",
            f"{s['slots']:.4f}",
        )
    console.print(t)
    for h in d["hops"]:
        console.print(
            f"hop {h['from']} -> {h['to']}: {h['bytes_per_request']} bytes, {h['transfer_ms']:.2f} ms"
        )
    console.print(
        f"predicted {p['latency_ms']:.2f} ms (compute {p['compute_ms']:.2f}, queue {p['queue_ms']:.2f}, transfer "
        f"{p['transfer_ms']:.2f}{_overhead(p)}) vs SLO {d['slo_ms']:g} ms; accuracy {p['accuracy']:.4f} vs floor "
        f"{d['min_accuracy']:g}; memory {_size(d['memory_bytes'])} of {_size(d['memory_limit_bytes'])}; "
        f"fallback {d['fallback'] or 'none'}",
        highlight=False,
    )
    alts = d.get("alternatives", [])
    if alts:
        t = Table("alternative", "cuts", "precisions", "latency ms", "accuracy", "why not")
        for a in alts:
            t.add_row(
                a["pattern"],
                ",".join(map(str, a["cuts"])) or "-",
                ",".join(a["precisions"]),
                f"{a['latency_ms']:.1f}",
                f"{a['accuracy']:.4f}",
                a["why_not"],
            )
        console.print(t)
    return True


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def policy_diff_lines(doc: dict[str, Any]) -> list[str]:
    out = [f"+ {x['kind']}/{x['name']}" for x in doc.get("added", [])]
    out += [f"- {x['kind']}/{x['name']}" for x in doc.get("removed", [])]
    for c in doc.get("changed", []):
        out.append(f"~ {c['kind']}/{c['name']}")
        out += [f"    {f['path']}: {f['old']!r} -> {f['new']!r}" for f in c["fields"]]
    return out


def changes_table(changes: Sequence[AssignmentChange]) -> Table:
    t = Table("device", "now", "after")
    for c in changes[:MAX_TABLE_ROWS]:
        t.add_row(c.device_id, escape(c.before), escape(c.after))  # "[...]" is text, not markup
    return t


def changes_doc(changes: Sequence[AssignmentChange]) -> list[dict[str, str]]:
    return [{"device": c.device_id, "before": c.before, "after": c.after} for c in changes]


def apply_doc(a: PolicyApply) -> dict[str, Any]:
    return {
        "id": a.id,
        "applied_at": _when(a.applied_at_ms),
        "applied_at_ms": a.applied_at_ms,
        "applied_by": a.applied_by,
        "git_commit": a.git_commit,
        "git_dirty": a.git_dirty,
        "source": a.source,
        "digest": a.digest,
        "documents": a.documents,
        "devices_changed": a.devices_changed,
        "message": a.message,
    }


def history_table(applies: Sequence[PolicyApply]) -> Table:
    t = Table("apply", "when (UTC)", "by", "commit", "source", "digest", "docs", "devices changed", "message")
    for a in applies:
        commit = (a.git_commit[:12] or "-") + (" (dirty)" if a.git_dirty else "")
        t.add_row(
            str(a.id),
            _when(a.applied_at_ms),
            a.applied_by or "-",
            commit,
            a.source or "-",
            a.digest[:12],
            str(a.documents),
            str(a.devices_changed),
            a.message or "",
        )
    return t


def _overhead(predicted: dict[str, Any]) -> str:
    ms = predicted.get("overhead_ms", 0.0)
    return f", on the device around its segment {ms:.2f}" if ms else ""
