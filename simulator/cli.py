"""fleet-sim: run a scenario across thousands of virtual devices through the real agent core and
the real controller, and report what happened.

    fleet-sim run simulator/scenarios/quickstart.yaml --engine virtual --report out.json --html out.html
    fleet-sim validate simulator/scenarios/city-10k.yaml

Exit status: 0 when every assertion held, 1 when one failed, 2 for bad input.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.errors import EdgefleetError
from common.logs import configure_logging
from simulator import report as report_mod
from simulator import vclock
from simulator.hosts import ControllerHost, RealtimeHost, VirtualHost
from simulator.prepare import copy_for_run, prepared_data_dir
from simulator.run import run_scenario
from simulator.scenario import Scenario, load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
DEFAULT_CACHE = Path(".cache/sim")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, markup=False)
    raise typer.Exit(2)


def _load(path: Path, devices: int | None, seed: int | None) -> Scenario:
    try:
        scenario = load_scenario(path).scaled(devices)
    except EdgefleetError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    if seed is not None:
        scenario = scenario.model_copy(update={"seed": seed})
    return scenario


@app.command()
def validate(scenario: Annotated[Path, typer.Argument(help="A scenario YAML file.")]) -> None:
    """Check a scenario file (and the policy files it applies) without running it."""
    sc = _load(scenario, None, None)
    console.print(
        f"{scenario}: ok ({sc.device_count} devices, {len(sc.timeline)} events, {len(sc.assertions)} assertions)"
    )


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="A scenario YAML file.")],
    devices: Annotated[
        int | None, typer.Option(min=1, help="Scale the fleet to about this many devices.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="realtime (a controller process, gRPC) or virtual (virtual time).")
    ] = "virtual",
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the report as JSON here.")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write the report as an HTML page here.")
    ] = None,
    cache: Annotated[
        Path, typer.Option(help="Where prepared controller data (the imported model) is kept.")
    ] = DEFAULT_CACHE,
    # Thousands of devices each logging a lost link would bury the summary: errors only by default.
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "error",
) -> None:
    """Run a scenario and print its summary; non-zero exit when an assertion fails."""
    if engine not in ("realtime", "virtual"):
        _fail(f"--engine {engine!r}: use realtime or virtual")
    if engine == "virtual" and os.environ.get("PYTHONHASHSEED") != "0":
        # Set iteration order follows string hashes: pin them, or the same seed could take another path.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "simulator.cli", *sys.argv[1:]])
    configure_logging(log_level, "text")
    sc = _load(scenario, devices, seed)
    if any(e.kind == "restart_broker" for e in sc.timeline) and (engine, sc.controller.transport) != (
        "realtime",
        "mqtt",
    ):
        _fail(
            "restart_broker needs --engine realtime and controller.transport: mqtt (the virtual engine has no broker)"
        )
    try:
        prepared = prepared_data_dir(sc.model, scenario_dir=scenario.parent, cache=cache)
    except EdgefleetError as exc:
        _fail(str(exc))
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        data_dir = copy_for_run(prepared, Path(tmp))
        result = _run(sc, engine, data_dir, scenario.parent)
    report_mod.render_summary(result, Console())
    for path in (report, html):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if report is not None:
        report_mod.write_json(result, report)
        console.print(f"report written to {report}")
    if html is not None:
        report_mod.write_html(result, html)
        console.print(f"HTML report written to {html}")
    raise typer.Exit(0 if result["passed"] else 1)


def _run(sc: Scenario, engine: str, data_dir: Path, base: Path) -> dict[str, Any]:
    c = sc.controller
    host: ControllerHost
    if engine == "virtual":
        host = VirtualHost(
            data_dir,
            heartbeat_s=c.heartbeat_interval,
            reconcile_s=c.reconcile_interval,
            replan_every_s=c.replan_every,
        )
    else:
        host = RealtimeHost(
            data_dir,
            heartbeat_s=c.heartbeat_interval,
            reconcile_s=c.reconcile_interval,
            channels=c.channels,
            transport=c.transport,
        )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{sc.name} ({engine})", total=sc.duration, status="starting")

        def progress(sample: dict[str, Any]) -> None:
            status = (
                f"t={sample['t_s']:.0f}s connected {sample['connected']}/{sample['devices']} "
                f"converged {sample['converged']} answered {sample['answered']} degraded {sample['degraded']}"
            )
            bar.update(task, completed=min(sc.duration, sample["t_s"]), status=status)
            if not console.is_terminal:  # a log (CI, a file): a plain line per sample instead of the bar
                console.print(status, highlight=False, markup=False)

        # Realtime: each check lists the whole fleet over the admin API, so not every second.
        poll_s = 1.0 if engine == "virtual" else 5.0
        coro = run_scenario(sc, host, base=base, engine=engine, progress=progress, poll_s=poll_s)
        if engine == "virtual":
            return vclock.run(coro)  # type: ignore[no-any-return]
        return asyncio.run(coro)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
