"""Measure a model variant: latency at fixed batch sizes, and accuracy against labels and against fp32.

Numbers here feed the planner, so they are measured the same way for every variant: one intra-op
thread (the unit a phone core or a planner slot stands for, and stable on a shared host), warm-up
runs first, then the median of timed runs.

Accuracy is scored at two batch sizes, the eval batch and one row, and the worse counts
(``eval_batches``, ``worst``). Dynamic int8 quantizes activations with one scale per tensor, computed
over the whole batch, so a request's output depends on the rows it is run with: on MiniLM, the
embeddings and first encoder layer at int8 score a cosine of 0.99795 in batches of 64 and 0.99687
one row at a time (256 eval rows). A phone answers one row at a time and a serving agent batches
whatever is queued, so a figure from one batch size alone would not bound what is served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import InvalidArgument
from common.types import TensorSpec
from controller.toolchain.evaldata import Array, EvalData, class_output, is_float

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MeasureConfig:
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup: int = 3
    runs: int = 20
    #: A slow variant stops after this many seconds per batch size (once it has ``min_runs``), so one
    #: pathological candidate (e.g. ConvInteger from dynamic int8 on a conv net) cannot stall an import.
    max_seconds: float = 2.0
    min_runs: int = 5
    #: Rows per inference call when scoring accuracy, besides one row at a time (a model with a fixed
    #: batch size uses that alone instead).
    eval_batch: int = 64
    #: Accuracy is scored on at most this many eval rows, and static int8 calibrates on at most
    #: ``calibration_rows``: enough for stable numbers while keeping an import within its time budget.
    max_eval_rows: int = 1000
    calibration_rows: int = 128

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InvalidArgument(f"batch sizes must be positive, got {self.batch_sizes}")
        if self.runs < 1 or self.min_runs < 1 or self.warmup < 0 or self.max_seconds <= 0:
            raise InvalidArgument("runs and min_runs must be >= 1, warmup >= 0, max_seconds > 0")
        if self.eval_batch < 1 or self.max_eval_rows < 1 or self.calibration_rows < 1:
            raise InvalidArgument("eval_batch, max_eval_rows and calibration_rows must be >= 1")


@dataclass(frozen=True, slots=True)
class AcceptanceFloor:
    """When a variant is accurate enough to offer to the planner.

    With labels: task accuracy at most ``max_accuracy_drop_points`` (percentage points) below fp32.
    Without: mean cosine similarity with fp32's float outputs at least ``min_cosine``; a model with no
    float output is judged by how often its class output agrees with fp32 (``min_agreement``).
    """

    max_accuracy_drop_points: float = 1.0
    min_cosine: float = 0.99
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_accuracy_drop_points <= 100.0:
            raise InvalidArgument(
                f"max accuracy drop must be 0..100 points, got {self.max_accuracy_drop_points}"
            )
        if not -1.0 <= self.min_cosine <= 1.0 or not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidArgument("min cosine must be within -1..1 and min agreement within 0..1")


@dataclass(frozen=True, slots=True)
class Metrics:
    accuracy: float | None = None  # task accuracy against the eval labels
    agreement: float | None = None  # fraction of rows whose predicted class equals fp32's
    cosine: float | None = None  # mean per-row cosine similarity with fp32 (the worst float output)
    max_abs_diff: float | None = None  # largest absolute difference from fp32 over float outputs
    nonfinite: bool = False  # NaN or inf where fp32 had a finite value


def open_session(model: bytes) -> Any:
    """An onnxruntime CPU session over ``model`` with one intra-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: a failing variant is reported by the toolchain itself
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def fixed_batch(inputs: Sequence[TensorSpec]) -> int:
    """The model's fixed batch size, or 0 when the batch dimension is dynamic."""
    return next((spec.shape[0] for spec in inputs if spec.shape and spec.shape[0] > 0), 0)


