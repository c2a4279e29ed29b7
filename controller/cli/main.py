"""fleetctl: ``serve`` runs the controller; every other command talks to it over gRPC.

The controller address comes from ``--controller`` or ``EDGEFLEET_CONTROLLER``. Errors print one
line naming what was wrong and exit non-zero (2 for bad input, 1 for everything else).
"""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from common.cli_errors import exit_for
from common.durations import parse_duration
from common.errors import EdgefleetError, InvalidArgument, NotFound
from common.limits import DEFAULT_LATENCY_WINDOW, MAX_LATENCY_WINDOW
from common.logs import configure_logging
from common.types import ImportProgress, Model, SegmentSpec
from controller.cli import policy_cmds, render
from controller.client import AdminClient

app = typer.Typer(
    help="Operate an edgefleet controller.", no_args_is_help=True, pretty_exceptions_enable=False
)
token_app = typer.Typer(help="Bootstrap tokens for enrolling devices.", no_args_is_help=True)
models_app = typer.Typer(help="Models and their artifacts.", no_args_is_help=True)
describe_app = typer.Typer(help="Show one resource in detail.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(models_app, name="models")
app.add_typer(describe_app, name="describe")
policy_cmds.register(app)

# Pipes and CI logs get wide tables instead of ellipses.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

DEFAULT_CONTROLLER = "127.0.0.1:7443"
ControllerOpt = Annotated[
    str, typer.Option("--controller", envvar="EDGEFLEET_CONTROLLER", help="Controller address HOST:PORT.")
]


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]


def _client(controller: str) -> AdminClient:
    return AdminClient(controller or DEFAULT_CONTROLLER)


