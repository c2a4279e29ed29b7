"""Time a model's blocks on this device, as the controller host times them at import.

The controller sends a ``ProfileRequest``: block artifacts (each block between two cut points at one
precision) and an ``.npz`` of model-input rows. A block's inputs are made by running the fp32 blocks
in order on those rows (batch b: the first b rows, tiled when there are fewer), so an index tensor
that crosses a cut stays in range. Then, per precision and batch size, the blocks of that precision
are timed round-robin with the call-overhead model by ``common.timing`` (the loop the controller's
``profile_blocks`` uses, with the same one-intra-op-thread sessions), so the numbers compare with the
host's and with other devices'. A block that fails to load or run is reported with its error, never
dropped; nothing here raises for a bad artifact or input.

Blocking and CPU-bound: the daemon runs ``profile_blocks`` in a worker thread, one at a time, so
serving goes on. Then, on its event loop, ``with_dispatch`` adds what the agent's own serving path
costs per segment call beyond the model call (``measure_dispatch``): a block profile times
``session.run`` alone, but a served segment also goes through the batch queue to its worker thread
and back, and a phone's own segment to the executor and back (``bench/partition.py`` measured
0.2-0.3 ms per segment on the 2-core development box beyond the profiles, where a MiniLM layer
takes about 1 ms). The planner adds it once per segment. Nothing
here logs: the daemon reports what happened, with the device id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.serving.batcher import DynamicBatcher
from common.timing import (
    OVERHEAD_INPUT,
    TimingConfig,
    eviction_bytes,
    first_line,
    overhead_model,
    time_round_robin,
)
from common.types import BlockTiming, CallOverhead, ProfileBlock, ProfileReport, ProfileRequest

#: As the controller's import profile: a small config, the request chooses the number of runs.
WARMUP = 1
MIN_RUNS = 3
MAX_SECONDS = 0.25
BURST = 5
#: The dispatch probe: calls through the serving path (and as many direct ones), at most this long.
DISPATCH_RUNS = 200
DISPATCH_SECONDS = 0.5
#: The quantile of the served calls taken as the dispatch cost (see ``measure_dispatch``).
DISPATCH_QUANTILE = 0.25
#: A dispatch cost above this is a loop too busy to measure anything, not a cost to plan with.
MAX_DISPATCH_MS = 5.0

_Key = tuple[int, int, str]


def profile_blocks(request: ProfileRequest, artifacts: Mapping[str, Path], inputs: Path) -> ProfileReport:
    """The report for ``request``: every block at every batch size (latency or error), and the call
    overhead per batch size. ``artifacts`` maps each block's sha256 to its file; ``inputs`` is the
    ``.npz`` of model-input rows. A problem with the inputs or the fp32 chain is the report's error."""
    try:
        rows = _load_inputs(inputs)
    except ValueError as exc:
        return _failed(request, str(exc))
    chain = _fp32_chain(request.blocks)
    if isinstance(chain, str):
        return _failed(request, chain)
    sessions: dict[_Key, Any] = {}
    load_errors: dict[_Key, str] = {}
    for block in request.blocks:
        key = (block.start_cut, block.end_cut, block.precision)
        path = artifacts.get(block.artifact_sha256)
        try:
            if path is None:
                raise FileNotFoundError(f"artifact {block.artifact_sha256[:12]} is not in the cache")
            sessions[key] = _open_session(path.read_bytes())
        except Exception as exc:  # onnxruntime raises its own untyped errors; each is this block's outcome
            load_errors[key] = f"failed to load: {first_line(exc)}"
    overhead = _open_session(overhead_model())
    config = TimingConfig(
        warmup=WARMUP,
        runs=request.runs,
        min_runs=min(MIN_RUNS, request.runs),
        max_seconds=MAX_SECONDS,
        burst=BURST,
        evict_bytes=eviction_bytes(),
    )
    precisions = list(dict.fromkeys(b.precision for b in request.blocks))
    timings: list[BlockTiming] = []
    overheads: dict[int, list[float]] = {}
    for batch in request.batch_sizes:
        env, chain_errors = _block_inputs(chain, sessions, load_errors, rows, batch)
        env[OVERHEAD_INPUT] = np.zeros((batch, 1), dtype=np.float32)
        for precision in precisions:
            blocks = [b for b in request.blocks if b.precision == precision]
            calls: list[Callable[[], object] | None] = [_call(overhead, env)]
            errors: list[str] = [""]
            for block in blocks:
                key = (block.start_cut, block.end_cut, block.precision)
                session = sessions.get(key)
                error = load_errors.get(key, "")
                if session is not None and not error:
                    missing = [i.name for i in session.get_inputs() if i.name not in env]
                    if missing:
                        error = chain_errors.get(block.start_cut) or f"no inputs {missing}"
                calls.append(None if error or session is None else _call(session, env))
                errors.append(error)
            times, run_errors = time_round_robin(calls, config)
            if times[0] is not None:
                overheads.setdefault(batch, []).append(times[0])
            for block, ms, error, run_error in zip(
                blocks, times[1:], errors[1:], run_errors[1:], strict=True
            ):
                problem = error or run_error
                timings.append(
                    BlockTiming(
                        block.start_cut,
                        block.end_cut,
                        block.precision,
                        batch,
                        0.0 if problem or ms is None else ms,
                        problem or ("" if ms is not None else "not measured"),
                    )
                )
    return ProfileReport(
        request_id=request.request_id,
        model_name=request.model_name,
        timings=tuple(timings),
        call_overhead=tuple(CallOverhead(b, statistics.median(v)) for b, v in overheads.items()),
    )


