"""Benchmark: the agent's Infer round trip vs a direct onnxruntime ``session.run`` of the same model.

Usage::

    .venv/bin/python bench/infer_overhead.py [--calls 200] [--blocks 10] [--warmup 200] [--json OUT] [--keep]

What it does, in one run:

* builds the digits demo model (``build_digits_model``) into a temp dir;
* starts a real controller and one real agent process on loopback, creates a bootstrap token,
  imports the model, assigns it and waits until the agent's status reports its sha256;
* baseline: ``onnxruntime.InferenceSession`` in this process (1 intra-op thread, CPU provider, the
  same session options the agent uses) and ``session.run(None, {"input": x})``;
* measured: ``AgentClient(addr).infer({"input": x})`` (sync gRPC, one reused channel);
* both on the same held-out digits rows, for batch 1 and batch 32: a warm-up, then ``--blocks``
  interleaved blocks of ``--calls`` calls each (the order alternates per block), each call timed with
  ``perf_counter_ns``. Interleaving spreads background noise of a small shared box over both sides.

Reported per batch size: median and p95 per call of each side, the overhead (agent median - direct
median) and ratio, and the latency the agent itself reports (``InferResponse.latency_ms``), which
splits the overhead into in-agent work (server latency - direct) and gRPC/transport/client work
(round trip - server latency). Not a test: it prints a table and a goal line and exits 0 unless the
fleet could not be brought up.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is a scripts folder, not a package

from _fleet import FleetError, running_fleet

from agent.client import AgentClient
from controller.toolchain.digits import INPUT_NAME, build_digits_model

GOAL_MS = 0.5
BATCH_SIZES = (1, 32)
console = Console()


@dataclass
class Side:
    """Per-call timings (ns) of one side, plus each block's median for the noise estimate."""

    calls_ns: list[int] = field(default_factory=list)
    block_medians_ms: list[float] = field(default_factory=list)

    def add_block(self, ns: list[int]) -> None:
        self.calls_ns.extend(ns)
        self.block_medians_ms.append(float(np.median(ns)) / 1e6)

    def summary(self) -> dict[str, float]:
        ms = np.asarray(self.calls_ns, dtype=np.float64) / 1e6
        return summarize(ms)


def summarize(ms: np.ndarray) -> dict[str, float]:
    return {
        "n": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
    }


