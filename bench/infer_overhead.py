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
* reference (``--no-floor`` skips it): the same serialized request bytes sent to a bare ``grpc.aio``
  echo server in its own process, which does no work: the floor any Python gRPC service pays here;
* all on the same held-out digits rows, for batch 1 and batch 32: a warm-up, then ``--blocks``
  interleaved blocks of ``--calls`` calls per side (the order alternates per block), each call timed
  with ``perf_counter_ns``. Interleaving spreads the background noise of a small shared box over all
  sides.

Reported per batch size: median and p95 per call of each side, the overhead (agent median - direct
median) and ratio, and the latency the agent itself reports (``InferResponse.latency_ms``), which
splits the overhead into in-agent work (server latency - direct) and gRPC/transport/client work
(round trip - server latency); plus the part above the gRPC floor and the CPU time the agent process
spends per call (from /proc, so less sensitive to load than wall time). Not a test: it prints tables
and the goal line, and exits 0 unless the fleet could not be brought up.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is a scripts folder, not a package

from _fleet import ECHO_METHOD, FleetError, echo_server, process_cpu_s, running_fleet, sigterm_as_interrupt

from agent.client import AgentClient
from common import limits, serde
from common.errors import EdgefleetError
from common.tensors import to_tensor
from common.types import InferRequest
from controller.toolchain.digits import INPUT_NAME, DigitsArtifacts, build_digits_model

GOAL_MS = 0.5
BATCH_SIZES = (1, 32)
console = Console()
if not console.is_terminal:
    console = Console(width=120)  # piped or captured: rich would otherwise squeeze the tables to 80


@dataclass
class Side:
    """Per-call timings (ns) of one side, plus each block's median for the noise estimate."""

    calls_ns: list[int] = field(default_factory=list)
    block_medians_ms: list[float] = field(default_factory=list)

    def add_block(self, ns: list[int]) -> None:
        self.calls_ns.extend(ns)
        self.block_medians_ms.append(float(np.median(ns)) / 1e6)

    def summary(self) -> dict[str, float]:
        return summarize(np.asarray(self.calls_ns, dtype=np.float64) / 1e6)


@dataclass
class Targets:
    session: ort.InferenceSession
    client: AgentClient
    agent_pid: int
    echo: Callable[[bytes], bytes] | None = None
    echo_pid: int = 0


def summarize(ms: np.ndarray) -> dict[str, float]:
    return {
        "n": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
    }


def build_model(out_dir: Path) -> DigitsArtifacts:
    """``build_digits_model``, with Ctrl-C / SIGTERM honoured once it returns.

    scikit-learn's MLP training catches KeyboardInterrupt and just stops early, which would silently
    benchmark a half-trained model; so hold the signal for the ~2 s the build takes, then raise.
    """
    held: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in signals}
    try:
        artifacts = build_digits_model(out_dir)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt(f"signal {held[0]}")
    return artifacts


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


def timed_block(call: Callable[[Any], Any], inputs: list[Any], calls: int, start: int) -> list[int]:
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


def cpu_ms_per_call(pid: int, before: float | None, calls: int) -> float | None:
    after = process_cpu_s(pid) if pid else None
    return None if before is None or after is None else (after - before) * 1000.0 / calls


