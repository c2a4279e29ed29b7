"""`make demo`: a controller and three agents on loopback, a real model, real inference.

Builds the digits classifier (scikit-learn's bundled data, no network), starts `fleetctl serve`
on SQLite in .demo/, enrolls a phone, an edge node and a cloud GPU worker with one bootstrap token,
imports the model with its fp32 and int8 variants, cut points and block profiles, applies the policies
in scripts/demo_policies/ (the planner places the model for the phone: `fleetctl plan`, `apply`,
`history`), assigns it by hand to the edge node and the GPU worker, waits until every device has
acknowledged it, classifies the held-out digits through each agent, prints accuracy and per-agent
status, and shuts down.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from agent.client import AgentClient
from controller.cli import render
from controller.client import AdminClient
from controller.toolchain.digits import build_digits_model
from simulator.processes import Proc, fleetctl, free_port, start_agent, start_controller, wait_until

DEVICES = {"phone-1": "phone-cpu", "edge-1": "edge-npu", "gpu-1": "cloud-gpu"}
#: What each agent is told about itself: labels the demo policies select on, and its link to the edge.
AGENT_OPTIONS = {
    "phone-1": ["--label", "edgefleet.io/site=demo", "--link", "demo-edge=40/6/9"],
    "edge-1": ["--label", "edgefleet.io/pool=demo-edge"],
    "gpu-1": [],
}
POLICIES = Path(__file__).resolve().parent / "demo_policies"
console = Console(width=None if sys.stdout.isatty() else 120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".demo"), help="working directory (wiped first)")
    args = parser.parse_args()
    root: Path = args.dir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    console.rule("[bold]edgefleet demo")
    digits = build_digits_model(root / "model")
    console.print(
        f"trained digits classifier: test accuracy {digits.accuracy:.4f} ({digits.n_test} held-out rows)"
    )

    procs: list[Proc] = []
    try:
        controller, address = start_controller(root / "controller", free_port(), heartbeat="2s")
        procs.append(controller)
        console.print(f"controller on {address} (data dir {root / 'controller'})")
        token = json.loads(
            fleetctl("token", "create", "--uses", str(len(DEVICES)), "-o", "json", controller=address).stdout
        )
        agents: dict[str, str] = {}
        for device_id, hardware in DEVICES.items():
            proc, agent_address = start_agent(
                address,
                root / device_id,
                hardware,
                token=token["token"],
                device_id=device_id,
                extra=AGENT_OPTIONS[device_id],
            )
            procs.append(proc)
            agents[device_id] = agent_address
            console.print(f"agent {device_id} ({hardware}) serving Infer on {agent_address}")

        test = np.load(digits.test_path)
        x, y = test["x"].astype(np.float32), test["y"]
        eval_data = root / "model" / "digits_eval.npz"
        np.savez(eval_data, input=x, labels=y.astype(np.int64))
        started = time.monotonic()
        fleetctl(
            "models", "import", str(digits.model_path), "--name", "digits",
            "--eval-data", str(eval_data), "--precisions", "fp32,int8", controller=address,
        )  # fmt: skip
        console.print(f"imported digits with its fp32 and int8 variants in {time.monotonic() - started:.1f}s")
        wait_until(lambda: _connected(address), timeout=60, what="every agent to connect")
        console.rule("policies: plan, apply, history")
        plan = fleetctl("plan", "-f", str(POLICIES), controller=address)
        console.print(plan.stdout.rstrip())
        console.print(
            fleetctl("plan", "-f", str(POLICIES), "--explain", "phone-1", controller=address).stdout.rstrip()
        )
        console.print(
            fleetctl("apply", "-f", str(POLICIES), "-m", "make demo", controller=address).stdout.rstrip()
        )
        console.print(fleetctl("history", controller=address).stdout.rstrip())
        started = time.monotonic()
        with AdminClient(address) as admin:
            for device_id in ("edge-1", "gpu-1"):  # the pool nodes run it whole too, for the demo below
                admin.assign(device_id, "digits")  # what `fleetctl assign DEVICE --model digits` does
            wait_until(
                lambda: all(
                    d.connected and d.desired_version > 0 and d.converged and d.reported.active_sha256
                    for d in admin.list_devices()
                ),
                timeout=60,
                what="every device to acknowledge the model",
            )
        console.print(
            f"all {len(DEVICES)} devices fetched, loaded and acknowledged the model {time.monotonic() - started:.2f}s after assignment"
        )

        results = Table(title="held-out digits classified through each agent", header_style="bold")
        for col in ("device", "hardware", "rows", "accuracy", "per-row latency (ms)"):
            results.add_column(col)
        for device_id, agent_address in agents.items():
            with AgentClient(agent_address) as client:
                correct, latencies = 0, []
                for start in range(0, len(x), 50):
                    t0 = time.perf_counter()
                    outputs, _, _ = client.infer({"input": x[start : start + 50]})
                    latencies.append((time.perf_counter() - t0) * 1000 / len(outputs["label"]))
                    correct += int(np.sum(outputs["label"] == y[start : start + 50]))
            results.add_row(
                device_id,
                DEVICES[device_id],
                str(len(x)),
                f"{correct / len(x):.4f}",
                f"{np.median(latencies):.3f}",
            )
        console.print(results)

        with AdminClient(address) as admin:
            wait_until(
                lambda: all(d.records_received > 0 for d in admin.list_devices()),
                timeout=30,
                what="telemetry from every device",
            )
            console.print(render.devices_table(admin.list_devices()))
        console.print("shutting down (SIGTERM) ...")
    finally:
        codes = [proc.terminate() for proc in reversed(procs)]
    if any(codes):
        console.print(f"[red]unclean shutdown: exit codes {codes}")
        return 1
    console.print("[green]demo finished: every process shut down cleanly")
    return 0


def _connected(address: str) -> bool:
    with AdminClient(address) as admin:
        devices = admin.list_devices()
    return len(devices) == len(DEVICES) and all(d.connected for d in devices)


if __name__ == "__main__":
    sys.exit(main())