@app.command()
def serve(
    data_dir: Annotated[Path, typer.Option(help="Where the database and artifacts live.")] = Path(
        "var/controller"
    ),
    listen: Annotated[
        str, typer.Option(help="HOST:PORT for agents and fleetctl (port 0 picks a free one).")
    ] = (DEFAULT_CONTROLLER),
    heartbeat_interval: Annotated[str, typer.Option(help="How often agents send heartbeats.")] = "5s",
    mqtt: Annotated[
        str,
        typer.Option(
            help="HOST:PORT of an MQTT 5 broker: also serve agents that use --transport mqtt (off by default)."
        ),
    ] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Run the controller until SIGTERM/SIGINT (restart on the same data dir resumes everything)."""
    from controller.server import ControllerConfig
    from controller.server import serve as run_server
    from controller.service.sync import SyncPolicy

    configure_logging(log_level, log_format)
    try:
        hb_ms = parse_duration(heartbeat_interval) * 1000
        bridge = None
        if mqtt:
            from controller.api.mqtt_bridge import MqttBridgeConfig

            bridge = MqttBridgeConfig.parse(mqtt)
        config = ControllerConfig(
            data_dir=data_dir, listen=listen, policy=SyncPolicy(heartbeat_interval_ms=hb_ms), mqtt=bridge
        )
        asyncio.run(run_server(config))
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    except OSError as exc:
        err.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from None


@token_app.command("create")
def token_create(
    controller: ControllerOpt = "",
    ttl: Annotated[str, typer.Option(help="How long the token is valid: 90s, 30m, 24h, 7d.")] = "24h",
    uses: Annotated[int, typer.Option(help="How many devices may enroll with it.")] = 1,
    description: Annotated[str, typer.Option(help="A note for operators.")] = "",
    output: OutputOpt = Output.table,
) -> None:
    """Create a bootstrap token (shown once; the controller keeps only its hash)."""
    try:
        with _client(controller) as client:
            created = client.create_token(ttl_s=parse_duration(ttl), uses=uses, description=description)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    doc = render.token_doc(created)
    _show(
        doc,
        output,
        lambda: out.print(
            f"token:      {doc['token']}\ntoken id:   {doc['token_id']}\n"
            f"expires at: {doc['expires_at']}\nuses:       {doc['uses']}",
            highlight=False,
        ),
    )


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="The .onnx file.", exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Option(help="Model name (lowercase letters, digits, '.', '_', '-').")],
    variant: Annotated[str, typer.Option(help="Variant name (of a plain upload).")] = "fp32",
    eval_data: Annotated[
        Path | None,
        typer.Option(
            help="Eval data (.npz: one array per model input, optional 'labels') to build and judge variants.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    precisions: Annotated[
        str, typer.Option(help="Comma-separated precisions to build, e.g. fp32,fp16,int8,int4.")
    ] = "",
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """Upload an ONNX model; the controller validates it before storing anything, and with --precisions
    builds, measures and registers each precision that meets the acceptance floor on --eval-data."""
    wanted = tuple(p.strip() for p in precisions.split(",") if p.strip())
    if eval_data is not None and not set(wanted) - {"fp32"}:
        # Refuse before uploading what the controller would refuse after.
        raise exit_for(InvalidArgument("--eval-data is only used with --precisions naming one beyond fp32"))
    if wanted and set(wanted) - {"fp32"} and eval_data is None:
        raise exit_for(
            InvalidArgument("--precisions beyond fp32 needs --eval-data to measure them against fp32")
        )
    size = path.stat().st_size + (eval_data.stat().st_size if eval_data is not None else 0)
    try:
        with (
            _client(controller) as client,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as progress,
        ):
            upload = progress.add_task(f"uploading {path.name}", total=size, detail="")
            build: list[TaskID] = []

            def on_event(event: ImportProgress) -> None:
                if not build:
                    progress.update(upload, completed=size)
                    build.append(progress.add_task("building and profiling", total=event.total, detail=""))
                progress.update(build[0], completed=event.step, total=event.total, detail=event.message)

            model = client.import_model(
                path,
                name=name,
                variant=variant,
                progress=lambda n: progress.advance(upload, n),
                eval_data=eval_data,
                precisions=wanted,
                on_event=on_event,
            )
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    _show(render.model_doc(model), output, lambda: _print_model(model))


def _print_model(model: Model) -> None:
    out.print(render.variants_table(model))
    if model.cut_points:
        out.print()
        out.print(render.cut_points_table(model))
    if model.block_profiles:
        out.print()
        out.print(render.block_profiles_table(model))
    for table in render.class_profile_tables(model):
        out.print()
        out.print(table)
    if model.block_accuracy:
        out.print()
        out.print(render.block_accuracy_table(model))


@models_app.command("evaluate")
def models_evaluate(
    name: Annotated[str, typer.Argument(help="Model name.")],
    segments: Annotated[
        str,
        typer.Option(
            help="The plan: START:END@PRECISION,... covering the model in order on profiled cut points "
            "(0 as START is the model inputs, 0 as END the outputs), e.g. 0:34@int8,34:0@fp32."
        ),
    ],
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """Measure the exact quality of a mixed-precision segment plan on the model's stored eval data,
    each segment built whole as it would be deployed, next to the additive block model's prediction."""
    try:
        plan = _parse_segments(segments)
        with _client(controller) as client:
            result = client.evaluate_segments(name, plan)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    _show(render.evaluation_doc(result), output, lambda: out.print(render.evaluation_table(result)))


def _parse_segments(text: str) -> tuple[SegmentSpec, ...]:
    """``0:34@int8,34:0@fp32`` -> segments; InvalidArgument naming every item that is not one."""
    specs: list[SegmentSpec] = []
    problems: list[str] = []
    for i, item in enumerate(part.strip() for part in text.split(",")):
        span, _, precision = item.partition("@")
        start, colon, end = span.partition(":")
        if not (colon and start.strip().isdigit() and end.strip().isdigit() and precision.strip()):
            problems.append(f"item {i + 1} {item!r} is not START:END@PRECISION (e.g. 0:34@int8)")
            continue
        specs.append(SegmentSpec(int(start), int(end), precision.strip()))
    if problems or not specs:
        raise InvalidArgument("--segments: " + ("; ".join(problems) or "empty"))
    return tuple(specs)


@models_app.command("profile")
def models_profile(
    name: Annotated[str, typer.Argument(help="Model name.")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device to profile on (repeatable).")
    ] = None,
    hardware_class: Annotated[
        str, typer.Option("--hardware-class", help="Profile on every device of this hardware class.")
    ] = "",
    runs: Annotated[int, typer.Option(help="Timed calls per block and batch size (0: default).")] = 0,
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """Ask devices to time the model's blocks on their own hardware. Each reports when done (the
    controller resends the request until then); `models describe` shows the median per hardware class."""
    devices = list(device or [])
    if bool(devices) == bool(hardware_class):
        raise exit_for(InvalidArgument("give --device ID (one or more) or --hardware-class CLASS, not both"))
    try:
        with _client(controller) as client:
            records = client.request_profile(
                name, device_ids=devices, hardware_class=hardware_class, runs=runs
            )
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    _show(
        render.profile_requests_doc(records),
        output,
        lambda: out.print(
            "\n".join(
                f"device {r.device_id}: profile of {r.model_name} requested ({r.request_id})" for r in records
            ),
            highlight=False,
        ),
    )


@models_app.command("describe")
def models_describe(
    name: Annotated[str, typer.Argument(help="Model name.")],
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """One model: every variant with its measurements, the rejected precisions with their reasons,
    every cut point, the block profiles (the controller host's and each hardware class's, from agents'
    reports) and the accuracy of each block lowered alone."""
    manifests: dict[str, dict[str, Any] | None] = {}
    try:
        with _client(controller) as client:
            model = client.get_model(name)
            if output is not Output.table:
                for sha256 in {v.sha256 for v in model.variants}:
                    try:
                        manifests[sha256] = client.get_artifact_manifest(sha256)
                    except NotFound:  # stored before manifests existed
                        manifests[sha256] = None
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    _show(render.model_doc(model, manifests), output, lambda: _print_model(model))


def _show(doc: object, output: Output, table: object) -> None:
    if output is Output.table:
        assert callable(table)
        table()
    elif output is Output.json:
        print(render.dump(doc, "json"))
    else:
        print(render.dump(doc, "yaml"), end="")


class Kind(StrEnum):
    devices = "devices"
    models = "models"


@app.command("get")
def get(
    kind: Annotated[Kind, typer.Argument(help="devices or models")],
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """List devices or models."""
    try:
        with _client(controller) as client:
            if kind is Kind.devices:
                devices = client.list_devices()
                _show(
                    [render.device_doc(d) for d in devices],
                    output,
                    lambda: out.print(render.devices_table(devices)),
                )
            else:
                models = client.list_models()
                _show(
                    [render.model_doc(m) for m in models],
                    output,
                    lambda: out.print(render.models_table(models)),
                )
    except EdgefleetError as exc:
        raise exit_for(exc) from None


@describe_app.command("device")
def describe_device(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """Everything the controller knows about one device."""
    try:
        with _client(controller) as client:
            device = client.get_device(device_id)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    _show(render.device_doc(device), output, lambda: render.device_detail(device, out))


@app.command()
def latency(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    window: Annotated[
        int, typer.Option(min=1, max=MAX_LATENCY_WINDOW, help="How many of its latest records to read.")
    ] = DEFAULT_LATENCY_WINDOW,
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """A device's measured request latency against its plan: at the deployment's percentile beside
    the prediction and the SLO, and each hop's queue, compute and transfer beside the plan's."""
    try:
        with _client(controller) as client:
            summary = client.device_latency(device_id, window=window)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    _show(render.latency_doc(summary), output, lambda: render.latency_detail(summary, out))


@app.command()
def assign(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    model: Annotated[str, typer.Option(help="Model name.")],
    variant: Annotated[str, typer.Option(help="Model variant.")] = "fp32",
    controller: ControllerOpt = "",
    output: OutputOpt = Output.table,
) -> None:
    """Set the model a device should run; the controller pushes it and waits for the device's ack."""
    try:
        with _client(controller) as client:
            result = client.assign(device_id, model, variant)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    d = result.device
    if output is Output.table:
        verb = "assigned" if result.changed else "unchanged (already assigned)"
        out.print(
            f"device {d.id}: {model}/{variant} {verb}; desired version {d.desired_version}", highlight=False
        )
    else:
        _show({"changed": result.changed, "device": render.device_doc(d)}, output, None)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
