"""fleet-sim end to end: the bundled quickstart with a few dozen devices (virtual time and a real
controller process), every kind of timeline event, an assertion that fails the run, the same seed
giving the same report, and bad scenario files.

Runs go through the real command (``python -m simulator.cli``), as an operator would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulator.broker import available as mosquitto_available
from simulator.prepare import prepared_data_dir
from simulator.scenario import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulator" / "scenarios"
POLICIES = SCENARIOS / "policies"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared controller data (digits imported by a real controller), shared by the module's runs."""
    root = tmp_path_factory.mktemp("sim-cache")
    prepared_data_dir(ModelSpec(name="digits"), scenario_dir=SCENARIOS, cache=root)
    return root


def fleet_sim(*args: str, cache: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    options = ["--cache", str(cache)] if args[0] == "run" else []
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", *args, *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def run_report(
    scenario: Path, tmp_path: Path, cache: Path, *extra: str, name: str = "report"
) -> tuple[int, dict[str, Any]]:
    out = tmp_path / f"{name}.json"
    proc = fleet_sim("run", str(scenario), "--report", str(out), *extra, cache=cache)
    assert out.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


def write_scenario(tmp_path: Path, body: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body.replace("POLICIES", str(POLICIES)))
    return path


FLEET = """\
model: {name: digits, source: digits}
controller: {heartbeat_interval: 5s}
fleet:
  - name: phones
    hardware_class: phone-cpu
    count: 20
    request_rate: 1
    links:
      - {pool: eu-edge, bandwidth_mbps: {median: 20, sigma: 0.3}, rtt_ms: {median: 15, sigma: 0.3}}
      - {pool: gpu, bandwidth_mbps: 20, rtt_ms: 60}
  - {name: edge, hardware_class: edge-npu, count: 2, scale: false}
  - {name: cloud, hardware_class: cloud-gpu, count: 1, scale: false}
"""


def test_quickstart_with_a_few_dozen_devices_meets_its_assertions(tmp_path: Path, cache: Path) -> None:
    code, report = run_report(
        SCENARIOS / "quickstart.yaml", tmp_path, cache, "--devices", "36", "--html", str(tmp_path / "q.html")
    )
    assert code == 0, report["assertions"]
    assert report["devices"] == 36 and report["engine"] == "virtual"
    assert [a["passed"] for a in report["assertions"]] == [True] * 6
    rec = report["records"]
    # Every record the devices made reached the controller exactly once, through the link cut.
    assert rec["produced"] > 1000 and rec["delivered"] == rec["produced"]
    assert rec["lost"] == rec["duplicated"] == rec["dropped"] == 0
    # The cut phones answered from their fallback; the partitioned plan was really in use.
    av = report["availability"]
    assert av["degraded"] > 0 and av["answered"] > av["degraded"] * 5
    phones = next(g for g in report["groups"] if g["group"] == "phones")
    assert phones["slo_ms"] == 60.0 and phones["predicted_ms"] < phones["slo_ms"]
    # 5% of the phones timed their own compute with onnxruntime (scaled by their class).
    assert 0 < phones["real_requests"] < phones["requests"] / 2
    assert report["converged_s"] is not None
    assert {e["kind"] for e in report["events"]} == {"apply", "cut_links"}
    html = (tmp_path / "q.html").read_text()
    assert "quickstart" in html and html.count("data:image/png;base64,") == 3


def test_every_kind_of_event_and_the_fleet_recovers_from_each(tmp_path: Path, cache: Path) -> None:
    scenario = write_scenario(
        tmp_path,
        f"""\
name: every-event
seed: 3
duration: 8m
{FLEET}
timeline:
  - {{at: 5s, apply: POLICIES/partition}}
  - {{at: 40s, blackhole: {{group: phones, percent: 50, for: 30s}}}}
  - {{at: 120s, restart_controller: {{down_for: 20s}}}}
  - {{at: 200s, drop_bandwidth: {{group: phones, percent: 100, factor: 0.1, for: 40s}}}}
  - {{at: 260s, join: {{group: phones, count: 5}}}}
  - {{at: 300s, leave: {{group: phones, count: 3}}}}
  - {{at: 330s, reboot: {{group: phones, percent: 50, for: 40s}}}}
assertions:
  - records_lost_max: 0
  - records_duplicated_max: 0
  - all_connected: true
""",
    )
    code, report = run_report(scenario, tmp_path, cache)
    assert code == 0, report["assertions"]
    assert report["controller_restarts"] == 1
    assert report["devices"] == 23 + 5  # the joined ones are counted; the 3 that left stay on record
    events = {e["kind"]: e for e in report["events"]}
    assert set(events) == {
        "apply",
        "blackhole",
        "restart_controller",
        "drop_bandwidth",
        "join",
        "leave",
        "reboot",
    }
    # The black-holed devices noticed by themselves (nothing told them: no error, no close) and
    # served from their fallback meanwhile; after each fault the whole fleet was back.
    assert report["availability"]["degraded"] > 0
    assert all(e["converged_s"] is not None for e in events.values()), events
    assert report["records"]["produced"] == report["records"]["delivered"]
    # Rebooted while offline, the phones served their last model from what they had kept: requests
    # fail only before the first apply (20 phones x 1/s x 5 s); 40 s of 11 phones without a model
    # would add about 440.
    assert report["availability"]["failed"] < 200, report["availability"]


