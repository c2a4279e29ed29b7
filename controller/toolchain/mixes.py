"""Accuracy of mixed-precision plans: what each block costs when lowered alone, whether those costs
add up, and the exact quality of one plan.

A plan runs the model as segments, each at one precision. Measuring every plan a planner considers
would be far too slow, so an import measures each profiled block alone (``block_sensitivity``): block
k at precision p, every other block at fp32. The fp32 tensors at every block boundary are computed
once, so lowering block k costs one run of block k at p plus the fp32 blocks after it, about half a
model pass per (block, precision). The planner then predicts a plan additively (``predict``):

    q(plan) = q_fp32 - sum over the plan's blocks at p != fp32 of (q_fp32 - q(block alone at p))

for each metric as ``measure`` scores whole variants (task accuracy with labels, else mean cosine to
fp32, and agreement for class outputs). ``check_additivity`` measures real mixes (every cut with the
head at another precision than the tail, and some three-segment mixes) next to their prediction;
``evaluate_mix`` measures one plan exactly, each segment built whole as it would be deployed.

Quality is scored on the same rows everywhere it is compared: the first ``SENSITIVITY_ROWS`` eval
rows for the sensitivities and the additivity check. ``q_fp32`` on those rows is part of the result
(``SensitivityTable.reference``), so a prediction never mixes rows. Every score is taken in batches
of ``EVAL_BATCH`` and one row at a time, and the worse counts (``EVAL_BATCHES``): dynamic int8
quantizes activations per batch, so a block's loss depends on how its rows are batched.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import InvalidArgument
from common.timing import first_line
from common.types import BlockAccuracy, TensorSpec
from controller.toolchain.evaldata import Array, EvalData
from controller.toolchain.measure import Metrics, evaluate, open_session, worst
from controller.toolchain.profile import ProfileTable
from controller.toolchain.segments import Segment, Segmenter

logger = logging.getLogger(__name__)

Bound = int | None
#: Eval rows the block sensitivities (and the additivity check) are scored on: enough for stable
#: cosines, few enough that MiniLM's import (2 precisions x 9 blocks) stays well inside its budget.
SENSITIVITY_ROWS = 256
#: Rows per inference call (a model with a fixed batch uses that instead).
EVAL_BATCH = 64
#: Every quality here is scored in batches of ``EVAL_BATCH`` and one row at a time, the worse kept:
#: dynamic int8 scores differently at each (see ``measure``), and both are served.
EVAL_BATCHES = (EVAL_BATCH, 1)
#: The metrics a plan is judged by, in the order ``quality_metric`` prefers them.
METRICS = ("accuracy", "cosine", "agreement")


@dataclass(frozen=True, slots=True)
class Part:
    """A segment of a plan: the blocks from ``start`` to ``end`` (None: the model inputs / outputs)."""

    start: Bound
    end: Bound
    precision: str


Mix = tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class BlockSensitivity:
    start: Bound
    end: Bound
    precision: str
    metrics: Metrics  # of the whole model with only this block at ``precision``
    error: str = ""  # why it could not be measured (then ``metrics`` is empty)


@dataclass(frozen=True, slots=True, eq=False)
class SensitivityTable:
    boundaries: tuple[Bound, ...]  # as ``ProfileTable.boundaries``
    rows: int  # eval rows scored
    reference: Metrics  # fp32 against itself (and the labels) on those rows: q_fp32
    blocks: tuple[BlockSensitivity, ...]

    @classmethod
    def from_block_accuracy(
        cls, boundaries: Sequence[Bound], rows: Sequence[BlockAccuracy]
    ) -> SensitivityTable:
        """The table as a model stores it (``Model.block_accuracy``: 0 for None, the fp32 reference
        as the 0..0 fp32 entry), for ``predict``; rows is 0 (the stored rows are not recorded)."""
        reference = Metrics()
        blocks: list[BlockSensitivity] = []
        for b in rows:
            metrics = Metrics(accuracy=b.accuracy, agreement=b.agreement, cosine=b.cosine)
            if (b.start_cut, b.end_cut, b.precision) == (0, 0, "fp32"):
                reference = metrics
            else:
                blocks.append(
                    BlockSensitivity(b.start_cut or None, b.end_cut or None, b.precision, metrics, b.error)
                )
        return cls(tuple(boundaries), 0, reference, tuple(blocks))

    def block(self, start: Bound, end: Bound, precision: str) -> BlockSensitivity | None:
        return next(
            (b for b in self.blocks if (b.start, b.end, b.precision) == (start, end, precision)), None
        )


@dataclass(frozen=True, slots=True)
class MixCheck:
    mix: Mix
    measured: Metrics
    predicted: Metrics

    def error(self, metric: str) -> float | None:
        """|predicted - measured| for ``metric`` (None where either is missing)."""
        got, want = getattr(self.predicted, metric), getattr(self.measured, metric)
        return None if got is None or want is None else abs(got - want)


@dataclass(frozen=True, slots=True, eq=False)
class AdditivityReport:
    rows: int
    reference: Metrics
    checks: tuple[MixCheck, ...]

    def errors(self, metric: str) -> list[float]:
        return [e for c in self.checks if (e := c.error(metric)) is not None]

    def summary(self) -> dict[str, Any]:
        """Per metric: how many mixes, the median and max absolute prediction error."""
        out: dict[str, Any] = {"mixes": len(self.checks), "rows": self.rows}
        for metric in METRICS:
            errors = self.errors(metric)
            if errors:
                out[metric] = {
                    "mixes": len(errors),
                    "median_error": statistics.median(errors),
                    "max_error": max(errors),
                }
        return out


def quality_metric(metrics: Metrics) -> str | None:
    """The metric a model is judged by: accuracy with labels, else cosine, else agreement."""
    return next((m for m in METRICS if getattr(metrics, m) is not None), None)


def block_sensitivity(
    table: ProfileTable,
    data: EvalData,
    outputs: Sequence[TensorSpec],
    *,
    rows: int = SENSITIVITY_ROWS,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = EVAL_BATCHES,
) -> SensitivityTable:
    """Quality of the model with one block at a time lowered to each precision of ``table`` below
    fp32 (or ``precisions``), every other block at fp32, on the first ``rows`` eval rows. Uses the
    blocks ``profile_blocks`` built (nothing is built again), scored at each of ``batches`` rows per
    call with the worst kept (``measure.worst``; a model with a fixed batch needs exactly that one).
    A block that did not build or does not run is kept with its error; without the fp32 blocks
    nothing can be measured and every entry says so."""
    subset = data.head(rows)
    positions = range(len(table.boundaries) - 1)
    wanted = [p for p in (precisions or list(table.methods)) if p != "fp32"]
    spans = [(table.boundaries[k], table.boundaries[k + 1]) for k in positions]
    fp32 = [table.segment(k, "fp32") for k in positions]
    if any(seg is None for seg in fp32):
        failed = [
            BlockSensitivity(s, e, p, Metrics(), "the fp32 blocks did not build")
            for p in wanted
            for s, e in spans
        ]
        return SensitivityTable(table.boundaries, subset.rows, Metrics(), tuple(failed))
    chain = [_Stage(seg) for seg in fp32 if seg is not None]
    # The fp32 tensors at every boundary, per batch size: lowering block k re-runs only k onwards.
    runs = [_Batched(_batches(subset.rows, size)) for size in batches]
    for run in runs:
        run.envs = [_run(chain, subset.feed(a, b)) for a, b in run.ranges]
    reference_outputs = _outputs(runs[0].envs, runs[0].ranges, outputs)
    reference = evaluate(reference_outputs, reference_outputs, outputs, subset.labels)
    results: list[BlockSensitivity] = []
    for precision in wanted:
        for k, (start, end) in enumerate(spans):
            seg = table.segment(k, precision)
            if seg is None:
                results.append(BlockSensitivity(start, end, precision, Metrics(), "not built"))
                continue
            if seg.onnx_bytes == chain[k].segment.onnx_bytes:
                # Nothing to lower here (int4 without a MatMul): the block is the fp32 graph.
                results.append(BlockSensitivity(start, end, precision, reference))
                continue
            try:
                lowered = [_Stage(seg), *chain[k + 1 :]]
                scores = [
                    evaluate(
                        _outputs([_run(lowered, env) for env in run.envs], run.ranges, outputs),
                        reference_outputs,
                        outputs,
                        subset.labels,
                    )
                    for run in runs
                ]
            # onnxruntime raises untyped errors; a block that cannot run is a measured outcome.
            except Exception as exc:
                results.append(
                    BlockSensitivity(start, end, precision, Metrics(), f"failed to run: {first_line(exc)}")
                )
                continue
            results.append(BlockSensitivity(start, end, precision, worst(scores)))
    logger.info(
        "block sensitivity: %d blocks x %s on %d rows at batch %s, reference %s",
        len(spans),
        wanted,
        subset.rows,
        "/".join(map(str, batches)),
        _brief(reference),
    )
    return SensitivityTable(table.boundaries, subset.rows, reference, tuple(results))


def predict(mix: Mix, table: SensitivityTable) -> Metrics:
    """The additive prediction for ``mix`` from the block sensitivities: per metric, fp32's quality
    less what each lowered block cost alone (None where a needed number is missing)."""
    bounds = list(table.boundaries)
    values: dict[str, float | None] = {m: getattr(table.reference, m) for m in METRICS}
    for part in mix:
        if part.precision == "fp32":
            continue
        for k in _span(bounds, part.start, part.end):
            block = table.block(bounds[k], bounds[k + 1], part.precision)
            for metric in METRICS:
                base, alone = values[metric], None if block is None else getattr(block.metrics, metric)
                ref = getattr(table.reference, metric)
                values[metric] = (
                    None if base is None or alone is None or ref is None else base - (ref - alone)
                )
    return Metrics(accuracy=values["accuracy"], cosine=values["cosine"], agreement=values["agreement"])


def default_mixes(boundaries: Sequence[Bound], precisions: Sequence[str]) -> list[Mix]:
    """Every cut with the head at another precision than the tail, plus, around two cuts a third and
    two thirds of the way in, every ``p, q, p`` three-segment mix of two different precisions."""
    cuts = list(boundaries[1:-1])
    pairs = [(p, q) for p, q in itertools.product(precisions, repeat=2) if p != q]
    mixes: list[Mix] = [(Part(None, c, p), Part(c, None, q)) for c in cuts for p, q in pairs]
    if len(cuts) >= 2:
        a, b = cuts[len(cuts) // 3], cuts[(2 * len(cuts)) // 3]
        if a == b:
            a, b = cuts[0], cuts[-1]
        mixes += [(Part(None, a, p), Part(a, b, q), Part(b, None, p)) for p, q in pairs]
    return mixes


def check_additivity(
    segmenter: Segmenter,
    methods: Mapping[str, str],
    sensitivity: SensitivityTable,
    data: EvalData,
    outputs: Sequence[TensorSpec],
    mixes: Sequence[Mix] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> AdditivityReport:
    """Measure each mix (``default_mixes`` over the precisions of ``methods`` if None) with every
    segment built whole, as it would be deployed, on the rows the sensitivities were scored on, and
    set the additive prediction next to it."""
    chosen = list(mixes) if mixes is not None else default_mixes(sensitivity.boundaries, list(methods))
    subset = data.head(sensitivity.rows)
    reference = _reference(segmenter, subset, outputs)
    checks: list[MixCheck] = []
    for i, mix in enumerate(chosen, start=1):
        measured = _score_mix(segmenter, mix, methods, subset, outputs, reference)
        checks.append(MixCheck(mix, measured, predict(mix, sensitivity)))
        if progress is not None:
            progress(i, len(chosen))
    report = AdditivityReport(subset.rows, sensitivity.reference, tuple(checks))
    logger.info("additive accuracy model over %d mixes: %s", len(checks), report.summary())
    return report


def evaluate_mix(
    segmenter: Segmenter, mix: Mix, methods: Mapping[str, str], data: EvalData, outputs: Sequence[TensorSpec]
) -> Metrics:
    """The quality of ``mix`` on ``data``, each segment built whole with the method of its precision,
    scored against the fp32 model's outputs (and the labels) as whole variants are."""
    reference = _reference(segmenter, data, outputs)
    return _score_mix(segmenter, mix, methods, data, outputs, reference)


