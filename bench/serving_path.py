"""Benchmark: what the serving agent's own request path costs per request, against a bare gRPC echo
measured in the same run.

Usage::

    .venv/bin/python bench/serving_path.py [--seconds 2] [--rounds 3] [--callers 32] [--json OUT]

One run does:

* **segment**: the digits MLP's three dense layers (``bench/batching.py::digits_segment``: the
  model trained on scikit-learn's digits, cut with ``Segmenter``), opened as the toolchain opens
  sessions (one intra-op thread); its inputs are real activations (test rows run through the head).
* **serving**: a child process serving that segment through the product's ``SegmentApi``
  (``RunSegments``: decode, admission, the ``DynamicBatcher`` at 32 rows / 3 ms, the answer, its
  timing) on real gRPC. Only the daemon around it is a stand-in: one served segment and no route
  (``SegmentHost.run_served`` is a one-line call into the batcher).
* **echo**: a child process answering every message of a stream with itself
  (``bench/_fleet.echo_server``): the floor any Python gRPC service pays on this machine.
* **load**: ``--callers`` closed-loop callers, each on its own stream through the product's
  ``StreamPool`` (as agents call each other; the echo is called on streams of the same request
  bytes), for ``--seconds`` per cell, serving and echo interleaved and the order reversed every
  round, so load from other processes hits both alike.

Printed: per target, requests/s, p50/p95, and the server process's CPU microseconds per answered
request (``/proc``); then the serving path's CPU per request as a ratio to the echo's and the
difference: what our serving code costs beyond gRPC's own per-message work. That ratio is what
changes to the serving path are judged by; compare it between commits, not absolute numbers.

With ``--in-process N``: no gRPC and no child process; the same ``SegmentApi.RunSegments`` and
batcher driven directly by ``--callers`` streams of N requests each (each stream's next request is
ready as soon as its answer is taken), the batch run inline instead of in a thread, best of
``--rounds``: the serving path's own CPU per request with hot caches and nothing else competing, for
A/B comparisons of hot-path changes on a noisy box. For an instruction count that does not depend on
the box, run it under callgrind at two values of N and divide the difference of the totals by the
difference of the request counts (``valgrind --tool=callgrind .venv/bin/python bench/serving_path.py
--in-process 50 --rounds 1``, then 200).

Not a test: it prints a table and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from rich.console import Console
from rich.table import Table

from bench._fleet import ECHO_STREAM_METHOD, _managed, echo_server, process_cpu_s
from bench._partition_load import LoadCell, echo_floor, requests_pb, run_cell
from simulator.processes import Proc

console = Console(width=150)

SHA = "d1" * 32  # the served segment's id (any well-formed sha256: the stand-in serves only this)
MAX_BATCH = 32
DELAY_S = 0.003
DEADLINE_S = 2.0
START_TIMEOUT_S = 60.0


# --- the serving process ---------------------------------------------------------------------------


def _stand_in(segment_bytes: bytes, executor: concurrent.futures.Executor | None = None) -> tuple[Any, Any]:
    """``SegmentApi`` serving the segment through a ``DynamicBatcher`` (``MAX_BATCH`` rows, ``DELAY_S``)
    and a stand-in for the daemon around it: one served segment, no route. Returns (api, batcher);
    call it on the event loop that will serve."""
    from types import SimpleNamespace

    from agent.segment_api import SegmentApi
    from agent.serving.batcher import DynamicBatcher
    from controller.toolchain.measure import open_session

    session = open_session(segment_bytes)
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    batcher = DynamicBatcher(
        run, max_batch_size=MAX_BATCH, max_queue_delay_s=DELAY_S, name="digits", executor=executor
    )
    served = SimpleNamespace(batcher=batcher)

    async def run_served(s: Any, arrays: Any, *, priority: int, deadline: float) -> Any:
        return await s.batcher.submit(arrays, priority=priority, deadline=deadline)

    segments = SimpleNamespace(
        device_id="edge-1", served=lambda sha: served if sha == SHA else None, run_served=run_served
    )
    return SegmentApi(SimpleNamespace(segments=segments)), batcher  # type: ignore[arg-type]


def _serve(segment: Path) -> None:
    """``serve SEGMENT.onnx``: SegmentApi over gRPC on a free port, one segment behind a batcher."""
    import grpc

    from common import limits, serde

    segment_bytes = segment.read_bytes()

    async def main() -> None:
        api, batcher = _stand_in(segment_bytes)
        server = grpc.aio.server(options=limits.GRPC_MESSAGE_OPTIONS)
        serde.add_SegmentServiceServicer_to_server(api, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"serving listening on 127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        api.close()
        await server.stop(1.0)
        await batcher.aclose()

    asyncio.run(main())


@contextlib.contextmanager
def serving_process(segment: Path) -> Iterator[tuple[str, int]]:
    """The serving child process (address, pid); always stopped."""
    procs: list[Proc] = []
    with _managed(procs):
        proc = Proc("serving", [str(Path(__file__).resolve()), "serve", str(segment)], registry=procs)
        yield proc.wait_for_line("serving listening on", START_TIMEOUT_S).rsplit(" ", 1)[1], proc.pid


# --- in-process ------------------------------------------------------------------------------------


class _Inline(concurrent.futures.Executor):
    """Runs the batch in the caller's thread: no hand-off, so only the serving path's own work counts."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting side, as a thread pool would
            future.set_exception(exc)
        return future