def run_eval(session: Any, data: EvalData, batch: int) -> dict[str, Array]:
    """Run every eval row through ``session`` in batches; per-row outputs concatenated by name."""
    names = [out.name for out in session.get_outputs()]
    chunks: dict[str, list[Array]] = {name: [] for name in names}
    for start in range(0, data.rows, batch):
        stop = min(start + batch, data.rows)
        for name, value in zip(names, session.run(names, data.feed(start, stop)), strict=True):
            arr = np.asarray(value)
            # Only outputs with one entry per row can be compared row by row; others are skipped.
            if arr.ndim >= 1 and arr.shape[0] == stop - start:
                chunks[name].append(arr)
    calls = -(-data.rows // batch)
    return {name: np.concatenate(parts) for name, parts in chunks.items() if len(parts) == calls}


def eval_batches(config: MeasureConfig, fixed: int) -> tuple[int, ...]:
    """The batch sizes accuracy is scored at: the model's fixed batch, else the eval batch and 1."""
    return (fixed,) if fixed else tuple(dict.fromkeys((config.eval_batch, 1)))


def worst(scores: Sequence[Metrics]) -> Metrics:
    """Each metric at its worst over ``scores`` (the same rows scored at different batch sizes): a
    quality figure that holds however the rows are batched. None where any score lacks it."""
    if not scores:
        return Metrics()

    def lowest(name: str) -> float | None:
        values = [getattr(m, name) for m in scores]
        return None if any(v is None for v in values) else min(values)

    diffs = [m.max_abs_diff for m in scores]
    return Metrics(
        accuracy=lowest("accuracy"),
        agreement=lowest("agreement"),
        cosine=lowest("cosine"),
        max_abs_diff=None if any(d is None for d in diffs) else max(d for d in diffs if d is not None),
        nonfinite=any(m.nonfinite for m in scores),
    )


def score(
    session: Any,
    data: EvalData,
    batches: Sequence[int],
    reference: Mapping[str, Array],
    specs: Sequence[TensorSpec],
) -> Metrics:
    """``session``'s eval outputs against the fp32 ``reference`` outputs, at their worst over
    ``batches`` (see the module docstring)."""
    return worst([evaluate(run_eval(session, data, b), reference, specs, data.labels) for b in batches])


def measure_latency(session: Any, data: EvalData, config: MeasureConfig, batch: int = 0) -> dict[int, float]:
    """Median milliseconds per call at each configured batch size (only ``batch`` if it is fixed)."""
    sizes = [s for s in config.batch_sizes if not batch or s == batch] or [batch]
    result: dict[int, float] = {}
    for size in sizes:
        feed = data.batch_of(size)
        for _ in range(config.warmup):
            session.run(None, feed)
        times: list[int] = []
        deadline = time.perf_counter() + config.max_seconds
        while len(times) < config.runs and (len(times) < config.min_runs or time.perf_counter() < deadline):
            start = time.perf_counter_ns()
            session.run(None, feed)
            times.append(time.perf_counter_ns() - start)
        result[size] = float(np.median(times)) / 1e6
    return result


def evaluate(
    outputs: Mapping[str, Array],
    reference: Mapping[str, Array],
    specs: Sequence[TensorSpec],
    labels: Array | None,
) -> Metrics:
    """Compare a variant's eval outputs with the fp32 ``reference`` outputs and with ``labels``."""
    # A float [N, C] output is read as class scores only when labels say the model is a classifier:
    # argmax over, say, a sentence embedding would be a meaningless "agreement".
    pred = _predictions(outputs, specs, labels is not None)
    ref_pred = _predictions(reference, specs, labels is not None)
    accuracy = None if labels is None or pred is None else float(np.mean(pred == labels))
    agreement = None if pred is None or ref_pred is None else float(np.mean(pred == ref_pred))

    cosines: list[float] = []
    diffs: list[float] = []
    nonfinite = False
    for spec in specs:
        if not is_float(spec) or spec.name not in outputs or spec.name not in reference:
            continue
        got = outputs[spec.name].reshape(len(outputs[spec.name]), -1).astype(np.float64)
        want = reference[spec.name].reshape(len(reference[spec.name]), -1).astype(np.float64)
        if got.shape != want.shape:
            nonfinite = True  # a variant whose output shape changed is as unusable as one emitting NaN
            continue
        bad = ~np.isfinite(got) & np.isfinite(want)
        if bad.any():
            nonfinite = True
            continue
        cosine = _mean_cosine(got, want)
        if cosine is not None:
            cosines.append(cosine)
        diffs.append(float(np.max(np.abs(got - want), initial=0.0)))
    return Metrics(
        accuracy=accuracy,
        agreement=agreement,
        cosine=min(cosines) if cosines else None,
        max_abs_diff=max(diffs) if diffs else None,
        nonfinite=nonfinite,
    )


def judge(metrics: Metrics, reference: Metrics, floor: AcceptanceFloor) -> tuple[bool, str]:
    """(accepted, the measured reason) for a variant against the fp32 ``reference`` metrics."""
    if metrics.nonfinite:
        return False, "produced NaN/inf or differently shaped outputs where fp32 did not"
    if metrics.accuracy is not None and reference.accuracy is not None:
        drop = (reference.accuracy - metrics.accuracy) * 100.0
        text = f"accuracy {metrics.accuracy:.4f} vs fp32 {reference.accuracy:.4f}"
        if drop > floor.max_accuracy_drop_points + 1e-9:
            return False, f"{text}: drop {drop:.1f} points > floor {floor.max_accuracy_drop_points:.1f}"
        change = (
            f"drop {drop:.1f} points"
            if drop >= 0.05
            else f"{-drop:.1f} points better"
            if drop <= -0.05
            else "no drop"
        )
        return True, f"{text}: {change}, floor {floor.max_accuracy_drop_points:.1f}"
    if metrics.cosine is not None:
        text = f"cosine to fp32 {metrics.cosine:.4f}"
        if metrics.cosine < floor.min_cosine:
            return False, f"{text} < floor {floor.min_cosine}"
        return True, f"{text} >= floor {floor.min_cosine}"
    if metrics.agreement is not None:
        text = f"agreement with fp32 {metrics.agreement:.4f}"
        if metrics.agreement < floor.min_agreement:
            return False, f"{text} < floor {floor.min_agreement}"
        return True, f"{text} >= floor {floor.min_agreement}"
    return False, "nothing to compare with fp32: the model has no float or class output per row"


def _predictions(outputs: Mapping[str, Array], specs: Sequence[TensorSpec], scores: bool) -> Array | None:
    spec = class_output(specs)
    if spec is None or spec.name not in outputs or (is_float(spec) and not scores):
        return None
    values = outputs[spec.name]
    return np.argmax(values, axis=-1) if is_float(spec) else values


def _mean_cosine(got: Array, want: Array) -> float | None:
    """Mean per-row cosine similarity over the rows where fp32's output is not all zero.

    A zero reference row has no direction, so any tiny non-zero output would score 0 there; such rows
    are left out (max_abs_diff still covers them). None when every reference row is zero.
    """
    want_norm = np.linalg.norm(want, axis=1)
    got_norm = np.linalg.norm(got, axis=1)
    rows = want_norm > 0
    if not rows.any():
        return None
    denom = want_norm[rows] * got_norm[rows]
    dot = np.sum(got[rows] * want[rows], axis=1)
    # A zero variant row against a non-zero reference row shares no direction: 0.
    cos = np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
    return float(np.mean(cos))
