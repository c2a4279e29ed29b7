"""Benchmark: the telemetry outbox — what a durable record costs per request, and whether a 24-hour
offline period at 10 requests/s fits the default disk budget.

Usage::

    .venv/bin/python bench/outbox.py [--records 20000] [--hours 24] [--rate 10] [--json OUT]

In one run:

* **Cost per record**: ``--records`` appends of a real inference record (encoded as the agent
  stores it) to ``MemoryOutbox`` (the baseline: encoding and bookkeeping, no disk), ``SqliteOutbox``
  with ``synchronous=normal`` (the default: survives the agent being killed) and with
  ``synchronous=full`` (an fsync per record: survives a power cut), interleaved in blocks so the
  box's noise falls on all of them; printed as microseconds per append and as ratios to the baseline.
  For scale, the same run times one digits inference (``session.run``, batch 1) — what the record
  accompanies.
* **24 hours offline**: ``hours x 3600 x rate`` records with timestamps spread over the period
  appended to a ``SqliteOutbox`` with the default budget (256 MiB, 7 days, drop-oldest), as an agent
  cut off from its controller would write them; then the database's real size on disk (main file +
  WAL) against the budget, how many were dropped (the outbox's own report), and how long the drain
  takes to read back in batches of 256 (what a reconnect costs the agent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.outbox import MemoryOutbox, OutboxBudget, SqliteOutbox  # noqa: E402
from common.types import HopTiming, InferenceRecord, Outcome, TelemetryRecord  # noqa: E402

T0_MS = 1_700_000_000_000
SHA = "ab" * 32


def record(seq: int, ts_ms: int) -> TelemetryRecord:
    # A partitioned request's record: the largest kind an agent writes per request.
    hops = (
        HopTiming("phone-000001", "device", compute_ms=3.2),
        HopTiming("edge-000001", "edge", queue_ms=0.4, compute_ms=2.9, transfer_ms=1.7, batch_size=4),
        HopTiming("gpu-000001", "cloud", compute_ms=0.8, transfer_ms=1.1),
    )
    body = InferenceRecord(SHA, 12.34, Outcome.OK, path="partitioned", hops=hops)
    return TelemetryRecord(seq, ts_ms, body)


def append_cost(n: int, blocks: int, workdir: Path) -> dict[str, float]:
    """Median microseconds per append for each outbox, interleaved block by block."""
    wall = lambda: T0_MS  # noqa: E731
    boxes = {
        "memory": MemoryOutbox(wall_ms=wall),
        "sqlite normal": SqliteOutbox(workdir / "normal.sqlite3", wall_ms=wall, synchronous="normal"),
        "sqlite full": SqliteOutbox(workdir / "full.sqlite3", wall_ms=wall, synchronous="full"),
    }
    per: dict[str, list[float]] = {k: [] for k in boxes}
    per_block = max(1, n // blocks)
    seq = {k: 0 for k in boxes}
    for b in range(blocks):
        order = list(boxes) if b % 2 == 0 else list(reversed(boxes))
        for name in order:
            box = boxes[name]
            started = time.perf_counter_ns()
            for _ in range(per_block if name != "sqlite full" else max(1, per_block // 10)):
                seq[name] += 1
                box.append(record(seq[name], T0_MS))
            count = per_block if name != "sqlite full" else max(1, per_block // 10)
            per[name].append((time.perf_counter_ns() - started) / count / 1000.0)
            box.delete_through(seq[name])  # keep each box small: this measures appends, not growth
    for box in boxes.values():
        box.close()
    return {k: statistics.median(v) for k, v in per.items()}


def inference_us() -> float | None:
    try:
        import numpy as np
        import onnxruntime as ort

        from controller.toolchain.digits import build_digits_model
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        art = build_digits_model(Path(tmp))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(art.model_path), opts, providers=["CPUExecutionProvider"])
        x = np.load(art.sample_path).astype(np.float32)
        for _ in range(200):
            session.run(None, {"input": x})
        times = []
        for _ in range(2000):
            t = time.perf_counter_ns()
            session.run(None, {"input": x})
            times.append((time.perf_counter_ns() - t) / 1000.0)
        return statistics.median(times)


def offline_day(hours: float, rate: float, workdir: Path) -> dict[str, float]:
    n = int(hours * 3600 * rate)
    step_ms = 1000.0 / rate
    now = {"ms": T0_MS}
    box = SqliteOutbox(workdir / "day.sqlite3", OutboxBudget(), wall_ms=lambda: now["ms"])
    dropped = 0
    started = time.perf_counter()
    for i in range(1, n + 1):
        now["ms"] = T0_MS + int(i * step_ms)
        for trimmed in box.append(record(i, now["ms"])):
            dropped += trimmed.dropped
    write_s = time.perf_counter() - started
    usage = box.usage()
    box.close()  # the WAL checkpointed into the database: what stays on disk
    box = SqliteOutbox(workdir / "day.sqlite3", OutboxBudget(), wall_ms=lambda: now["ms"])
    files = [workdir / "day.sqlite3", workdir / "day.sqlite3-wal"]
    on_disk = sum(f.stat().st_size for f in files if f.exists())
    started = time.perf_counter()
    after, read = 0, 0
    while True:
        batch = box.load(after, 256)
        if not batch:
            break
        read += len(batch)
        after = batch[-1].sequence
    drain_s = time.perf_counter() - started
    box.close()
    return {
        "records": n,
        "dropped": dropped,
        "kept": usage.records,
        "budget_bytes": OutboxBudget().max_bytes,
        "counted_bytes": usage.bytes,
        "on_disk_bytes": on_disk,
        "write_s": write_s,
        "read_back": read,
        "drain_read_s": drain_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(
        f"bench/outbox.py: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cost = append_cost(args.records, args.blocks, work)
        infer = inference_us()
        print("\nappend cost per record (median of interleaved blocks):")
        base = cost["memory"]
        for name, us in cost.items():
            print(f"  {name:<14} {us:8.1f} us   {us / base:6.2f}x the in-memory baseline")
        if infer is not None:
            print(
                f"  for scale: one digits inference (session.run, batch 1) {infer:.1f} us; "
                f"the default outbox adds {cost['sqlite normal'] / infer:.2f}x of it per request"
            )
        day = offline_day(args.hours, args.rate, work)
    print(f"\n{args.hours:g} h offline at {args.rate:g} requests/s: {day['records']:,} records")
    print(
        f"  on disk {day['on_disk_bytes'] / 2**20:.1f} MiB (counted {day['counted_bytes'] / 2**20:.1f} MiB) "
        f"of a {day['budget_bytes'] / 2**20:.0f} MiB budget; dropped {day['dropped']:,}; kept {day['kept']:,}"
    )
    print(
        f"  written in {day['write_s']:.1f} s ({day['write_s'] / day['records'] * 1e6:.1f} us per record); "
        f"read back in batches of 256 in {day['drain_read_s']:.1f} s"
    )
    holds = day["dropped"] == 0 and day["on_disk_bytes"] <= day["budget_bytes"]
    print(
        ("GOAL MET" if holds else "GOAL NOT MET")
        + f": a {args.hours:g} h outage at {args.rate:g}/s "
        + ("fits the default budget with nothing dropped" if holds else "does not fit the default budget")
    )
    if args.json:
        args.json.write_text(json.dumps({"append_us": cost, "infer_us": infer, "offline": day}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