def direct_session(model_path: Path) -> ort.InferenceSession:
    """The baseline session: the options ``agent.runtime.load_model`` uses (1 intra-op thread, CPU)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def batches(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Consecutive held-out rows cut into contiguous batches (prepared up front: not timed)."""
    count = max(1, len(x) // batch)
    return [np.ascontiguousarray(x[i * batch : (i + 1) * batch]) for i in range(count)]


def timed_block(
    call: Callable[[np.ndarray], Any], inputs: list[np.ndarray], calls: int, start: int
) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    n = len(inputs)
    for i in range(calls):
        x = inputs[(start + i) % n]
        t0 = clock()
        call(x)
        out.append(clock() - t0)
    return out


def check_same_outputs(session: ort.InferenceSession, client: AgentClient, x: np.ndarray) -> None:
    names = [o.name for o in session.get_outputs()]
    direct = dict(zip(names, session.run(None, {INPUT_NAME: x}), strict=True))
    remote, _, _ = client.infer({INPUT_NAME: x})
    if set(direct) != set(remote):
        raise SystemExit(f"output names differ: direct {sorted(direct)}, agent {sorted(remote)}")
    for name, value in direct.items():
        if not np.allclose(value, remote[name], rtol=1e-5, atol=1e-6):
            raise SystemExit(f"output {name!r} differs between direct and agent")


def measure(
    session: ort.InferenceSession,
    client: AgentClient,
    x_test: np.ndarray,
    batch: int,
    *,
    calls: int,
    blocks: int,
    warmup: int,
) -> dict[str, Any]:
    inputs = batches(x_test, batch)
    server_ms: list[float] = []

    def direct(x: np.ndarray) -> None:
        session.run(None, {INPUT_NAME: x})

    def agent(x: np.ndarray) -> None:
        server_ms.append(client.infer({INPUT_NAME: x})[2])

    check_same_outputs(session, client, inputs[0])
    timed_block(direct, inputs, warmup, 0)
    timed_block(agent, inputs, warmup, 0)
    server_ms.clear()

    sides = {"direct": Side(), "agent": Side()}
    fns = {"direct": direct, "agent": agent}
    for block in range(blocks):
        order = ("direct", "agent") if block % 2 == 0 else ("agent", "direct")
        for name in order:
            gc.collect()
            sides[name].add_block(timed_block(fns[name], inputs, calls, block * calls))

    d, a = sides["direct"].summary(), sides["agent"].summary()
    s = summarize(np.asarray(server_ms, dtype=np.float64))
    block_overheads = [
        am - dm
        for am, dm in zip(sides["agent"].block_medians_ms, sides["direct"].block_medians_ms, strict=True)
    ]
    return {
        "batch": batch,
        "input_bytes": int(inputs[0].nbytes),
        "direct": d,
        "agent": a,
        "agent_server_reported": s,
        "overhead_ms": a["median_ms"] - d["median_ms"],
        "overhead_p95_ms": a["p95_ms"] - d["p95_ms"],
        "ratio": a["median_ms"] / d["median_ms"],
        # Where the overhead goes (medians): inside the agent's handler vs the rest of the round trip.
        "in_agent_ms": s["median_ms"] - d["median_ms"],
        "grpc_and_client_ms": a["median_ms"] - s["median_ms"],
        "block_overheads_ms": block_overheads,
    }


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    latency = Table(
        title=f"Per-call latency, ms ({meta['blocks']} blocks x {meta['calls']} calls per side, interleaved)"
    )
    for col in ("batch", "direct med", "direct p95", "agent med", "agent p95", "overhead", "ratio"):
        latency.add_column(col, justify="right")
    split = Table(title="Where the overhead goes, ms (medians)")
    for col in ("batch", "agent-reported", "in-agent", "gRPC+client", "overhead/block min..max"):
        split.add_column(col, justify="right")
    for r in results:
        blocks = r["block_overheads_ms"]
        latency.add_row(
            str(r["batch"]),
            f"{r['direct']['median_ms']:.3f}",
            f"{r['direct']['p95_ms']:.3f}",
            f"{r['agent']['median_ms']:.3f}",
            f"{r['agent']['p95_ms']:.3f}",
            f"{r['overhead_ms']:.3f}",
            f"{r['ratio']:.1f}x",
        )
        split.add_row(
            str(r["batch"]),
            f"{r['agent_server_reported']['median_ms']:.3f}",
            f"{r['in_agent_ms']:.3f}",
            f"{r['grpc_and_client_ms']:.3f}",
            f"{min(blocks):.3f}..{max(blocks):.3f}",
        )
    console.print(latency)
    console.print(
        "overhead = agent med - direct med; ratio = agent med / direct med", highlight=False, soft_wrap=True
    )
    console.print(split)
    for line in (
        "agent-reported = InferResponse.latency_ms (handler start -> outputs ready)",
        "in-agent = agent-reported - direct med (request decode, checks, thread-pool hop)",
        "gRPC+client = agent med - agent-reported (transport, gRPC server and client,",
        "  protobuf + tensor encode/decode at both ends, response build, telemetry record)",
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}, "
        f"{meta['cpu_count']} CPUs",
        f"python {meta['python']}, onnxruntime {meta['onnxruntime']}, grpcio {meta['grpcio']}",
    ):
        console.print(line, highlight=False, soft_wrap=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=200, help="calls per measurement block and side (200)")
    p.add_argument("--blocks", type=int, default=10, help="interleaved measurement blocks (10)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up calls per side and batch size (200)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (model, data dirs) for inspection")
    args = p.parse_args(argv)
    for name in ("calls", "blocks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    console.print(f"[dim]workdir {workdir}; building the digits model ...[/dim]")
    artifacts = build_digits_model(workdir / "model")
    x_test = np.load(artifacts.test_path)["x"].astype(np.float32)
    session = direct_session(artifacts.model_path)

    console.print("[dim]starting controller + agent, importing and assigning ...[/dim]")
    started = time.monotonic()
    with running_fleet(workdir, artifacts.model_path) as fleet:
        console.print(
            f"[dim]agent {fleet.agents[0]} serves {fleet.sha256[:12]} "
            f"({time.monotonic() - started:.1f}s to converge); measuring ...[/dim]"
        )
        loadavg_before = [round(v, 2) for v in os.getloadavg()]
        with AgentClient(fleet.agents[0]) as client:
            results = [
                measure(
                    session,
                    client,
                    x_test,
                    batch,
                    calls=args.calls,
                    blocks=args.blocks,
                    warmup=args.warmup,
                )
                for batch in BATCH_SIZES
            ]
        loadavg_after = [round(v, 2) for v in os.getloadavg()]

    worst = max(r["overhead_ms"] for r in results)
    return {
        "meta": {
            "calls": args.calls,
            "blocks": args.blocks,
            "warmup": args.warmup,
            "model_sha256": fleet.sha256,
            "model_accuracy": artifacts.accuracy,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "grpcio": grpc.__version__,
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg_after,
        },
        "results": results,
        "goal": {"overhead_below_ms": GOAL_MS, "worst_overhead_ms": worst, "met": worst < GOAL_MS},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    try:
        report = run(args, workdir)
    except FleetError as exc:
        console.print(f"[red]could not bring the fleet up:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; processes stopped[/yellow]")
        return 130
    finally:
        if args.keep:
            console.print(f"[dim]kept {workdir}[/dim]")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    render(report["results"], report["meta"])
    goal = report["goal"]
    verdict = "MET" if goal["met"] else "NOT MET"
    print(f"goal: overhead < {GOAL_MS} ms per call -> {verdict}")
    print(
        "     (overhead by batch size: "
        + ", ".join(f"batch {r['batch']}: {r['overhead_ms']:.3f} ms" for r in report["results"])
        + ")"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"[dim]wrote {args.json}[/dim]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