def measure(
    t: Targets, x_test: np.ndarray, batch: int, *, calls: int, blocks: int, warmup: int
) -> dict[str, Any]:
    arrays = batches(x_test, batch)
    wire = [
        serde.infer_request_to_pb(InferRequest((to_tensor(INPUT_NAME, x),))).SerializeToString()
        for x in arrays
    ]
    server_ms: list[float] = []

    def direct(x: np.ndarray) -> None:
        t.session.run(None, {INPUT_NAME: x})

    def agent(x: np.ndarray) -> None:
        server_ms.append(t.client.infer({INPUT_NAME: x})[2])

    fns: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "direct": (direct, arrays),
        "agent": (agent, arrays),
    }
    if t.echo is not None:
        fns["echo"] = (t.echo, wire)

    check_same_outputs(t.session, t.client, arrays[0])
    for fn, inputs in fns.values():
        timed_block(fn, inputs, warmup, 0)
    server_ms.clear()

    sides = {name: Side() for name in fns}
    client_cpu_s = 0.0
    agent_cpu0 = process_cpu_s(t.agent_pid)
    echo_cpu0 = process_cpu_s(t.echo_pid) if t.echo_pid else None
    names = list(fns)
    for block in range(blocks):
        for name in names if block % 2 == 0 else reversed(names):
            fn, inputs = fns[name]
            gc.collect()
            cpu0 = time.process_time()
            sides[name].add_block(timed_block(fn, inputs, calls, block * calls))
            if name == "agent":
                client_cpu_s += time.process_time() - cpu0
    measured = blocks * calls

    d, a = sides["direct"].summary(), sides["agent"].summary()
    s = summarize(np.asarray(server_ms, dtype=np.float64))
    e = sides["echo"].summary() if "echo" in sides else None
    return {
        "batch": batch,
        "input_bytes": int(arrays[0].nbytes),
        "request_bytes": len(wire[0]),
        "direct": d,
        "agent": a,
        "agent_server_reported": s,
        "echo_floor": e,
        "overhead_ms": a["median_ms"] - d["median_ms"],
        "overhead_p95_ms": a["p95_ms"] - d["p95_ms"],
        "ratio": a["median_ms"] / d["median_ms"],
        # Where the overhead goes (medians): inside the agent's handler vs the rest of the round trip.
        "in_agent_ms": s["median_ms"] - d["median_ms"],
        "grpc_and_client_ms": a["median_ms"] - s["median_ms"],
        # What the product adds beyond a do-nothing gRPC round trip plus the model itself.
        "above_floor_ms": None if e is None else a["median_ms"] - e["median_ms"] - d["median_ms"],
        "agent_cpu_ms_per_call": cpu_ms_per_call(t.agent_pid, agent_cpu0, measured),
        "echo_cpu_ms_per_call": cpu_ms_per_call(t.echo_pid, echo_cpu0, measured),
        "client_cpu_ms_per_call": client_cpu_s * 1000.0 / measured,
        "block_overheads_ms": [
            am - dm
            for am, dm in zip(sides["agent"].block_medians_ms, sides["direct"].block_medians_ms, strict=True)
        ],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    latency = Table(
        title=f"Per-call latency, ms ({meta['blocks']} blocks x {meta['calls']} calls per side, interleaved)"
    )
    for col in (
        "batch",
        "direct med",
        "direct p95",
        "agent med",
        "agent p95",
        "overhead",
        "ratio",
        "gRPC floor",
    ):
        latency.add_column(col, justify="right")
    split = Table(title="Where the overhead goes, ms per call (medians)")
    for col in (
        "batch",
        "agent-reported",
        "in-agent",
        "gRPC+client",
        "above floor",
        "agent CPU",
        "floor CPU",
    ):
        split.add_column(col, justify="right")
    for r in results:
        floor = r["echo_floor"]
        latency.add_row(
            str(r["batch"]),
            _ms(r["direct"]["median_ms"]),
            _ms(r["direct"]["p95_ms"]),
            _ms(r["agent"]["median_ms"]),
            _ms(r["agent"]["p95_ms"]),
            _ms(r["overhead_ms"]),
            f"{r['ratio']:.1f}x",
            _ms(floor["median_ms"] if floor else None),
        )
        split.add_row(
            str(r["batch"]),
            _ms(r["agent_server_reported"]["median_ms"]),
            _ms(r["in_agent_ms"]),
            _ms(r["grpc_and_client_ms"]),
            _ms(r["above_floor_ms"]),
            _ms(r["agent_cpu_ms_per_call"]),
            _ms(r["echo_cpu_ms_per_call"]),
        )
    notes = [
        "overhead = agent med - direct med; ratio = agent med / direct med; gRPC floor = bare grpc.aio",
        "  echo of the same request bytes (no work at all); overhead per block: "
        + "; ".join(
            f"batch {r['batch']} {min(r['block_overheads_ms']):.3f}..{max(r['block_overheads_ms']):.3f}"
            for r in results
        ),
    ]
    console.print(latency)
    for line in notes:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(split)
    for line in (
        "agent-reported = InferResponse.latency_ms (handler start -> outputs ready)",
        "in-agent = agent-reported - direct med (request decode, checks, thread-pool hop)",
        "gRPC+client = agent med - agent-reported (transport, gRPC server and client,",
        "  protobuf + tensor encode/decode at both ends, response build, telemetry record)",
        "above floor = agent med - gRPC floor med - direct med (what edgefleet adds to bare gRPC)",
        "agent CPU / floor CPU = CPU time of the agent / echo process per call, all threads (/proc)",
        "client CPU per agent call (this process, all threads): "
        + ", ".join(f"batch {r['batch']} {r['client_cpu_ms_per_call']:.3f}" for r in results),
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
    p.add_argument("--no-floor", action="store_true", help="skip the bare gRPC echo reference")
    args = p.parse_args(argv)
    for name in ("calls", "blocks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


@contextmanager
def maybe_echo(enabled: bool) -> Iterator[tuple[Callable[[bytes], bytes] | None, int]]:
    if not enabled:
        yield None, 0
        return
    with echo_server() as (address, pid):
        channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
            ],
        )
        try:
            yield channel.unary_unary(ECHO_METHOD), pid
        finally:
            channel.close()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    console.print(f"[dim]workdir {workdir}; building the digits model ...[/dim]")
    artifacts = build_model(workdir / "model")
    x_test = np.load(artifacts.test_path)["x"].astype(np.float32)
    session = direct_session(artifacts.model_path)

    console.print("[dim]starting controller + agent, importing and assigning ...[/dim]")
    started = time.monotonic()
    with (
        running_fleet(workdir, artifacts.model_path) as fleet,
        maybe_echo(not args.no_floor) as (echo, echo_pid),
    ):
        console.print(
            f"[dim]agent {fleet.agents[0]} serves {fleet.sha256[:12]} "
            f"({time.monotonic() - started:.1f}s to converge); measuring ...[/dim]"
        )
        agent_pid = next(p.pid for p in fleet.procs if p.name.startswith("agent-"))
        loadavg_before = [round(v, 2) for v in os.getloadavg()]
        with AgentClient(fleet.agents[0]) as client:
            targets = Targets(session, client, agent_pid, echo, echo_pid)
            try:
                results = [
                    measure(targets, x_test, batch, calls=args.calls, blocks=args.blocks, warmup=args.warmup)
                    for batch in BATCH_SIZES
                ]
            except (EdgefleetError, grpc.RpcError) as exc:
                raise FleetError(f"a call failed during the measurement: {exc}\n\n{fleet.logs()}") from None
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
        with sigterm_as_interrupt():
            report = run(args, workdir)
    except FleetError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}", highlight=False)
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
    print(f"goal: overhead < {GOAL_MS} ms per call -> {'MET' if goal['met'] else 'NOT MET'}")
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
