"""fleet-agent: ``run`` the edge daemon; ``infer`` and ``status`` talk to a running one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console

from common.cli_errors import exit_for
from common.durations import parse_duration
from common.errors import EdgefleetError, InvalidArgument
from common.logs import configure_logging
from common.types import LinkMeasurement, validate_name

if TYPE_CHECKING:
    from agent.outbox import OutboxBudget

app = typer.Typer(help="The edgefleet device agent.", no_args_is_help=True, pretty_exceptions_enable=False)
err = Console(stderr=True)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--label {pair!r}: use KEY=VALUE")
        labels[key] = value
    return labels


def _links(specs: list[str]) -> tuple[LinkMeasurement, ...]:
    """``--link POOL=MBPS/RTT_MS[/RTT_P95_MS]``: what the device knows of its path to a compute pool."""
    links: dict[str, LinkMeasurement] = {}
    for spec in specs:
        pool, sep, rest = spec.partition("=")
        parts = rest.split("/")
        try:
            if not sep or not pool or len(parts) not in (2, 3):
                raise ValueError
            numbers = [float(x) for x in parts]
        except ValueError:
            raise InvalidArgument(
                f"--link {spec!r}: use POOL=MBPS/RTT_MS or POOL=MBPS/RTT_MS/RTT_P95_MS"
            ) from None
        if numbers[0] <= 0 or any(x < 0 for x in numbers[1:]) or not all(map(math.isfinite, numbers)):
            raise InvalidArgument(f"--link {spec!r}: bandwidth must be > 0 and round-trip times >= 0")
        validate_name("pool name", pool)
        if pool in links:
            raise InvalidArgument(f"--link: pool {pool!r} is given twice")
        links[pool] = LinkMeasurement(pool, numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 0.0)
    return tuple(links.values())


@app.command()
def run(
    controller: Annotated[str, typer.Option(envvar="EDGEFLEET_CONTROLLER", help="Controller HOST:PORT.")],
    data_dir: Annotated[Path, typer.Option(help="Identity, state and model cache live here.")],
    hardware: Annotated[str, typer.Option(help="Hardware class: phone-cpu, edge-npu, cloud-gpu, ...")],
    token: Annotated[
        str, typer.Option(envvar="EDGEFLEET_TOKEN", help="Bootstrap token (first start only).")
    ] = "",
    device_id: Annotated[str, typer.Option(help="Requested device id (generated when empty).")] = "",
    listen: Annotated[str, typer.Option(help="HOST:PORT for the local Infer service (port 0: any).")] = (
        "127.0.0.1:0"
    ),
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE label; repeat for more.")] = None,
    link: Annotated[
        list[str] | None,
        typer.Option(
            help="POOL=MBPS/RTT_MS[/RTT_P95_MS]: the link to a compute pool, for the planner; repeat for more."
        ),
    ] = None,
    advertise: Annotated[
        str,
        typer.Option(
            help="HOST:PORT peers reach this agent's SegmentService on (default: the listen address; "
            "set it when listening on 0.0.0.0 or behind NAT)."
        ),
    ] = "",
    outbox_max_mb: Annotated[
        float, typer.Option(help="Disk the unacknowledged telemetry may take (MiB) before the policy drops.")
    ] = 256.0,
    outbox_max_age: Annotated[
        str, typer.Option(help="Unacknowledged telemetry older than this is dropped (e.g. 7d, 36h).")
    ] = "7d",
    outbox_policy: Annotated[
        str,
        typer.Option(help="Over budget: drop-oldest (keep the newest) or reject-newest (keep the oldest)."),
    ] = "drop-oldest",
    outbox_sync: Annotated[
        str,
        typer.Option(
            help="normal: records survive the agent being killed; full: also a power cut (an fsync per record)."
        ),
    ] = "normal",
    keepalive: Annotated[
        str,
        typer.Option(
            help="Ping the controller this often (e.g. 20s); a ping unanswered for half of it means the link is dead."
        ),
    ] = "20s",
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 1,
    transport: Annotated[
        str,
        typer.Option(
            help="The control channel: grpc (the Connect stream to --controller) or mqtt (through the "
            "--mqtt broker). Enrollment and model downloads always use gRPC to --controller."
        ),
    ] = "grpc",
    mqtt: Annotated[str, typer.Option(help="HOST:PORT of the MQTT 5 broker, for --transport mqtt.")] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Run the agent: enroll once, keep the control stream up, serve Infer."""
    from agent.daemon import AgentConfig, run_agent

    configure_logging(log_level, log_format)
    try:
        config = AgentConfig(
            controller=controller,
            data_dir=data_dir,
            hardware_class=hardware,
            token=token,
            device_id=device_id,
            listen=listen,
            labels=_labels(label or []),
            links=_links(link or []),
            threads=threads,
            advertise=_advertise(advertise),
            transport=transport,
            mqtt=_mqtt(transport, mqtt),
            outbox_budget=_outbox_budget(outbox_max_mb, outbox_max_age, outbox_policy),
            outbox_sync=_choice("--outbox-sync", outbox_sync, ("normal", "full")),
            keepalive_s=_keepalive(keepalive),
        )
        code = asyncio.run(run_agent(config))
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    except OSError as exc:
        err.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _outbox_budget(max_mb: float, max_age: str, policy: str) -> OutboxBudget:
    from agent.outbox import DropPolicy, OutboxBudget

    if not math.isfinite(max_mb) or max_mb < 0.0625:
        raise InvalidArgument(f"--outbox-max-mb {max_mb:g}: at least 0.0625 (64 KiB)")
    chosen = _choice("--outbox-policy", policy, tuple(p.value for p in DropPolicy))
    return OutboxBudget(
        max_bytes=int(max_mb * 2**20), max_age_s=float(parse_duration(max_age)), policy=DropPolicy(chosen)
    )