def in_process(segment_bytes: bytes, reqs: list[Any], per_stream: int, streams: int, rounds: int) -> float:
    """Best seconds per request of ``SegmentApi.RunSegments`` + the batcher over ``rounds``."""

    async def drive(api: Any, count: int) -> int:
        async def stream(k: int) -> int:
            async def source() -> AsyncIterator[Any]:
                for i in range(count):
                    yield reqs[(k + i) % len(reqs)]

            return sum([1 async for _ in api.RunSegments(source(), None)])  # type: ignore[arg-type]

        return sum(await asyncio.gather(*(stream(k) for k in range(streams))))

    async def main() -> float:
        api, batcher = _stand_in(segment_bytes, _Inline())
        await drive(api, 50)  # warm-up
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            answered = await drive(api, per_stream)
            best = min(best, (time.perf_counter() - started) / answered)
        api.close()
        await batcher.aclose()
        return best

    return asyncio.run(main())


# --- the load --------------------------------------------------------------------------------------


def measure(
    target: str, address: str, pid: int, reqs: list[Any], args: argparse.Namespace, cell: LoadCell
) -> None:
    cpu0, own0, wall0 = process_cpu_s(pid) or 0.0, time.process_time(), time.perf_counter()
    if target == "serving":
        asyncio.run(run_cell(address, reqs, cell, seconds=args.seconds, warmup_s=0.3, deadline_s=DEADLINE_S))
    else:
        payload = reqs[0].SerializeToString()
        asyncio.run(echo_floor(address, ECHO_STREAM_METHOD, payload, args.callers, 0.3))  # warm-up
        measured = asyncio.run(echo_floor(address, ECHO_STREAM_METHOD, payload, args.callers, args.seconds))
        cell.requests += measured.requests
        cell.seconds += measured.seconds
        cell.errors += measured.errors
        cell.latencies_ms += measured.latencies_ms
    # CPU rates over the whole call (warm-up included, at about the measured request rate).
    wall = time.perf_counter() - wall0
    cell.server_cpu_s += ((process_cpu_s(pid) or 0.0) - cpu0) / wall * args.seconds
    cell.client_cpu_s += (time.process_time() - own0) / wall * args.seconds
    cell.wall_s += args.seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"] and len(argv) == 2:
        _serve(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both cells (default 3)")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers (default 32)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--in-process",
        type=int,
        metavar="N",
        help="no gRPC: N requests per caller straight into SegmentApi (see the module docstring)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.callers < 1:
        parser.error("--seconds must be > 0, --rounds and --callers >= 1")
    if args.in_process is not None and args.in_process < 1:
        parser.error("--in-process must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    console.print(
        f"bench/serving_path.py on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        highlight=False,
    )
    from bench.batching import digits_segment

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-serving-") as tmp:
        segment = digits_segment(Path(tmp))
        path = Path(tmp) / "segment.onnx"
        path.write_bytes(segment.onnx_bytes)
        reqs = requests_pb(SHA, segment.rows, "edge", budget_s=DEADLINE_S)
        if args.in_process is not None:
            per_request = in_process(segment.onnx_bytes, reqs, args.in_process, args.callers, args.rounds)
            console.print(
                f"in-process serving path ({segment.label}): {per_request * 1e6:.2f} us per request, best of "
                f"{args.rounds} x {args.callers} streams x {args.in_process} requests (no gRPC, batch run inline)",
                highlight=False,
            )
            return 0
        cells = {t: LoadCell(args.callers, t) for t in ("serving", "echo")}
        with (
            serving_process(path) as (serving_address, serving_pid),
            echo_server() as (echo_address, echo_pid),
        ):
            targets = {"serving": (serving_address, serving_pid), "echo": (echo_address, echo_pid)}
            for r in range(args.rounds):
                order = ["serving", "echo"] if r % 2 == 0 else ["echo", "serving"]
                for target in order:
                    measure(target, *targets[target], reqs, args, cells[target])
                console.print(f"  round {r + 1}/{args.rounds} done", highlight=False)
    serving, echo = cells["serving"], cells["echo"]
    table = Table(
        title=f"{segment.label}: {args.callers} callers on streams, {args.rounds} x {args.seconds:g} s per target"
    )
    for col in ("target", "req/s", "p50 ms", "p95 ms", "errors", "server CPU us/req", "client CPU us/req"):
        table.add_column(col, justify="right")
    for cell in (serving, echo):
        table.add_row(
            cell.mode,
            f"{cell.rps:.0f}",
            f"{cell.pct(50):.2f}",
            f"{cell.pct(95):.2f}",
            str(cell.errors),
            f"{cell.server_us_per_request:.1f}",
            f"{cell.client_cpu_s / cell.wall_s / cell.rps * 1e6:.1f}",
        )
    console.print(table)
    ratio = serving.server_us_per_request / echo.server_us_per_request
    extra = serving.server_us_per_request - echo.server_us_per_request
    console.print(
        f"serving path: {ratio:.2f}x the echo's server CPU per request, {extra:.1f} us/request beyond gRPC's "
        f"own per-message work (mean batch {serving.mean_batch:.1f}; batch compute median "
        f"{statistics.median(c for _, c in serving.compute_ms):.3f} ms)",
        highlight=False,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cells": {
                        c.mode: {
                            "rps": c.rps,
                            "p50_ms": c.pct(50),
                            "p95_ms": c.pct(95),
                            "errors": c.errors,
                            "server_us_per_request": c.server_us_per_request,
                        }
                        for c in (serving, echo)
                    },
                    "ratio": ratio,
                    "extra_us": extra,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
