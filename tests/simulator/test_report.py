"""fleet-sim's report rendering (``simulator.report``): schema checks, atomic JSON and HTML, the summary."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from simulator import report as rep

SAMPLE: dict[str, Any] = {
    "scenario": "city-10k",
    "engine": "virtual",
    "seed": 1,
    "devices": 10000,
    "duration_s": 600.0,
    "wall_s": 123.4,
    "converged_s": 42.0,
    "events": [
        {"at_s": 60.0, "kind": "cut_links", "detail": "30% of phones for 300s", "converged_s": 12.0},
        {"at_s": 400.0, "kind": "controller_restart", "detail": "SIGKILL", "converged_s": None},
    ],
    "availability": {"answered": 123, "degraded": 10, "failed": 2},
    "records": {"produced": 133, "delivered": 131, "dropped": 1, "duplicated": 0, "lost": 1},
    "slo": {"requests": 123, "attainment": 0.97},
    "groups": [
        {
            "group": "phones",
            "hardware_class": "phone-cpu",
            "devices": 9000,
            "requests": 100,
            "p50_ms": 3.1,
            "p95_ms": 7.0,
            "predicted_ms": 6.5,
            "slo_ms": 20.0,
            "attainment": 0.99,
            "degraded": 5,
            "failed": 0,
        },
        {
            "group": "edge",
            "hardware_class": "edge-npu",
            "devices": 1000,
            "requests": 23,
            "p50_ms": 11.2,
            "p95_ms": 18.4,
            "predicted_ms": 9.9,
            "slo_ms": 15.0,
            "attainment": 0.87,
            "degraded": 5,
            "failed": 2,
        },
    ],
    "controller": {"cpu_s": 12.0, "cpu_percent": 35.0, "rss_mb_peak": 210.0, "messages_per_s": 900.0},
    "timeseries": {
        "t_s": [0, 5, 10],
        "connected": [0, 10, 20],
        "converged": [0, 5, 20],
        "answered": [0, 3, 9],
        "degraded": [0, 0, 1],
        "failed": [0, 0, 0],
    },
    "assertions": [
        {"name": "converged_within 120s", "passed": True, "detail": "converged in 42.0s"},
        {"name": "p95 < 20ms & no loss", "passed": True, "detail": "p95 18.4ms, 0 lost"},
    ],
    "passed": True,
}


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def sample(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SAMPLE)
    out.update(changes)
    return out


# --- validate -----------------------------------------------------------------------------------------


def test_the_sample_and_a_never_converged_run_are_valid() -> None:
    rep.validate(sample())
    empty = sample(converged_s=None, events=[], groups=[], assertions=[])
    empty["timeseries"] = {key: [] for key in SAMPLE["timeseries"]}
    rep.validate(empty)
    assert {"scenario", "timeseries", "passed"} <= rep.REQUIRED_KEYS


@pytest.mark.parametrize(
    "path",
    [
        ("scenario",),
        ("passed",),
        ("slo", "attainment"),
        ("groups", 1, "p95_ms"),
        ("timeseries", "t_s"),
        ("events", 0, "converged_s"),
    ],
)
def test_validate_names_a_missing_key(path: tuple[Any, ...]) -> None:
    report = sample()
    parent: Any = report
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    name = ".".join(str(p) for p in path).replace(".0.", "[0].").replace(".1.", "[1].")
    with pytest.raises(ValueError, match=re.escape(f"'{name}' is missing")):
        rep.validate(report)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda r: r.update(devices="10000"), "devices"),
        (lambda r: r.update(devices=True), "devices"),  # a bool is no count
        (lambda r: r.update(passed=1), "passed"),
        (lambda r: r.update(converged_s="42"), "converged_s"),
        (lambda r: r.update(groups={"phones": {}}), "groups"),
        (lambda r: r["groups"][1].update(p50_ms=None), "groups[1].p50_ms"),
        (lambda r: r["slo"].update(attainment=float("nan")), "slo.attainment"),
        (lambda r: r["timeseries"]["answered"].append("9"), "timeseries.answered[3]"),
        (lambda r: r["timeseries"]["connected"].append(30), "timeseries.connected"),  # not as long as t_s
        (lambda r: r.update(records=[]), "records"),
        (lambda r: r.update(engine="turbo"), "engine"),
    ],
)
def test_validate_names_an_ill_typed_key(change: Any, name: str) -> None:
    report = sample()
    change(report)
    with pytest.raises(ValueError, match=re.escape(f"report key '{name}'")):
        rep.validate(report)


# --- JSON ---------------------------------------------------------------------------------------------


def test_write_json_round_trips_and_is_deterministic(tmp_path: Path) -> None:
    rep.write_json(sample(), tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == SAMPLE
    reordered = dict(reversed(list(sample().items())))  # same content, other insertion order
    rep.write_json(reordered, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    rep.write_json(sample(), tmp_path / "a.json")  # over an existing report
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


@pytest.mark.parametrize("writer", [rep.write_json, rep.write_html])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_write_leaves_no_file_and_the_old_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: Any, existing: bool
) -> None:
    if writer is rep.write_html:
        pytest.importorskip("matplotlib", reason="needs the 'sim' extra (matplotlib)")
    path = tmp_path / "report.out"
    if existing:
        path.write_text("the previous run")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # after the temp file is written, before the rename
    with pytest.raises(OSError, match="No space left"):
        writer(sample(), path)
    assert names(tmp_path) == (["report.out"] if existing else [])
    if existing:
        assert path.read_text() == "the previous run"


def test_an_unserialisable_or_invalid_report_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        rep.write_json(sample(extra=object()), tmp_path / "r.json")  # unknown keys pass validate
    with pytest.raises(ValueError, match="'seed'"):
        rep.write_json(sample(seed="1"), tmp_path / "r.json")
    assert names(tmp_path) == []


# --- HTML ---------------------------------------------------------------------------------------------

IMG = '<img src="data:image/png;base64,'


@pytest.fixture
def mpl() -> None:
    pytest.importorskip("matplotlib", reason="needs the 'sim' extra (matplotlib)")


@pytest.mark.usefixtures("mpl")
def test_write_html_is_one_escaped_self_contained_page(tmp_path: Path) -> None:
    from matplotlib import pyplot

    figures = pyplot.get_fignums()
    report = sample(scenario="<script>alert('x')</script>")
    report["events"][0]["detail"] = "cut <b>all</b> & $x$"
    rep.write_html(report, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")

    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "cut &lt;b&gt;all&lt;/b&gt; &amp; $x$" in page
    assert "converged_within 120s" in page and "p95 &lt; 20ms &amp; no loss" in page
    assert page.count(IMG) == 3
    for png in re.findall(r'base64,([^"]+)"', page):
        assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page
    for number in ("10,000", "123.4 s", "42.0 s", "97.0%", "6.5", "18.4", "210.0 MB", "PASSED"):
        assert number in page, number
    assert pyplot.get_fignums() == figures  # no figure left open in pyplot's registry


@pytest.mark.usefixtures("mpl")
def test_write_html_of_an_empty_failed_run(tmp_path: Path) -> None:
    report = sample(converged_s=None, events=[], groups=[], passed=False)
    report["timeseries"] = {key: [] for key in SAMPLE["timeseries"]}
    report["assertions"][0].update(passed=False, detail="never converged")
    rep.write_html(report, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count(IMG) == 3
    assert "FAILED" in page and '<tr class="fail"><td>✗</td><td>converged_within 120s' in page
    assert "never" in page


def test_write_html_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(RuntimeError, match=re.escape("pip install 'edgefleet[sim]'")):
        rep.write_html(sample(), tmp_path / "r.html")
    assert names(tmp_path) == []


# --- terminal -----------------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    console = Console(record=True, width=120)
    rep.render_summary(report, console)
    return console.export_text()


def test_the_summary_shows_the_numbers() -> None:
    text = render(sample())
    for number in ("10,000", "42.0 s", "123", "133", "97.0%", "35.0%", "210.0 MB", "900.0 /s"):
        assert number in text, number
    phones = next(line for line in text.splitlines() if line.startswith("│ phones "))
    for cell in ("phone-cpu", "9,000", "6.5", "3.1", "7.0", "20.0", "99.0%"):
        assert cell in phones, cell
    assert "cut_links at 60.0 s" in text and "converged never" in text
    assert "✓" in text and "✗" not in text and text.rstrip().endswith("PASSED")


def test_the_summary_marks_failures_and_prints_report_strings_verbatim() -> None:
    report = sample(scenario="[red]city[/red]", converged_s=None, passed=False)
    report["assertions"][1].update(passed=False, name="[bold]p95[/bold]")
    text = render(report)
    assert "[red]city[/red]" in text and "[bold]p95[/bold]" in text  # shown, not read as markup
    assert "✗" in text and text.rstrip().endswith("FAILED")
    assert "never" in next(line for line in text.splitlines() if "converged" in line)


def test_summary_table_validates_first() -> None:
    table = rep.summary_table(sample())
    assert table.row_count > 10
    with pytest.raises(ValueError, match="'devices' is missing"):
        rep.summary_table({k: v for k, v in SAMPLE.items() if k != "devices"})
