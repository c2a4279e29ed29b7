"""Exact evaluation of a mixed-precision segment plan on a model's stored eval data.

What ``fleetctl models evaluate`` (``AdminService.EvaluateSegments``) runs: the plan is checked
against the model's profiled cut points and accepted precisions (every problem named at once), each
segment is built whole with the method its precision's variant was built with (as it would be
deployed), and the chain is scored on the eval data the build kept, as whole variants are. The
additive prediction from ``Model.block_accuracy`` is returned next to it.

Blocking and CPU-bound: callers on an event loop run ``SegmentEvaluator.evaluate`` in a worker
thread, never on the store thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from common.errors import InvalidArgument, PermanentError
from common.types import Model, SegmentEvaluation, SegmentSpec
from controller.artifacts import ArtifactStore
from controller.toolchain import mixes
from controller.toolchain.evaldata import EvalData, load_eval_data
from controller.toolchain.measure import MeasureConfig
from controller.toolchain.segments import Segmenter

log = logging.getLogger(__name__)


class SegmentEvaluator:
    """Scores segment mixes of stored models. Keeps the segmenter (and its cache of built segments) of
    the model it last evaluated, so a planner asking about several mixes of one model builds each
    segment once. One evaluation at a time."""

    def __init__(
        self, artifacts: ArtifactStore, *, workdir: Path, config: MeasureConfig | None = None
    ) -> None:
        self._artifacts = artifacts
        self._workdir = workdir
        self._config = config or MeasureConfig()
        self._lock = threading.Lock()
        self._cached: tuple[tuple[str, str], Segmenter, EvalData] | None = None

    def evaluate(self, model: Model, segments: Sequence[SegmentSpec]) -> SegmentEvaluation:
        """InvalidArgument naming every problem of the plan; PermanentError for a model without what an
        exact evaluation needs (its fp32 variant, stored eval data and block profiles)."""
        fp32 = model.variant("fp32")
        if fp32 is None or not model.eval_data_sha256 or not model.block_profiles:
            raise PermanentError(
                f"model {model.name!r} has no stored eval data and block profiles to evaluate segments on: "
                "import it with --eval-data and --precisions",
                code="no_eval_data",
            )
        boundaries = _boundaries(model)
        methods = {v.precision: v.method for v in model.variants if v.precision and v.method}
        methods.setdefault("fp32", "fp32")
        mix = tuple(mixes.Part(s.start_cut or None, s.end_cut or None, s.precision) for s in segments)
        problems = mixes.check_mix(mix, boundaries, sorted(methods, key=_order))
        if problems:
            raise InvalidArgument(f"segments of model {model.name!r}: " + "; ".join(problems))
        with self._lock:
            segmenter, data = self._load(model)
            metrics = mixes.evaluate_mix(segmenter, mix, methods, data, fp32.outputs)
        predicted = mixes.predict(
            mix, mixes.SensitivityTable.from_block_accuracy(boundaries, model.block_accuracy)
        )
        log.info(
            "model=%s evaluated %s on %d rows: accuracy %s, cosine %s (predicted %s, %s)",
            model.name,
            ",".join(f"{s.start_cut}:{s.end_cut}@{s.precision}" for s in segments),
            data.rows,
            metrics.accuracy,
            metrics.cosine,
            predicted.accuracy,
            predicted.cosine,
        )
        return SegmentEvaluation(
            model_name=model.name,
            segments=tuple(segments),
            rows=data.rows,
            accuracy=metrics.accuracy,
            cosine=metrics.cosine,
            agreement=metrics.agreement,
            predicted_accuracy=predicted.accuracy,
            predicted_cosine=predicted.cosine,
            predicted_agreement=predicted.agreement,
        )

    def _load(self, model: Model) -> tuple[Segmenter, EvalData]:
        fp32 = model.variant("fp32")
        assert fp32 is not None  # checked by evaluate
        key = (fp32.sha256, model.eval_data_sha256)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1], self._cached[2]
        self._cached = None  # drop the previous model's segments before building this one's
        full = load_eval_data(
            self._artifacts.path(model.eval_data_sha256),
            fp32.inputs,
            fp32.outputs,
            where=f"eval data of {model.name!r}",
        )
        # The same calibration rows as the import's blocks, so a static int8 segment is the one profiled.
        segmenter = Segmenter(
            self._artifacts.path(fp32.sha256).read_bytes(),
            calibration=full.head(self._config.calibration_rows),
            workdir=self._workdir,
        )
        data = full.head(self._config.max_eval_rows)
        self._cached = (key, segmenter, data)
        return segmenter, data


def _boundaries(model: Model) -> list[int | None]:
    starts = {b.start_cut for b in model.block_profiles if b.start_cut}
    return [None, *sorted(starts), None]


def _order(precision: str) -> tuple[int, str]:
    known = ("fp32", "fp16", "int8", "int4")
    return (known.index(precision) if precision in known else len(known), precision)