def _keepalive(text: str) -> float:
    seconds = parse_duration(text)
    if not 1 <= seconds <= 3600:
        raise InvalidArgument(f"--keepalive {text!r}: between 1s and 1h")
    return float(seconds)


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidArgument(f"{flag} {value!r}: one of {', '.join(allowed)}")
    return value


def _mqtt(transport: str, address: str) -> str:
    """``--transport``/``--mqtt`` checked together: bad input exits 2 before anything starts."""
    if transport not in ("grpc", "mqtt"):
        raise InvalidArgument(f"--transport {transport!r}: use grpc or mqtt")
    if transport == "grpc":
        if address:
            raise InvalidArgument("--mqtt is only used with --transport mqtt")
        return ""
    if not address:
        raise InvalidArgument("--transport mqtt needs --mqtt HOST:PORT (the broker)")
    from common.serde import address as check_address

    return check_address("--mqtt", address)


def _advertise(value: str) -> str:
    if not value:
        return ""
    from common.serde import address

    return address("--advertise", value)


def _load_inputs(specs: list[str], first_input: str) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = first_input, spec
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"--input {spec!r}: cannot read a .npy array ({exc})") from exc
        if name in inputs:
            raise InvalidArgument(f"--input {name!r} given twice")
        inputs[name] = array
    return inputs


@app.command()
def infer(
    agent: Annotated[str, typer.Option(envvar="EDGEFLEET_AGENT", help="Agent HOST:PORT.")],
    input: Annotated[
        list[str], typer.Option("--input", "-i", help="FILE.npy for the first input, or NAME=FILE.npy.")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="json or table.")] = "table",
) -> None:
    """Run one inference on a device's model and print the outputs, the path it took and each hop."""
    from agent.client import AgentClient
    from common.tensors import from_tensor

    try:
        with AgentClient(agent) as client:
            first = ""
            if any("=" not in spec for spec in input):
                status = client.status()
                if not status.inputs:
                    raise EdgefleetError("the agent has no model loaded", code="no_model")
                first = status.inputs[0].name
            response = client.infer_response(_load_inputs(input, first))
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    outputs = {t.name: from_tensor(t) for t in response.outputs}
    hops = [dataclasses.asdict(h) for h in response.hops]  # a HopTiming's fields, as -o json shows them
    if output == "json":
        print(
            json.dumps(
                {
                    "model_sha256": response.model_sha256,
                    "latency_ms": response.latency_ms,
                    "path": response.path,
                    "fallback_reason": response.fallback_reason or None,
                    "hops": hops,
                    "outputs": {k: v.tolist() for k, v in outputs.items()},
                }
            )
        )
    else:
        for name, value in outputs.items():
            print(f"{name} {value.dtype}{list(value.shape)}:\n{value}")
        print(
            f"model {response.model_sha256[:12]}, {response.latency_ms:.2f} ms on the agent ({response.path})"
        )
        if response.fallback_reason:
            print(f"  degraded: {response.fallback_reason}")
        for h in hops:
            print(
                f"  {h['tier']:<6} {h['device_id']}: queue {h['queue_ms']:.2f} ms, compute {h['compute_ms']:.2f} ms,"
                f" transfer {h['transfer_ms']:.2f} ms, batch {h['batch_size']}"
            )


@app.command()
def status(
    agent: Annotated[str, typer.Option(envvar="EDGEFLEET_AGENT", help="Agent HOST:PORT.")],
) -> None:
    """What the agent is serving and whether it is connected (JSON)."""
    from agent.client import AgentClient

    try:
        with AgentClient(agent) as client:
            s = client.status()
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    print(
        json.dumps(
            {
                "device_id": s.device_id,
                "hardware": s.hardware_class,
                "connected": s.connected,
                "acked_version": s.reported.acked_version,
                "active_sha256": s.reported.active_sha256 or None,
                "last_known_good_sha256": s.reported.last_known_good_sha256 or None,
                "inputs": [
                    {"name": i.name, "dtype": i.dtype.value, "shape": list(i.shape)} for i in s.inputs
                ],
                "pending_telemetry": s.pending_telemetry,
            },
            indent=2,
        )
    )


if __name__ == "__main__":  # pragma: no cover
    app()
