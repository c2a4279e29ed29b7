"""A simulator run's report: JSON for machines, one self-contained HTML page, a terminal summary.

The engines compute everything and hand over a plain JSON-able dict shaped as ``SCHEMA``; this
module only checks that shape and presents it, so the three renderings can never disagree. Both
files are written atomically: a run that dies while reporting leaves the previous report, never
half of a new one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: A leaf is a type (or a tuple of accepted types); a dict is an object with these keys; a
#: one-element list is an array whose every item has that shape.
Spec: TypeAlias = type | tuple[type, ...] | dict[str, "Spec"] | list["Spec"]

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))

ENGINES = ("virtual", "realtime")
_RECORDS = ("produced", "delivered", "dropped", "duplicated", "lost")
_SERIES = ("t_s", "connected", "converged", "answered", "degraded", "failed")
SCHEMA: dict[str, Spec] = {
    "scenario": str,
    "engine": str,
    "seed": int,
    "devices": int,
    "duration_s": _NUM,
    "wall_s": _NUM,
    "converged_s": _OPT_NUM,
    "events": [{"at_s": _NUM, "kind": str, "detail": str, "converged_s": _OPT_NUM}],
    "availability": {"answered": int, "degraded": int, "failed": int},
    "records": {k: int for k in _RECORDS},
    "slo": {"requests": int, "attainment": _NUM},
    "groups": [
        {"group": str, "hardware_class": str, "devices": int, "requests": int, "p50_ms": _NUM,
         "p95_ms": _NUM, "predicted_ms": _NUM, "slo_ms": _NUM, "attainment": _NUM, "degraded": int,
         "failed": int}
    ],
    "controller": {k: _NUM for k in ("cpu_s", "cpu_percent", "rss_mb_peak", "messages_per_s")},
    "timeseries": {k: [_NUM] for k in _SERIES},
    "assertions": [{"name": str, "passed": bool, "detail": str}],
    "passed": bool,
}  # fmt: skip
REQUIRED_KEYS = frozenset(SCHEMA)

_NO_MATPLOTLIB = "the HTML report needs matplotlib: pip install 'edgefleet[sim]'"


def validate(report: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first missing or ill-typed key (``groups[0].p50_ms``)."""
    _check(report, SCHEMA, "")
    if report["engine"] not in ENGINES:
        raise ValueError(f"report key 'engine': {report['engine']!r} is not one of {', '.join(ENGINES)}")
    series = report["timeseries"]
    for key in _SERIES:  # the plots pair every series with t_s point by point
        if len(series[key]) != len(series["t_s"]):
            raise ValueError(
                f"report key 'timeseries.{key}': {len(series[key])} points, t_s has {len(series['t_s'])}"
            )


def _check(value: Any, spec: Spec, where: str) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"report key '{where or '.'}': expected an object, got {type(value).__name__}")
        for key, sub in spec.items():
            path = f"{where}.{key}" if where else key
            if key not in value:
                raise ValueError(f"report key '{path}' is missing")
            _check(value[key], sub, path)
    elif isinstance(spec, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"report key '{where}': expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]")
    else:
        types = spec if isinstance(spec, tuple) else (spec,)
        # bool is an int to isinstance, but True where a count belongs is a bug upstream
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"report key '{where}': expected {wanted}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"report key '{where}': {value} is not a finite number (JSON has none)")


# --- JSON ---------------------------------------------------------------------------------------------


