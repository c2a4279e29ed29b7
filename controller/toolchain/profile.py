"""Block profiles: measured latency of each block between consecutive cut points, per precision and
batch size, and how well their sum predicts the latency of a whole segment.

A block is timed as its own extracted segment with ``measure``'s session settings and counts (one
intra-op thread, warm-up, median of the timed runs), on the tensors that really reach it: the eval
rows are run through the fp32 blocks first, so an index tensor (digits' ArgMax) stays in range. The
blocks of one precision (and the segments of a check) are timed round-robin; see ``_time_together``.
Every timed call starts with the last-level cache evicted (``common.timing.eviction_bytes``), as a
served request finds it.

Additive model with a per-call overhead: every block's time includes one onnxruntime call (binding
inputs and outputs, launching the executor), but a segment of m blocks pays it once, so

    predicted(segment) = sum(block times) - (m - 1) * overhead

where ``overhead`` is the time of one call to a model that does nothing (an Identity on a [batch, 1]
tensor). On a small model (digits: microseconds per node) the overhead is most of each block's time
and the plain sum overshoots badly; on a large one (MiniLM) it is a small correction. The plain sum
is reported next to it so the correction can be judged.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from common.errors import InvalidArgument
from common.timing import (
    OVERHEAD_INPUT,
    OVERHEAD_OUTPUT,
    TimingConfig,
    eviction_bytes,
    first_line,
    overhead_model,
    time_round_robin,
)
from controller.toolchain.evaldata import Array, EvalData
from controller.toolchain.measure import MeasureConfig, open_session
from controller.toolchain.partition import CutPoint
from controller.toolchain.segments import DEFAULT_METHODS, Segment, Segmenter, run_segments

logger = logging.getLogger(__name__)

#: Called as progress(step_done, steps_total, message), like the variant build's progress.
ProgressFn = Callable[[int, int, str], None]
Bound = int | None
#: Calls per segment per round of the round-robin timing (see ``_time_together``).
BURST = 5


@dataclass(frozen=True, slots=True)
class BlockProfile:
    start: int | None  # None: the model inputs
    end: int | None  # None: the model outputs
    precision: str
    method: str
    batch: int
    latency_ms: float | None  # None when the block failed to build or run (see error)
    size_bytes: int = 0
    note: str = ""  # e.g. "int4 had nothing to convert here; this is the fp32 graph"
    error: str = ""
    sha256: str = ""  # of the block's ONNX as built ('' when it failed to build)


@dataclass(frozen=True, slots=True, eq=False)
class ProfileTable:
    source_sha256: str
    boundaries: tuple[int | None, ...]  # (None, c1, ..., ck, None): block k spans k..k+1
    methods: Mapping[str, str]  # precision -> method that built its blocks
    batch_sizes: tuple[int, ...]
    blocks: tuple[BlockProfile, ...]
    overhead_ms: Mapping[int, float]  # batch -> one call to an Identity model
    #: The built blocks, by (start, end, precision): what was timed, kept so an import can store them
    #: and measure their accuracy without building them again (not part of ``as_dict``).
    segments: Mapping[tuple[Bound, Bound, str], Segment] = field(default_factory=dict)

    def segment(self, position: int, precision: str) -> Segment | None:
        """The built block ``position`` at ``precision`` (None: it failed to build)."""
        return self.segments.get((self.boundaries[position], self.boundaries[position + 1], precision))

    def block(self, position: int, precision: str, batch: int) -> BlockProfile:
        """Block ``position`` (0-based, between boundaries ``position`` and ``position + 1``)."""
        start, end = self.boundaries[position], self.boundaries[position + 1]
        for b in self.blocks:
            if (b.start, b.end, b.precision, b.batch) == (start, end, precision, batch):
                return b
        raise InvalidArgument(f"no profile for block {position} at {precision}, batch {batch}")

    def span(self, start: Bound, end: Bound) -> range:
        """Positions of the blocks that make up the segment from ``start`` to ``end``."""
        last = len(self.boundaries) - 1
        try:
            first = 0 if start is None else self.boundaries.index(start, 1, last)
            stop = last if end is None else self.boundaries.index(end, 1, last)
        except ValueError:
            raise InvalidArgument(f"{start}..{end} does not start and end on profiled cut points") from None
        if stop <= first:
            raise InvalidArgument(f"a segment must end after it starts: got {start}..{end}")
        return range(first, stop)

    def predict(
        self, start: Bound, end: Bound, precision: str, batch: int, *, overhead: bool = True
    ) -> float | None:
        """Predicted milliseconds for the segment; None if one of its blocks has no measurement."""
        times = [self.block(k, precision, batch).latency_ms for k in self.span(start, end)]
        if any(t is None for t in times):
            return None
        total = sum(t for t in times if t is not None)
        return total - (len(times) - 1) * self.overhead_ms[batch] if overhead else total

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_sha256": self.source_sha256,
            "boundaries": list(self.boundaries),
            "methods": dict(self.methods),
            "batch_sizes": list(self.batch_sizes),
            "overhead_ms": {str(b): ms for b, ms in self.overhead_ms.items()},
            "blocks": [dataclasses.asdict(b) for b in self.blocks],
        }


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    start: int | None
    end: int | None
    precision: str
    batch: int
    blocks: int
    measured_ms: float
    predicted_ms: float  # with the overhead term
    naive_ms: float  # plain sum of the block times

    @property
    def error(self) -> float:
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def naive_error(self) -> float:
        return abs(self.naive_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True, slots=True, eq=False)
class PredictionReport:
    checks: tuple[SegmentCheck, ...]

    def median_error(self, *, naive: bool = False, multi_block: bool = True) -> float | None:
        """Median relative error of the prediction over the checked segments. Single-block segments
        are left out by default: their "prediction" is the block's own time, so their error is only
        the noise of timing the same graph twice (ask with ``multi_block=False`` to see that floor)."""
        errors = [c.naive_error if naive else c.error for c in self.checks if (c.blocks > 1) == multi_block]
        return statistics.median(errors) if errors else None

    def summary(self) -> dict[str, Any]:
        return {
            "segments": len({(c.start, c.end) for c in self.checks}),
            "median_error": self.median_error(),
            "median_error_without_overhead": self.median_error(naive=True),
            "median_error_single_block": self.median_error(multi_block=False),
        }


def profile_blocks(
    model: Segmenter | onnx.ModelProto | bytes,
    cut_points: Sequence[CutPoint | int] | None = None,
    precisions: Sequence[str] | Mapping[str, str] = ("fp32",),
    batch_sizes: Sequence[int] = (1, 32),
    *,
    data: EvalData,
    config: MeasureConfig | None = None,
    progress: ProgressFn | None = None,
) -> ProfileTable:
    """Time every block between consecutive ``cut_points`` (all of the model's if None) at each
    precision and batch size. ``precisions`` names precisions (built with their default method) or
    maps each precision to the method the variant build chose for it. ``data`` holds eval rows for
    the model inputs (they also calibrate static int8). A block that fails to build or run is kept
    in the table with its error, never dropped."""
    config = config or MeasureConfig()
    segmenter = _segmenter(model, data, config)
    methods = _methods(precisions)
    bounds = segmenter.boundaries(cut_points)
    batches = _batches(segmenter, batch_sizes)
    envs = {b: _fp32_tensors(segmenter, bounds, data, b) for b in batches}
    spans = list(itertools.pairwise(bounds))
    rows: list[BlockProfile] = []
    overheads: dict[int, list[float]] = {b: [] for b in batches}
    segments: dict[tuple[Bound, Bound, str], Segment] = {}
    for step, (precision, method) in enumerate(methods.items(), start=1):
        built = [_build(segmenter, start, end, method) for start, end in spans]
        segments.update(
            ((start, end, precision), seg) for (start, end), (seg, _) in zip(spans, built, strict=True) if seg
        )
        for batch in batches:
            times, errors = _time_together([_IDENTITY, *(seg for seg, _ in built)], envs[batch], config)
            if times[0] is not None:
                overheads[batch].append(times[0])
            for (start, end), (seg, error), ms, run_error in zip(
                spans, built, times[1:], errors[1:], strict=True
            ):
                size, note, sha = (
                    (len(seg.onnx_bytes), seg.note, seg.sha256) if seg is not None else (0, "", "")
                )
                rows.append(
                    BlockProfile(
                        start, end, precision, method, batch, ms, size, note, error or run_error, sha
                    )
                )
        if progress is not None:
            progress(step, len(methods), f"{len(spans)} blocks at {precision}")
    overhead = {b: statistics.median(v) if v else 0.0 for b, v in overheads.items()}
    logger.info(
        "profiled %d blocks x %d precisions x batches %s; call overhead %s ms",
        len(spans),
        len(methods),
        batches,
        {b: round(ms, 4) for b, ms in overhead.items()},
    )
    return ProfileTable(
        segmenter.graph.source_sha256, tuple(bounds), methods, tuple(batches), tuple(rows), overhead, segments
    )


def check_predictions(
    model: Segmenter | onnx.ModelProto | bytes,
    table: ProfileTable,
    *,
    data: EvalData,
    precisions: Sequence[str] | None = None,
    config: MeasureConfig | None = None,
) -> PredictionReport:
    """Measure every segment between two of the table's boundaries (every cut pair, plus heads,
    tails and the whole model) and compare with the table's prediction."""
    config = config or MeasureConfig()
    segmenter = _segmenter(model, data, config)
    if segmenter.graph.source_sha256 != table.source_sha256:
        raise InvalidArgument("the profile table was measured on a different model")
    bounds = list(table.boundaries)
    envs = {b: _fp32_tensors(segmenter, bounds, data, b) for b in table.batch_sizes}
    pairs = list(itertools.combinations(range(len(bounds)), 2))
    checks: list[SegmentCheck] = []
    for precision in precisions or list(table.methods):
        method = table.methods[precision]
        built = [_build(segmenter, bounds[i], bounds[j], method)[0] for i, j in pairs]
        for batch in table.batch_sizes:
            times, _ = _time_together(built, envs[batch], config)
            for (i, j), measured in zip(pairs, times, strict=True):
                start, end = bounds[i], bounds[j]
                predicted = table.predict(start, end, precision, batch)
                naive = table.predict(start, end, precision, batch, overhead=False)
                if measured is None or predicted is None or naive is None or measured <= 0:
                    continue
                checks.append(SegmentCheck(start, end, precision, batch, j - i, measured, predicted, naive))
    report = PredictionReport(tuple(checks))
    logger.info("block-sum prediction over %d segment timings: %s", len(checks), report.summary())
    return report