def test_a_failed_assertion_fails_the_run(tmp_path: Path, cache: Path) -> None:
    scenario = write_scenario(
        tmp_path,
        f"""\
name: must-fail
duration: 90s
{FLEET}
timeline:
  - {{at: 5s, apply: POLICIES/partition}}
  - {{at: 30s, cut_links: {{group: phones, percent: 50, for: 20s}}}}
assertions:
  - records_lost_max: 0
  - degraded_max: 0
""",
    )
    code, report = run_report(scenario, tmp_path, cache)
    assert code == 1
    assert report["passed"] is False
    held, failed = report["assertions"]
    assert held["passed"] is True
    assert failed == {**failed, "name": "degraded <= 0", "passed": False}
    assert report["availability"]["degraded"] > 0


def test_the_same_seed_gives_the_same_report_and_another_seed_does_not(tmp_path: Path, cache: Path) -> None:
    # Without the devices that time real onnxruntime runs (real timings never repeat exactly).
    text = (SCENARIOS / "quickstart.yaml").read_text().replace("policies/", f"{POLICIES}/")
    quickstart = write_scenario(tmp_path, text.replace("real_fraction: 0.05", "real_fraction: 0"))
    assert "real_fraction: 0}" in quickstart.read_text()
    runs = [run_report(quickstart, tmp_path, cache, "--devices", "30", "--seed", seed, name=f"r{i}")[1]
            for i, seed in enumerate(("5", "5", "6"))]  # fmt: skip

    def stable(report: dict[str, Any]) -> dict[str, Any]:
        # What depends on the host, not the simulation: the run's wall time and its CPU and memory.
        return {k: v for k, v in report.items() if k not in ("wall_s", "controller")}

    assert stable(runs[0]) == stable(runs[1])
    assert runs[0]["controller"]["messages_per_s"] == runs[1]["controller"]["messages_per_s"]
    assert stable(runs[0]) != stable(runs[2])