def to_json(report: Mapping[str, Any]) -> str:
    """The report as JSON text: sorted keys, so the same run gives the same bytes."""
    validate(report)
    return json.dumps(dict(report), sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_json(report: Mapping[str, Any], path: Path) -> None:
    # Serialised in full before the file is opened: a value json cannot encode fails with no file.
    atomic_write(path, to_json(report).encode())


# --- shared rows --------------------------------------------------------------------------------------


def _n(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value:,.1f}{unit}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _converged(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _sections(report: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    avail, rec, slo, ctl = report["availability"], report["records"], report["slo"], report["controller"]
    return [
        ("Run", [("devices", _n(report["devices"])), ("simulated", _n(report["duration_s"], " s")),
                 ("wall clock", _n(report["wall_s"], " s")), ("converged", _converged(report["converged_s"]))]),
        ("Availability", [("answered", _n(avail["answered"])), ("of which degraded", _n(avail["degraded"])),
                          ("failed", _n(avail["failed"]))]),
        ("Records", [(key, _n(rec[key])) for key in _RECORDS]),
        ("SLO", [("requests", _n(slo["requests"])), ("attainment", _pct(slo["attainment"]))]),
        ("Controller", [("CPU", f"{_n(ctl['cpu_s'], ' s')} ({_n(ctl['cpu_percent'], '%')})"),
                        ("RSS peak", _n(ctl["rss_mb_peak"], " MB")), ("messages", _n(ctl["messages_per_s"], " /s"))]),
    ]  # fmt: skip


_GROUP_HEADERS = ("group", "hardware", "devices", "requests", "predicted ms", "p50 ms", "p95 ms",
                  "SLO ms", "attainment", "degraded", "failed")  # fmt: skip
_EVENT_HEADERS = ("at", "event", "detail", "converged")


def _group_rows(report: Mapping[str, Any]) -> list[list[str]]:
    return [
        [g["group"], g["hardware_class"], _n(g["devices"]), _n(g["requests"]), _n(g["predicted_ms"]),
         _n(g["p50_ms"]), _n(g["p95_ms"]), _n(g["slo_ms"]), _pct(g["attainment"]), _n(g["degraded"]),
         _n(g["failed"])]
        for g in report["groups"]
    ]  # fmt: skip


def _event_rows(report: Mapping[str, Any]) -> list[list[str]]:
    return [
        [_n(e["at_s"], " s"), e["kind"], e["detail"], _converged(e["converged_s"])] for e in report["events"]
    ]


# --- HTML ---------------------------------------------------------------------------------------------

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.4em 0 1.4em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f2f2f2}tr.pass td{background:#e6f4ea}tr.fail td{background:#fce8e6}
.pass b,b.pass{color:#137333}.fail b,b.fail{color:#c5221f}.row{display:flex;flex-wrap:wrap;gap:2em}
img{max-width:100%}"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        attr = f' class="{classes[i]}"' if i < len(classes) else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page as a string: inline CSS and PNGs, nothing fetched from anywhere."""
    validate(report)
    plots = _plots(report)  # first, so a missing matplotlib fails before any work is wasted
    esc = html.escape
    verdict, word = ("pass", "PASSED") if report["passed"] else ("fail", "FAILED")
    checks = report["assertions"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fleet-sim: {esc(report['scenario'])}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(report['scenario'])} <b class='{verdict}'>{word}</b></h1>",
        f"<p>engine <b>{esc(report['engine'])}</b> · seed {esc(str(report['seed']))} · "
        f"{esc(_n(report['devices']))} devices · {esc(_n(report['duration_s'], ' s'))} simulated in "
        f"{esc(_n(report['wall_s'], ' s'))} wall clock · converged: {esc(_converged(report['converged_s']))}</p>",
        "<h2>Assertions</h2>",
        _table(
            ("", "assertion", "detail"),
            [("✓" if a["passed"] else "✗", a["name"], a["detail"]) for a in checks],
            ["pass" if a["passed"] else "fail" for a in checks],
        ),
        "<div class='row'>",
        *(f"<div><h2>{esc(title)}</h2>{_table(('', ''), rows)}</div>" for title, rows in _sections(report)),
        "</div><h2>Events</h2>",
        _table(_EVENT_HEADERS, _event_rows(report)),
        "<h2>Latency per group: predicted by the planner vs simulated</h2>",
        _table(_GROUP_HEADERS, _group_rows(report)),
        "<h2>Plots</h2>",
        *(f'<p><img src="data:image/png;base64,{png}" alt="{esc(alt)}"></p>' for alt, png in plots),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_html(report: Mapping[str, Any], path: Path) -> None:
    atomic_write(path, render_html(report).encode())


def _plots(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError(_NO_MATPLOTLIB) from exc

    out: list[tuple[str, str]] = []

    def axes(title: str, ylabel: str, xlabel: str = "simulated time (s)") -> tuple[Figure, Axes]:
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        # A bare Figure on its own Agg canvas never enters pyplot's global registry, so there is
        # nothing to close and nothing to leak, and the process-wide backend is left alone.
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        return fig, ax

    def save(fig: Figure, ax: Axes, alt: str) -> None:
        ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        out.append((alt, base64.b64encode(buf.getvalue()).decode("ascii")))

    series = report["timeseries"]
    t = series["t_s"]
    fig, ax = axes("Devices connected and converged", "devices")
    ax.plot(t, series["connected"], label="connected")
    ax.plot(t, series["converged"], label="converged (plan acked)")
    for event in report["events"]:
        ax.axvline(event["at_s"], color="grey", linestyle=":", linewidth=1)
        # parse_math off: a '$' in a report string must not be read as TeX
        ax.text(event["at_s"], 0.98, event["kind"], transform=ax.get_xaxis_transform(), rotation=90,
                ha="right", va="top", fontsize=8, parse_math=False)  # fmt: skip
    save(fig, ax, "connected and converged devices over time")

    fig, ax = axes("Requests", "requests (cumulative)")
    for key in ("answered", "degraded", "failed"):
        ax.plot(t, series[key], label=key)
    save(fig, ax, "cumulative answered, degraded and failed requests")

    groups = report["groups"]
    xs = range(len(groups))
    fig, ax = axes("Latency per group: predicted vs simulated", "latency (ms)", xlabel="group")
    for i, (key, label) in enumerate((("predicted_ms", "predicted"), ("p50_ms", "simulated p50"),
                                      ("p95_ms", "simulated p95"))):  # fmt: skip
        ax.bar([x + (i - 1) * 0.27 for x in xs], [g[key] for g in groups], 0.27, label=label)
    if groups:
        ax.hlines([g["slo_ms"] for g in groups], [x - 0.45 for x in xs], [x + 0.45 for x in xs],
                  colors="black", linestyles="dashed", label="SLO")  # fmt: skip
    ax.set_xticks(list(xs), [g["group"] for g in groups], parse_math=False)
    save(fig, ax, "latency per group, predicted vs simulated")
    return out


# --- terminal -----------------------------------------------------------------------------------------


def summary_table(report: Mapping[str, Any]) -> Table:
    """The run's numbers, one section per area. Every report string goes in as ``Text``, so a
    scenario called ``[red]x`` is shown as written rather than read as rich markup."""
    validate(report)
    title = Text(f"fleet-sim {report['scenario']} · {report['engine']} · seed {report['seed']}")
    table = Table(title=title, show_header=False)
    table.add_column("area", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for area, rows in _sections(report):
        for i, (label, value) in enumerate(rows):
            table.add_row(area if i == 0 else "", label, Text(value))
        table.add_section()
    for at, kind, detail, converged in _event_rows(report):
        table.add_row("Event", Text(f"{kind} at {at}"), Text(f"{detail}; converged {converged}"))
    return table


def groups_table(report: Mapping[str, Any]) -> Table:
    validate(report)
    table = Table(*_GROUP_HEADERS, title="Latency per group (predicted vs simulated)")
    for row in _group_rows(report):
        table.add_row(*(Text(cell) for cell in row))
    return table


def assertions_table(report: Mapping[str, Any]) -> Table:
    validate(report)
    table = Table("", "assertion", "detail", title="Assertions")
    for a in report["assertions"]:
        mark = Text("✓", style="green") if a["passed"] else Text("✗", style="bold red")
        table.add_row(mark, Text(a["name"]), Text(a["detail"]))
    return table


def render_summary(report: Mapping[str, Any], console: Console) -> None:
    """Print the summary, per-group latency and assertions tables, then the verdict."""
    console.print(summary_table(report))
    console.print(groups_table(report))
    console.print(assertions_table(report))
    console.print(
        Text("PASSED", style="bold green") if report["passed"] else Text("FAILED", style="bold red")
    )