def check_mix(mix: Mix, boundaries: Sequence[Bound], precisions: Sequence[str]) -> list[str]:
    """Every reason ``mix`` is not a plan over ``boundaries``: it must start at the model inputs, each
    segment where the last ended, end at the model outputs, on those boundaries, at those precisions."""
    problems: list[str] = []
    inner = {b for b in boundaries[1:-1] if b is not None}
    if not mix:
        return ["no segments"]
    expected: Bound = None
    for i, part in enumerate(mix):
        where = f"segments[{i}]"
        for name, bound in (("start_cut", part.start), ("end_cut", part.end)):
            if bound is not None and bound not in inner:
                problems.append(f"{where}.{name}: {bound} is not a profiled cut point ({_cuts(inner)})")
        if part.start != expected:
            problems.append(
                f"{where}.start_cut: {_text(part.start)} does not continue where "
                + ("the model starts (0)" if i == 0 else f"segments[{i - 1}] ended ({_text(expected)})")
            )
        if part.end is not None and part.start is not None and part.end <= part.start:
            problems.append(f"{where}: end_cut {part.end} is not after start_cut {part.start}")
        if part.end is None and i < len(mix) - 1:
            problems.append(
                f"{where}.end_cut: 0 (the model outputs) but {len(mix) - i - 1} segment(s) follow"
            )
        if part.precision not in precisions:
            problems.append(
                f"{where}.precision: {part.precision!r} is not an accepted precision of this model "
                f"({', '.join(precisions)})"
            )
        expected = part.end
    if mix[-1].end is not None:
        problems.append(
            f"segments[{len(mix) - 1}].end_cut: {mix[-1].end}, but the last segment must end at the model outputs (0)"
        )
    return problems