def test_realtime_and_virtual_engines_agree_on_the_same_scenario(tmp_path: Path, cache: Path) -> None:
    """The realtime engine runs a real controller process over gRPC; the virtual one the same code on
    a virtual clock. On one small scenario they must tell the same story. The run goes on for 34 s
    after the cut: a phone's reconnect backoff (full jitter, capped at 30 s) may wait that long."""
    scenario = write_scenario(
        tmp_path,
        f"""\
name: both-engines
seed: 2
duration: 50s
{FLEET}
timeline:
  - {{at: 3s, apply: POLICIES/partition}}
  - {{at: 12s, cut_links: {{group: phones, percent: 50, for: 4s}}}}
assertions:
  - converged_within: 20s
  - records_lost_max: 0
  - records_duplicated_max: 0
""",
    )
    code, real = run_report(scenario, tmp_path, cache, "--engine", "realtime", name="realtime")
    assert code == 0, real["assertions"]
    code, virtual = run_report(scenario, tmp_path, cache, "--engine", "virtual", name="virtual")
    assert code == 0, virtual["assertions"]
    assert real["engine"] == "realtime" and real["devices"] == virtual["devices"] == 23
    # Measured off the controller process, not this one.
    assert real["controller"]["cpu_s"] > 0 and real["controller"]["rss_mb_peak"] > 20
    for report in (real, virtual):
        rec = report["records"]
        assert rec["produced"] > 100 and rec["delivered"] == rec["produced"]
        assert [e["kind"] for e in report["events"]] == ["apply", "cut_links"]
        assert all(e["converged_s"] is not None for e in report["events"])
    rp, vp = (next(g for g in r["groups"] if g["group"] == "phones") for r in (real, virtual))
    # The same plan (same profiles, same links from the seed), so the same prediction ...
    assert rp["predicted_ms"] == pytest.approx(vp["predicted_ms"], rel=0.01)
    # ... and simulated latencies from the same distribution.
    assert rp["p50_ms"] == pytest.approx(vp["p50_ms"], rel=0.15)
    # The same phones were cut for the same 4 s (about 40 requests each way).
    rd, vd = real["availability"]["degraded"], virtual["availability"]["degraded"]
    assert rd > 10 and vd > 10 and abs(rd - vd) <= max(15, 0.5 * max(rd, vd)), (rd, vd)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("name: x\nduration: 1m\nmodel: {name: digits}\nfleet: []\n", "fleet: must not be empty"),
        (
            "name: x\nduration: 1m\nmodel: {name: digits}\nfleet:\n  - {name: p, hardware_class: c, count: 1, rate: 2}\n",
            "scenario.yaml:5:",
        ),
        (
            "name: x\nduration: soon\nmodel: {name: digits}\nfleet:\n  - {name: p, hardware_class: c, count: 1}\n",
            "duration",
        ),
        (
            "name: x\nduration: 1m\nmodel: {name: digits}\nfleet:\n  - {name: p, hardware_class: c, count: 1}\n"
            "timeline:\n  - {at: 5s, cut_links: {group: q, for: 1s}}\n",
            "no group 'q'",
        ),
        (
            "name: x\nduration: 1m\nmodel: {name: digits}\nfleet:\n  - {name: p, hardware_class: c, count: 1}\n"
            "timeline:\n  - {at: 5s, apply: nowhere/}\n",
            "no such file",
        ),
        ("name: x\nduration: 1m\nmodel: {name: digits}\nfleet: [\n", "YAML syntax error"),
    ],
)
def test_a_bad_scenario_is_refused_with_where_and_what(
    tmp_path: Path, cache: Path, body: str, expected: str
) -> None:
    path = write_scenario(tmp_path, body)
    proc = fleet_sim("run", str(path), "--report", str(tmp_path / "r.json"), cache=cache, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_devices_flag_scales_the_scalable_groups_only(tmp_path: Path, cache: Path) -> None:
    proc = fleet_sim("validate", str(SCENARIOS / "city-10k.yaml"), cache=cache, timeout=60)
    assert proc.returncode == 0 and "10000 devices" in proc.stderr, proc.stderr
    proc = fleet_sim("run", str(SCENARIOS / "quickstart.yaml"), "--devices", "3", cache=cache, timeout=60)
    assert proc.returncode == 2 and "6 fixed devices" in proc.stderr, proc.stderr


@pytest.mark.skipif(not mosquitto_available(), reason="needs the mosquitto binary")
def test_realtime_over_mqtt_rides_out_a_broker_restart(tmp_path: Path, cache: Path) -> None:
    """Devices on MQTT through a private Mosquitto (the controller bridging it), the broker restarted
    mid-run: everyone reconnects and converges, and no record is lost or duplicated."""
    scenario = write_scenario(
        tmp_path,
        f"""\
name: mqtt-small
seed: 4
duration: 30s
{FLEET.replace("heartbeat_interval: 5s", "heartbeat_interval: 5s, transport: mqtt")}
timeline:
  - {{at: 3s, apply: POLICIES/partition}}
  - {{at: 12s, restart_broker: {{down_for: 2s}}}}
assertions:
  - converged_within: 20s
  - records_lost_max: 0
  - records_duplicated_max: 0
  - all_connected: true
""",
    )
    code, report = run_report(scenario, tmp_path, cache, "--engine", "realtime")
    assert code == 0, report["assertions"]
    events = {e["kind"]: e for e in report["events"]}
    assert events["restart_broker"]["converged_s"] is not None
    assert report["records"]["produced"] > 100


def test_a_broker_restart_needs_the_mqtt_realtime_engine(tmp_path: Path, cache: Path) -> None:
    scenario = write_scenario(
        tmp_path,
        f"name: x\nduration: 10s\n{FLEET}timeline:\n  - {{at: 3s, restart_broker: {{down_for: 1s}}}}\n",
    )
    proc = fleet_sim("run", str(scenario), cache=cache, timeout=60)
    assert proc.returncode == 2 and "restart_broker needs --engine realtime" in proc.stderr, proc.stderr


def test_an_event_that_fails_fails_the_run_and_says_why(tmp_path: Path, cache: Path) -> None:
    bad = tmp_path / "bad-policies"
    bad.mkdir()
    text = (POLICIES / "rollout" / "digits.yaml").read_text().replace("model: digits", "model: no-such-model")
    (bad / "digits.yaml").write_text(text)
    (bad / "fleet.yaml").write_text((POLICIES / "rollout" / "fleet.yaml").read_text())
    scenario = write_scenario(
        tmp_path,
        f"name: bad-apply\nduration: 20s\n{FLEET}timeline:\n  - {{at: 3s, apply: {bad}}}\n"
        "assertions:\n  - records_lost_max: 0\n",
    )
    code, report = run_report(scenario, tmp_path, cache)
    assert code == 1
    failed = report["assertions"][-1]
    assert failed["name"] == "every event ran" and failed["passed"] is False
    assert "no-such-model" in failed["detail"], failed
    assert report["events"][0]["error"]
