"""Mixed-precision accuracy on digits: each block lowered alone, the additive prediction checked against
measured mixes (each equal to a direct chained run), exact evaluation of one plan, and plan validation.
Quality numbers are noisy across machines and versions, so no threshold is asserted on them."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from common.types import TensorSpec
from controller.onnx_check import inspect_onnx
from controller.toolchain import mixes, quantize
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import EvalData, load_eval_data
from controller.toolchain.measure import evaluate
from controller.toolchain.model_profile import IMPORT_PROFILE_CONFIG, _accuracy
from controller.toolchain.profile import ProfileTable, profile_blocks
from controller.toolchain.segments import Segmenter, run_segments

METHODS = {
    "fp32": quantize.METHOD_FP32,
    "fp16": quantize.METHOD_FP16,
    "int8": quantize.METHOD_INT8_STATIC,
    "int4": quantize.METHOD_INT4,
}


@pytest.fixture(scope="module")
def setup(
    digits_model: DigitsArtifacts, digits_eval: Path
) -> tuple[Segmenter, ProfileTable, EvalData, tuple[TensorSpec, ...]]:
    inputs, outputs = inspect_onnx(digits_model.model_path)
    data = load_eval_data(digits_eval, inputs, outputs)
    segmenter = Segmenter(digits_model.model_path.read_bytes(), calibration=data.head(128))
    table = profile_blocks(
        segmenter, segmenter.graph.select(4), METHODS, (1,), data=data, config=IMPORT_PROFILE_CONFIG
    )
    return segmenter, table, data, outputs


def _direct(parts: list[bytes], data: EvalData, outputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """Chain the given segments with ``run_segments`` over every row in one call: the reference run."""
    env = run_segments(parts, data.feed(0, data.rows))
    return {o.name: env[o.name] for o in outputs}


def test_each_block_lowered_alone_is_what_a_chained_run_gives(
    setup: tuple[Segmenter, ProfileTable, EvalData, tuple[TensorSpec, ...]],
) -> None:
    _, table, data, outputs = setup
    sens = mixes.block_sensitivity(table, data, outputs, rows=200)
    subset = data.head(200)
    positions = range(len(table.boundaries) - 1)
    assert {(b.start, b.end, b.precision) for b in sens.blocks} == {
        (table.boundaries[k], table.boundaries[k + 1], p) for k in positions for p in ("fp16", "int8", "int4")
    }
    assert all(b.error == "" for b in sens.blocks)
    fp32 = [table.segment(k, "fp32") for k in positions]
    reference = _direct([s.onnx_bytes for s in fp32 if s], subset, outputs)
    assert sens.reference.accuracy == evaluate(reference, reference, outputs, subset.labels).accuracy
    assert sens.reference.cosine == pytest.approx(1.0) and sens.reference.agreement == 1.0
    for b in sens.blocks:
        k = table.boundaries.index(b.start, 0 if b.start is None else 1)
        lowered = table.segment(k, b.precision)
        assert lowered is not None
        chain = (
            [s.onnx_bytes for s in fp32[:k] if s]
            + [lowered.onnx_bytes]
            + [s.onnx_bytes for s in fp32[k + 1 :] if s]
        )
        direct = evaluate(_direct(chain, subset, outputs), reference, outputs, subset.labels)
        assert b.metrics.accuracy == direct.accuracy
        assert b.metrics.agreement == direct.agreement
        assert b.metrics.cosine == pytest.approx(direct.cosine, abs=1e-9)


def test_a_block_under_dynamic_int8_is_scored_at_its_worst_batch_size(
    digits_model: DigitsArtifacts, digits_eval: Path
) -> None:
    """Dynamic int8 scales activations per batch: with rows of 1x, 10x and 100x the pixel values
    batched together, a block's loss in batches differs from its loss one row at a time. The
    sensitivity is the worse of the two, so it holds for a phone (one row) and a batching server."""
    inputs, outputs = inspect_onnx(digits_model.model_path)
    plain = load_eval_data(digits_eval, inputs, outputs).head(128)
    x = plain.inputs["input"] * (10.0 ** (np.arange(plain.rows) % 3))[:, None].astype(np.float32)
    data = EvalData({"input": x}, plain.labels)
    segmenter = Segmenter(digits_model.model_path.read_bytes())
    methods = {"fp32": quantize.METHOD_FP32, "int8": quantize.METHOD_INT8_DYNAMIC}
    table = profile_blocks(
        segmenter, segmenter.graph.select(4), methods, (1,), data=data, config=IMPORT_PROFILE_CONFIG
    )
    sens = mixes.block_sensitivity(table, data, outputs)
    assert mixes.EVAL_BATCHES == (64, 1)
    # Either order: the worse counts, not the first size scored.
    assert mixes.block_sensitivity(table, data, outputs, batches=(1, 64)).blocks == sens.blocks
    positions = range(len(table.boundaries) - 1)
    fp32 = [table.segment(k, "fp32") for k in positions]
    reference = _direct([s.onnx_bytes for s in fp32 if s], data, outputs)
    differs = 0
    for b in sens.blocks:
        k = table.boundaries.index(b.start, 0 if b.start is None else 1)
        lowered = table.segment(k, "int8")
        assert lowered is not None and b.error == ""
        chain = [(lowered if i == k else s).onnx_bytes for i, s in enumerate(fp32) if s]
        batched = evaluate(_chained(chain, data, outputs, 64), reference, outputs, data.labels)
        single = evaluate(_chained(chain, data, outputs, 1), reference, outputs, data.labels)
        assert b.metrics.cosine == pytest.approx(min(batched.cosine or 0.0, single.cosine or 0.0), abs=1e-12)
        assert b.metrics.accuracy == min(batched.accuracy or 0.0, single.accuracy or 0.0)
        differs += abs((batched.cosine or 0.0) - (single.cosine or 0.0)) > 1e-4
    assert differs  # the rows really do score differently batched (else this test shows nothing)


def _chained(
    parts: list[bytes], data: EvalData, outputs: tuple[TensorSpec, ...], batch: int
) -> dict[str, np.ndarray]:
    """``_direct`` in calls of ``batch`` rows."""
    got = [run_segments(parts, data.feed(a, min(a + batch, data.rows))) for a in range(0, data.rows, batch)]
    return {o.name: np.concatenate([g[o.name] for g in got]) for o in outputs}


def test_additive_prediction_is_checked_against_measured_mixes(
    setup: tuple[Segmenter, ProfileTable, EvalData, tuple[TensorSpec, ...]],
) -> None:
    segmenter, table, data, outputs = setup
    sens = mixes.block_sensitivity(table, data, outputs)
    report = mixes.check_additivity(segmenter, METHODS, sens, data, outputs)
    cuts = len(table.boundaries) - 2
    pairs = len(METHODS) * (len(METHODS) - 1)
    assert len(report.checks) == cuts * pairs + pairs  # every cut x (head != tail), plus p,q,p mixes
    assert all(len({p.precision for p in c.mix}) == 2 for c in report.checks)
    subset = data.head(sens.rows)
    reference = _direct([segmenter.segment(None, None).onnx_bytes], subset, outputs)
    for check in report.checks[:: max(1, len(report.checks) // 12)]:  # a spread of them, each exactly
        parts = [segmenter.segment(p.start, p.end, METHODS[p.precision]).onnx_bytes for p in check.mix]
        direct = evaluate(_direct(parts, subset, outputs), reference, outputs, subset.labels)
        assert check.measured.accuracy == direct.accuracy
        assert check.measured.agreement == direct.agreement
        assert check.measured.cosine == pytest.approx(direct.cosine, abs=1e-9)
        assert check.predicted == mixes.predict(check.mix, sens)
    summary = report.summary()
    assert summary["mixes"] == len(report.checks) and summary["rows"] == sens.rows
    for metric in ("accuracy", "cosine", "agreement"):  # reported, never judged against a threshold
        errors = summary[metric]
        assert errors["mixes"] == len(report.checks)
        assert math.isfinite(errors["median_error"]) and errors["max_error"] >= errors["median_error"] >= 0


def test_prediction_subtracts_what_each_lowered_block_cost_alone(
    setup: tuple[Segmenter, ProfileTable, EvalData, tuple[TensorSpec, ...]],
) -> None:
    _, table, data, outputs = setup
    sens = mixes.block_sensitivity(table, data, outputs)
    bounds = table.boundaries
    mix = (mixes.Part(None, bounds[2], "int8"), mixes.Part(bounds[2], None, "fp16"))
    ref = sens.reference.cosine
    assert ref is not None
    expected = ref
    for k in range(len(bounds) - 1):
        alone = sens.block(bounds[k], bounds[k + 1], "int8" if k < 2 else "fp16")
        assert alone is not None and alone.metrics.cosine is not None
        expected -= ref - alone.metrics.cosine
    assert mixes.predict(mix, sens).cosine == pytest.approx(expected)
    assert mixes.predict((mixes.Part(None, None, "fp32"),), sens) == sens.reference.__class__(
        accuracy=sens.reference.accuracy, cosine=sens.reference.cosine, agreement=sens.reference.agreement
    )
    # As a model stores it (0 for the model's ends, the reference as 0..0 fp32), it predicts the same.
    stored = mixes.SensitivityTable.from_block_accuracy(bounds, _accuracy(sens))
    assert mixes.predict(mix, stored) == mixes.predict(mix, sens)


def test_a_plan_is_evaluated_exactly_on_all_rows(
    setup: tuple[Segmenter, ProfileTable, EvalData, tuple[TensorSpec, ...]],
) -> None:
    segmenter, table, data, outputs = setup
    cut = table.boundaries[2]
    mix = (mixes.Part(None, cut, "int8"), mixes.Part(cut, None, "fp32"))
    got = mixes.evaluate_mix(segmenter, mix, METHODS, data, outputs)
    reference = _direct([segmenter.segment(None, None).onnx_bytes], data, outputs)
    parts = [
        segmenter.segment(None, cut, METHODS["int8"]).onnx_bytes,
        segmenter.segment(cut, None).onnx_bytes,
    ]
    assert got == evaluate(_direct(parts, data, outputs), reference, outputs, data.labels)


def test_every_problem_of_a_plan_is_named() -> None:
    bounds = [None, 10, 20, None]
    precisions = ["fp32", "int8"]
    P = mixes.Part
    assert mixes.check_mix((P(None, 10, "int8"), P(10, None, "fp32")), bounds, precisions) == []
    assert mixes.check_mix((), bounds, precisions) == ["no segments"]
    problems = mixes.check_mix((P(5, 10, "int3"), P(20, 15, "fp32"), P(15, 20, "int8")), bounds, precisions)
    text = "\n".join(problems)
    for expected in (
        "segments[0].start_cut: 5 is not a profiled cut point (profiled: 10, 20",
        "segments[0].start_cut: 5 does not continue where the model starts (0)",
        "segments[0].precision: 'int3' is not an accepted precision of this model (fp32, int8)",
        "segments[1].start_cut: 20 does not continue where segments[0] ended (10)",
        "segments[1]: end_cut 15 is not after start_cut 20",
        "segments[2].end_cut: 20, but the last segment must end at the model outputs (0)",
    ):
        assert expected in text, text
    early = mixes.check_mix((P(None, None, "fp32"), P(None, None, "int8")), bounds, precisions)
    assert any("0 (the model outputs) but 1 segment(s) follow" in p for p in early)


def test_default_mixes_cover_each_cut_and_some_three_segment_plans() -> None:
    bounds = [None, 3, 6, 9, None]
    found = mixes.default_mixes(bounds, ["fp32", "int8", "fp16"])
    singles = [m for m in found if len(m) == 2]
    triples = [m for m in found if len(m) == 3]
    assert {(m[0].end, m[0].precision, m[1].precision) for m in singles} == {
        (c, p, q) for c in (3, 6, 9) for p, q in itertools.permutations(["fp32", "int8", "fp16"], 2)
    }
    assert len(triples) == 6 and all(m[0].precision == m[2].precision != m[1].precision for m in triples)
    assert mixes.default_mixes([None, None], ["fp32", "int8"]) == []
