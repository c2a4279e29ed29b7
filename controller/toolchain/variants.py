"""Build and measure the precision variants of one ONNX model: fp32, fp16, int8 and int4.

For each requested precision one or more methods (candidates) are built with onnxruntime's tools,
loaded, run over the eval data (in batches and one row at a time; the worse score counts, see
``measure``), compared with fp32 and timed. A candidate is accepted when it meets
the acceptance floor; where a precision has several accepted candidates (int8: dynamic per-channel,
the same after onnxruntime's transformer fusions, and static QDQ) the fastest at batch 1 wins, unless
others are within 10% of it, when the most accurate of those does. Nothing is dropped silently: every candidate of every requested precision comes back,
rejected ones with the measured reason.

All work happens in a private temp directory that is removed on success and on failure, so a
failing build leaves nothing behind (not even the large files some quantizers write on error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from common.errors import InvalidArgument
from common.types import TensorSpec
from controller.onnx_check import inspect_onnx
from controller.toolchain import quantize
from controller.toolchain.evaldata import EvalData, load_eval_data, validate_eval_data
from controller.toolchain.measure import (
    AcceptanceFloor,
    MeasureConfig,
    Metrics,
    eval_batches,
    evaluate,
    fixed_batch,
    judge,
    measure_latency,
    open_session,
    run_eval,
    score,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "int4")
#: Candidates within this latency ratio count as equally fast, and the more accurate one is kept.
SAME_SPEED_RATIO = 1.10

#: Called as progress(step_done, steps_total, message) after every candidate, for streamed progress.
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True, eq=False)
class VariantResult:
    precision: str
    method: str
    accepted: bool
    reason: str  # the measured reason, for accepted and rejected alike
    onnx_bytes: bytes | None = None  # only for accepted variants (rejected ones are not kept)
    sha256: str = ""
    size_bytes: int = 0
    latency_ms: Mapping[int, float] = field(default_factory=dict)  # batch size -> median ms
    metrics: Metrics = field(default_factory=Metrics)
    build_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no model bytes), e.g. for ``fleetctl models describe -o json``."""
        return {
            "precision": self.precision,
            "method": self.method,
            "accepted": self.accepted,
            "reason": self.reason,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "latency_ms": {str(batch): ms for batch, ms in self.latency_ms.items()},
            **dataclasses.asdict(self.metrics),
            "build_seconds": round(self.build_seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class _Context:
    source: Path  # the fp32 model as the quantizers read it, inside the private work dir
    work: Path
    data: EvalData
    calibration: EvalData
    batch: int  # rows per call for the fp32 reference outputs and static int8's calibration
    fixed_batch: int  # the model's fixed batch size, 0 when dynamic


_Builder = Callable[[_Context], bytes]
_CANDIDATES: dict[str, tuple[tuple[str, _Builder], ...]] = {
    "fp16": ((quantize.METHOD_FP16, lambda c: quantize.to_fp16(c.source)),),
    "int8": (
        (quantize.METHOD_INT8_DYNAMIC, lambda c: quantize.int8_dynamic(c.source, c.work)),
        (quantize.METHOD_INT8_DYNAMIC_FUSED, lambda c: quantize.int8_dynamic_fused(c.source, c.work)),
        (
            quantize.METHOD_INT8_STATIC,
            lambda c: quantize.int8_static(c.source, c.work, c.calibration, c.batch),
        ),
    ),
    "int4": ((quantize.METHOD_INT4, lambda c: quantize.int4_matmulnbits(c.source)),),
}


def build_variants(
    model_path: str | Path,
    eval_data: EvalData | str | Path,
    precisions: Sequence[str] = PRECISIONS,
    workdir: str | Path | None = None,
    *,
    floor: AcceptanceFloor | None = None,
    config: MeasureConfig | None = None,
    progress: ProgressFn | None = None,
) -> list[VariantResult]:
    """Build, measure and judge every candidate of each precision in ``precisions``.

    ``eval_data`` is an ``.npz`` path or already loaded EvalData; ``workdir`` is where the private
    temp directory is made (the system temp dir if None). Raises NotFound / InvalidArgument for a
    missing or invalid model, invalid eval data or unknown precisions, and InvalidArgument when
    onnxruntime cannot load or run the fp32 model itself; a failing candidate is a rejected result.
    """
    wanted = _check_precisions(precisions)
    floor = floor or AcceptanceFloor()
    config = config or MeasureConfig()
    model_path = Path(model_path)
    inputs, outputs = inspect_onnx(model_path)
    data = _eval_data(eval_data, inputs, outputs).head(config.max_eval_rows)
    original = model_path.read_bytes()
    model = onnx.load_model_from_string(original)  # the same bytes as the fp32 variant, parsed once
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise InvalidArgument(
            "models with external weight files are not supported yet; upload a single .onnx"
        )

    batch = fixed_batch(inputs) or config.eval_batch
    candidates = [(p, method, builder) for p in wanted if p != "fp32" for method, builder in _CANDIDATES[p]]
    total = 1 + len(candidates)
    work = Path(tempfile.mkdtemp(prefix="edgefleet-variants-", dir=workdir))
    try:
        started = time.perf_counter()
        reference, ref_outputs, ref_latency = _measure_reference(
            original, data, batch, inputs, outputs, config
        )
        fp32 = VariantResult(
            "fp32",
            quantize.METHOD_FP32,
            True,
            "the reference: the uploaded model as is",
            original,
            hashlib.sha256(original).hexdigest(),
            len(original),
            ref_latency,
            reference,
            time.perf_counter() - started,
        )
        _report(progress, 1, total, fp32)
        source = work / "source.onnx"
        # A copy, not the upload itself: onnxruntime's quantizers write "<name>-inferred.onnx" next
        # to the file they are given, which must not be the artifact store.
        quantize.prepare_source(model, source)
        context = _Context(source, work, data, data.head(config.calibration_rows), batch, fixed_batch(inputs))
        built: list[VariantResult] = []
        for step, (precision, method, builder) in enumerate(candidates, start=2):
            result = _candidate(
                precision, method, builder, context, ref_outputs, reference, outputs, floor, config
            )
            built.append(result)
            _report(progress, step, total, result)
        results = ([fp32] if "fp32" in wanted else []) + _select(built)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    order = {p: i for i, p in enumerate(wanted)}
    return sorted(results, key=lambda r: order[r.precision])  # stable: candidates keep their order


def accepted_variants(results: Iterable[VariantResult]) -> dict[str, VariantResult]:
    """The accepted variant of each precision (at most one each)."""
    return {r.precision: r for r in results if r.accepted}


def toolchain_versions() -> dict[str, str]:
    """Versions of the tools that built the variants, for artifact manifests."""
    import platform
    from importlib import metadata

    import numpy
    import onnxruntime

    try:
        edgefleet = metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        edgefleet = "unknown"
    return {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "edgefleet": edgefleet,
        "python": platform.python_version(),
    }


def check_precisions(precisions: Sequence[str]) -> list[str]:
    """The requested precisions, de-duplicated in order; InvalidArgument for unknown ones or none."""
    return _check_precisions(precisions)


def _check_precisions(precisions: Sequence[str]) -> list[str]:
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",")]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise InvalidArgument(
            f"unknown precision {', '.join(map(repr, unknown))}: choose from {', '.join(PRECISIONS)}"
        )
    wanted = list(dict.fromkeys(precisions))  # de-duplicated, order kept
    if not wanted:
        raise InvalidArgument(f"no precision requested: choose from {', '.join(PRECISIONS)}")
    return wanted