# --- running chains of segments ------------------------------------------------------------------


class _Stage:
    """A segment with its session opened once (a MiniLM block takes a while to load)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.session = open_session(segment.onnx_bytes)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]


@dataclass(slots=True)
class _Batched:
    """The row ranges of one batch size and the tensors the fp32 chain computed on each."""

    ranges: list[tuple[int, int]]
    envs: list[dict[str, Array]] = dataclasses.field(default_factory=list)


def _run(stages: Sequence[_Stage], feed: Mapping[str, Array]) -> dict[str, Array]:
    """Every tensor seen when ``stages`` run in order on ``feed`` (as ``segments.run_segments``)."""
    env: dict[str, Array] = dict(feed)
    for stage in stages:
        values = stage.session.run(stage.outputs, {name: env[name] for name in stage.inputs})
        env.update(zip(stage.outputs, (np.asarray(v) for v in values), strict=True))
    return env


def _batches(rows: int, batch: int) -> list[tuple[int, int]]:
    """Row ranges of ``batch`` rows (the last may be shorter) covering ``rows`` rows."""
    return [(a, min(a + batch, rows)) for a in range(0, rows, batch)]


def _outputs(
    envs: Sequence[Mapping[str, Array]], batches: Sequence[tuple[int, int]], specs: Sequence[TensorSpec]
) -> dict[str, Array]:
    """The model outputs with one entry per row, concatenated over the batches (as ``run_eval``)."""
    out: dict[str, Array] = {}
    for spec in specs:
        parts = [env[spec.name] for env in envs if spec.name in env]
        if len(parts) == len(batches) and all(
            p.ndim >= 1 and p.shape[0] == b - a for p, (a, b) in zip(parts, batches, strict=True)
        ):
            out[spec.name] = np.concatenate(parts)
    return out


def _reference(segmenter: Segmenter, data: EvalData, outputs: Sequence[TensorSpec]) -> dict[str, Array]:
    """The fp32 model's outputs (fp32 does not depend on the batch: one batch size is enough)."""
    whole = (Part(None, None, "fp32"),)
    return _run_mix(
        segmenter, whole, {"fp32": "fp32"}, data, outputs, eval_batches(segmenter.graph.fixed_batch)[:1]
    )[0]