def _segmenter(
    model: Segmenter | onnx.ModelProto | bytes, data: EvalData, config: MeasureConfig
) -> Segmenter:
    if isinstance(model, Segmenter):
        return model
    return Segmenter(model, calibration=data.head(config.calibration_rows))


def _methods(precisions: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(precisions, Mapping):
        return dict(precisions)
    unknown = [p for p in precisions if p not in DEFAULT_METHODS]
    if unknown or not precisions:
        raise InvalidArgument(
            f"unknown precision {', '.join(map(repr, unknown)) or '(none given)'}: "
            f"choose from {', '.join(DEFAULT_METHODS)}"
        )
    return {p: DEFAULT_METHODS[p] for p in precisions}


def _batches(segmenter: Segmenter, batch_sizes: Sequence[int]) -> list[int]:
    if not batch_sizes or min(batch_sizes) < 1:
        raise InvalidArgument(f"batch sizes must be positive, got {list(batch_sizes)}")
    fixed = segmenter.graph.fixed_batch
    if fixed and set(batch_sizes) != {fixed}:
        logger.info("model has a fixed batch of %d: profiling only that, not %s", fixed, list(batch_sizes))
        return [fixed]
    return sorted(set(batch_sizes))


def _fp32_tensors(
    segmenter: Segmenter, bounds: Sequence[int | None], data: EvalData, batch: int
) -> dict[str, Array]:
    """Every tensor crossing a boundary when ``batch`` eval rows run through the fp32 blocks, plus
    the feed of the call-overhead model."""
    blocks = [segmenter.segment(a, b) for a, b in itertools.pairwise(bounds)]
    env = run_segments(blocks, data.batch_of(batch))
    env[_IDENTITY_INPUT] = np.zeros((batch, 1), dtype=np.float32)
    return env


def _build(segmenter: Segmenter, start: Bound, end: Bound, method: str) -> tuple[Segment | None, str]:
    try:
        return segmenter.segment(start, end, method), ""
    # Converters fail with every kind of exception; each is a measured outcome recorded against
    # the block, not a crash of the whole profile.
    except Exception as exc:
        logger.warning("building block %s..%s with %s failed: %s", start, end, method, exc)
        return None, _first_line(exc)


def _time_together(
    segments: Sequence[Segment | None], env: Mapping[str, Array], config: MeasureConfig
) -> tuple[list[float | None], list[str]]:
    """Median ms per call of each segment, timed round-robin by ``common.timing`` (the loop the agents
    use too, so their numbers compare with these): warm-up first, ``runs`` calls each in bursts of
    ``BURST``, fewer (>= ``min_runs``) once the group has taken ``max_seconds`` per member."""
    calls: list[Callable[[], object] | None] = []
    errors = ["" if seg is not None else "not built" for seg in segments]
    for k, seg in enumerate(segments):
        if seg is None:
            calls.append(None)
            continue
        try:
            session = open_session(seg.onnx_bytes)
        except Exception as exc:  # onnxruntime's errors are untyped
            errors[k] = f"failed to run: {_first_line(exc)}"
            calls.append(None)
            continue
        feed = {name: env[name] for name in seg.inputs}
        calls.append(functools.partial(session.run, None, feed))
    timing = TimingConfig(
        warmup=config.warmup,
        runs=config.runs,
        min_runs=config.min_runs,
        max_seconds=config.max_seconds,
        burst=BURST,
        evict_bytes=eviction_bytes(),
    )
    times, run_errors = time_round_robin(calls, timing)
    return times, [error or run_error for error, run_error in zip(errors, run_errors, strict=True)]


def _identity_segment() -> Segment:
    """A model that does nothing: its time is the fixed cost of one onnxruntime call."""
    return Segment("", None, None, "identity", overhead_model(), (_IDENTITY_INPUT,), (OVERHEAD_OUTPUT,))


def _first_line(exc: BaseException) -> str:
    return first_line(exc)


_IDENTITY_INPUT = OVERHEAD_INPUT
_IDENTITY = _identity_segment()