async def measure_dispatch(batch_sizes: tuple[int, ...] = (1,)) -> dict[int, float]:
    """Per batch size, the median milliseconds one call costs through the serving path (a
    ``DynamicBatcher`` with batching off and its own worker thread, as ``SegmentHost`` serves a
    segment: queue, dispatcher task, thread hand-off and back) beyond the same ``session.run`` of the
    do-nothing model called directly, at most ``MAX_DISPATCH_MS``. Calls alternate between the two.
    The served call also waits for whatever else the event loop is doing, which the direct one does
    not, so the figure is the ``DISPATCH_QUANTILE`` of the served times (the hand-off itself, not
    the loop's other work of the moment) less the median direct time. Must run on the event loop
    that serves; the session is made in a worker thread."""
    session = await asyncio.to_thread(_open_session, overhead_model())
    out: dict[int, float] = {}
    for batch in dict.fromkeys(batch_sizes):
        feed = {OVERHEAD_INPUT: np.zeros((batch, 1), dtype=np.float32)}

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"y": session.run(None, dict(feeds))[0]}

        batcher = DynamicBatcher(run, max_batch_size=1, max_queue_delay_s=0.0, name="dispatch-probe")
        served: list[float] = []
        direct: list[float] = []
        try:
            await batcher.submit(feed)  # the worker thread exists from here on
            stop = time.perf_counter() + DISPATCH_SECONDS
            while len(served) < DISPATCH_RUNS and time.perf_counter() < stop:
                begin = time.perf_counter()
                run(feed)
                direct.append(time.perf_counter() - begin)
                begin = time.perf_counter()
                await batcher.submit(feed)
                served.append(time.perf_counter() - begin)
        finally:
            await batcher.aclose()
        cost = float(np.quantile(served, DISPATCH_QUANTILE)) - statistics.median(direct)
        out[batch] = min(max(0.0, cost * 1e3), MAX_DISPATCH_MS)
    return out


async def with_dispatch(report: ProfileReport) -> ProfileReport:
    """``report`` with ``dispatch_ms`` measured (``measure_dispatch``) on each call overhead entry."""
    if not report.call_overhead:
        return report
    dispatch = await measure_dispatch(tuple(c.batch_size for c in report.call_overhead))
    return dataclasses.replace(
        report,
        call_overhead=tuple(
            dataclasses.replace(c, dispatch_ms=dispatch.get(c.batch_size, 0.0)) for c in report.call_overhead
        ),
    )


def _load_inputs(path: Path) -> dict[str, np.ndarray]:
    """The model-input rows; ValueError naming the problem (never unpickles anything)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    # numpy and zipfile report a missing, truncated or non-npz file with assorted exception types.
    except Exception as exc:
        raise ValueError(f"the profile inputs are not a readable .npz: {first_line(exc)}") from exc
    if not arrays:
        raise ValueError("the profile inputs hold no arrays")
    counts = {name: arr.shape[0] if arr.ndim else 0 for name, arr in arrays.items()}
    if min(counts.values()) < 1 or len(set(counts.values())) != 1:
        raise ValueError(
            f"the profile inputs need the same positive number of rows in every array, got {counts}"
        )
    return arrays


def _fp32_chain(blocks: tuple[ProfileBlock, ...]) -> list[_Key] | str:
    """The fp32 blocks from the model inputs (start 0) to its outputs (end 0), in order; else why not."""
    by_start = {b.start_cut: b for b in blocks if b.precision == "fp32"}
    chain: list[_Key] = []
    start = 0
    while start in by_start:
        block = by_start[start]
        chain.append((block.start_cut, block.end_cut, block.precision))
        if block.end_cut == 0:
            return chain
        start = block.end_cut
    return (
        f"the fp32 blocks do not chain from the model inputs to its outputs (missing one starting at {start})"
    )


def _block_inputs(
    chain: list[_Key],
    sessions: Mapping[_Key, Any],
    load_errors: Mapping[_Key, str],
    rows: Mapping[str, np.ndarray],
    batch: int,
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Every tensor crossing a block boundary for ``batch`` rows, made by the fp32 chain; and for the
    blocks after an fp32 block that failed, by their start cut, why their inputs are missing."""
    count = next(iter(rows.values())).shape[0]
    index = np.arange(batch) % count  # the first ``batch`` rows, tiled when there are fewer
    env: dict[str, np.ndarray] = {name: np.ascontiguousarray(arr[index]) for name, arr in rows.items()}
    errors: dict[int, str] = {}
    for position, key in enumerate(chain):
        session = sessions.get(key)
        try:
            if session is None:
                raise RuntimeError(load_errors.get(key) or "not loaded")
            names = [o.name for o in session.get_outputs()]
            values = session.run(names, {i.name: env[i.name] for i in session.get_inputs()})
        except Exception as exc:  # onnxruntime's errors are untyped
            reason = f"no inputs: fp32 block {key[0]}..{key[1]} failed making them ({first_line(exc)})"
            for later in chain[position + 1 :]:
                errors[later[0]] = reason
            break
        env.update(zip(names, (np.asarray(v) for v in values), strict=True))
    return env, errors


def _call(session: Any, env: Mapping[str, np.ndarray]) -> Callable[[], object]:
    feed = {i.name: env[i.name] for i in session.get_inputs()}
    return functools.partial(session.run, None, feed)


def _open_session(model: bytes) -> Any:
    """A CPU session with one intra-op thread: the settings the controller host profiles with."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: a failing block is reported by the profiler itself
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _failed(request: ProfileRequest, error: str) -> ProfileReport:
    return ProfileReport(request_id=request.request_id, model_name=request.model_name, error=error)