def _score_mix(
    segmenter: Segmenter,
    mix: Mix,
    methods: Mapping[str, str],
    data: EvalData,
    outputs: Sequence[TensorSpec],
    reference: Mapping[str, Array],
) -> Metrics:
    """``mix`` against the fp32 ``reference`` outputs, at its worst over the eval batch sizes."""
    runs = _run_mix(segmenter, mix, methods, data, outputs, eval_batches(segmenter.graph.fixed_batch))
    return worst([evaluate(got, reference, outputs, data.labels) for got in runs])


def eval_batches(fixed_batch: int) -> tuple[int, ...]:
    """The batch sizes a model is scored at: its fixed batch alone, else ``EVAL_BATCHES``."""
    return (fixed_batch,) if fixed_batch else EVAL_BATCHES


def _run_mix(
    segmenter: Segmenter,
    mix: Mix,
    methods: Mapping[str, str],
    data: EvalData,
    outputs: Sequence[TensorSpec],
    batches: Sequence[int],
) -> list[dict[str, Array]]:
    """The model outputs of ``mix`` on ``data``, once per batch size of ``batches``."""
    unknown = sorted({p.precision for p in mix} - set(methods))
    if unknown:
        raise InvalidArgument(f"no method for precision {', '.join(map(repr, unknown))}")
    stages = [_Stage(segmenter.segment(p.start, p.end, methods[p.precision])) for p in mix]
    out: list[dict[str, Array]] = []
    for size in batches:
        ranges = _batches(data.rows, size)
        out.append(_outputs([_run(stages, data.feed(a, b)) for a, b in ranges], ranges, outputs))
    return out


def _span(bounds: Sequence[Bound], start: Bound, end: Bound) -> range:
    last = len(bounds) - 1
    try:
        first = 0 if start is None else bounds.index(start, 1, last)
        stop = last if end is None else bounds.index(end, 1, last)
    except ValueError:
        raise InvalidArgument(
            f"{_text(start)}..{_text(end)} does not start and end on profiled cut points"
        ) from None
    return range(first, stop)


def _brief(m: Metrics) -> dict[str, float]:
    return {k: round(v, 4) for k, v in dataclasses.asdict(m).items() if isinstance(v, float)}


def _cuts(inner: set[int]) -> str:
    return (
        "profiled: " + (", ".join(map(str, sorted(inner))) or "none") + "; 0 is the model inputs or outputs"
    )


def _text(bound: Bound) -> str:
    return "0" if bound is None else str(bound)