def _eval_data(
    eval_data: EvalData | str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> EvalData:
    if isinstance(eval_data, EvalData):
        arrays = dict(eval_data.inputs)
        if eval_data.labels is not None:
            arrays["labels"] = eval_data.labels
        return validate_eval_data(arrays, inputs, outputs)
    return load_eval_data(eval_data, inputs, outputs)


def _measure_reference(
    model: bytes,
    data: EvalData,
    batch: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    config: MeasureConfig,
) -> tuple[Metrics, dict[str, Any], dict[int, float]]:
    try:
        session = open_session(model)
    except Exception as exc:  # onnxruntime raises its own untyped errors; all mean "cannot load"
        raise InvalidArgument(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc
    try:
        ref_outputs = run_eval(session, data, batch)
    except Exception as exc:
        raise InvalidArgument(f"the fp32 model failed on the eval data: {_first_line(exc)}") from exc
    reference = evaluate(ref_outputs, ref_outputs, outputs, data.labels)
    return reference, ref_outputs, measure_latency(session, data, config, fixed_batch(inputs))


def _candidate(
    precision: str,
    method: str,
    builder: _Builder,
    context: _Context,
    ref_outputs: Mapping[str, Any],
    reference: Metrics,
    outputs: Sequence[TensorSpec],
    floor: AcceptanceFloor,
    config: MeasureConfig,
) -> VariantResult:
    started = time.perf_counter()

    def rejected(
        reason: str,
        model: bytes = b"",
        latency: Mapping[int, float] | None = None,
        metrics: Metrics | None = None,
    ) -> VariantResult:
        logger.info("variant %s (%s) rejected: %s", precision, method, reason)
        return VariantResult(
            precision,
            method,
            False,
            reason,
            None,
            hashlib.sha256(model).hexdigest() if model else "",
            len(model),
            latency or {},
            metrics or Metrics(),
            time.perf_counter() - started,
        )

    # Third-party converters fail with every kind of exception; each failure is a measured outcome
    # of this candidate (recorded with its reason), never a crash of the whole import.
    try:
        model = builder(context)
    except quantize.NotApplicable as exc:
        return rejected(f"not applicable: {exc}")
    except Exception as exc:
        logger.warning("building %s (%s) failed", precision, method, exc_info=True)
        return rejected(f"failed to build: {_first_line(exc)}")
    try:
        session = open_session(model)
    except Exception as exc:
        return rejected(f"failed to load in onnxruntime: {_first_line(exc)}", model)
    try:
        batches = eval_batches(config, context.fixed_batch)
        metrics = score(session, context.data, batches, ref_outputs, outputs)
        latency = measure_latency(session, context.data, config, context.fixed_batch)
    except Exception as exc:
        return rejected(f"failed to run on the eval data: {_first_line(exc)}", model)
    ok, reason = judge(metrics, reference, floor)
    if not ok:
        return rejected(reason, model, latency, metrics)
    logger.info(
        "variant %s (%s) meets the floor: %s; %d bytes, latency %s ms",
        precision,
        method,
        reason,
        len(model),
        latency,
    )
    return VariantResult(
        precision,
        method,
        True,
        reason,
        model,
        hashlib.sha256(model).hexdigest(),
        len(model),
        latency,
        metrics,
        time.perf_counter() - started,
    )


def _select(built: list[VariantResult]) -> list[VariantResult]:
    """Keep one accepted candidate per precision; the others are rejected with the comparison.

    The fastest at batch 1 wins; candidates within SAME_SPEED_RATIO of it count as equally fast, and
    among those the most accurate wins (ties: the faster). Latency alone would let timing noise on a
    shared host pick a less accurate variant that is not really faster.
    """
    final: list[VariantResult] = []
    for precision in dict.fromkeys(r.precision for r in built):
        group = [r for r in built if r.precision == precision]
        passing = [r for r in group if r.accepted]
        winner: VariantResult | None = None
        if passing:
            best_ms = min(_batch1(r) for r in passing)
            near = [r for r in passing if _batch1(r) <= best_ms * SAME_SPEED_RATIO]
            winner = max(near, key=lambda r: (_quality(r), -_batch1(r)))
        for r in group:
            if r.accepted and winner is not None and r is not winner:
                why = _comparison(winner, r)
                logger.info("variant %s (%s) not chosen: %s", r.precision, r.method, why)
                r = dataclasses.replace(r, accepted=False, onnx_bytes=None, reason=f"{r.reason}; but {why}")
            final.append(r)
    return final


def _quality(r: VariantResult) -> float:
    m = r.metrics
    for value in (m.accuracy, m.cosine, m.agreement):
        if value is not None:
            return value
    return 0.0


def _batch1(r: VariantResult) -> float:
    """Latency at the smallest measured batch (batch 1 unless the model's batch is fixed)."""
    return r.latency_ms[min(r.latency_ms)] if r.latency_ms else float("inf")


def _comparison(winner: VariantResult, loser: VariantResult) -> str:
    a, b = _batch1(winner), _batch1(loser)
    if b > a * SAME_SPEED_RATIO:
        return f"{winner.method} was chosen: faster at batch 1 ({a:.3f} ms vs {b:.3f} ms)"
    return (
        f"{winner.method} was chosen: as fast within {SAME_SPEED_RATIO - 1:.0%} at batch 1 "
        f"({a:.3f} ms vs {b:.3f} ms) and at least as accurate ({_quality(winner):.4f} vs {_quality(loser):.4f})"
    )


def _report(progress: ProgressFn | None, step: int, total: int, result: VariantResult) -> None:
    if progress is not None:
        state = "accepted" if result.accepted else "rejected"
        progress(step, total, f"{result.precision} {result.method}: {state}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
