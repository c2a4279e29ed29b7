"""Precision variants of real models: built with onnxruntime's tools, measured, accepted or rejected with a reason."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from common.errors import InvalidArgument, NotFound
from controller.onnx_check import inspect_onnx
from controller.toolchain import quantize
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import EvalData
from controller.toolchain.measure import AcceptanceFloor, Metrics, evaluate, open_session, run_eval
from controller.toolchain.variants import PRECISIONS, VariantResult, accepted_variants, build_variants
from tests.toolchain.conftest import FAST
from tests.toolchain.test_measure import skewed_rows
from tests.toolchain.tiny_models import digits_cnn, ffn_block, gemm_model, relu_model

HAS_ONNX_IR = importlib.util.find_spec("onnx_ir") is not None


def _ops(result: VariantResult) -> set[str]:
    assert result.onnx_bytes is not None
    return {node.op_type for node in onnx.load_from_string(result.onnx_bytes).graph.node}


def _accuracy(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy recomputed from the variant's bytes with a plain session, not the toolchain's numbers."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (labels,) = session.run(["label"], {"input": x})
    return float(np.mean(labels == y))


@pytest.fixture(scope="module")
def digits_build(
    digits_model: DigitsArtifacts, digits_eval: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[VariantResult], Path, Path, list[tuple[int, int, str]]]:
    """All four precisions of the digits model, built from an empty CWD into an empty workdir."""
    cwd = tmp_path_factory.mktemp("cwd")
    work = tmp_path_factory.mktemp("work")
    events: list[tuple[int, int, str]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        results = build_variants(
            digits_model.model_path,
            digits_eval,
            workdir=work,
            config=FAST,
            progress=lambda *e: events.append(e),
        )
    return results, cwd, work, events


def test_every_precision_and_candidate_is_reported(digits_build: Any) -> None:
    results, cwd, work, events = digits_build
    assert [(r.precision, r.method) for r in results] == [
        ("fp32", quantize.METHOD_FP32),
        ("fp16", quantize.METHOD_FP16),
        ("int8", quantize.METHOD_INT8_DYNAMIC),
        ("int8", quantize.METHOD_INT8_DYNAMIC_FUSED),
        ("int8", quantize.METHOD_INT8_STATIC),
        ("int4", quantize.METHOD_INT4),
    ]
    assert list(cwd.iterdir()) == [] and list(work.iterdir()) == []  # no stray or leftover files
    assert [e[:2] for e in events] == [(i, 6) for i in range(1, 7)]
    # The digits MLP has nothing a transformer optimizer fuses: that candidate says so, built nothing.
    fused = next(r for r in results if r.method == quantize.METHOD_INT8_DYNAMIC_FUSED)
    assert not fused.accepted and fused.reason.startswith("not applicable: the transformer optimizer found")
    assert fused.size_bytes == 0 and not fused.latency_ms
    for r in results:
        json.dumps(r.as_dict())  # describe -o json needs no custom encoder
        if r is fused:
            continue
        assert r.reason and r.size_bytes > 0 and r.sha256
        assert (r.onnx_bytes is not None) == r.accepted
    # Exactly one int8 method is kept; the other is rejected with the comparison that decided it.
    int8 = [r for r in results if r.precision == "int8" and r is not fused]
    assert sum(r.accepted for r in int8) == 1
    loser = next(r for r in int8 if not r.accepted)
    assert "was chosen" in loser.reason and loser.latency_ms and loser.metrics.accuracy is not None


def test_accepted_variants_load_run_and_keep_accuracy(
    digits_build: Any, digits_model: DigitsArtifacts, tmp_path: Path
) -> None:
    results, *_ = digits_build
    test = np.load(digits_model.test_path)
    chosen = accepted_variants(results)
    expected = {"fp32", "fp16", "int8"} | ({"int4"} if HAS_ONNX_IR else set())
    assert set(chosen) == expected
    for precision, r in chosen.items():
        assert r.onnx_bytes is not None
        # The artifact pipeline's own upload check accepts it, and inputs/outputs are unchanged.
        path = tmp_path / f"{precision}.onnx"
        path.write_bytes(r.onnx_bytes)
        assert inspect_onnx(path) == inspect_onnx(digits_model.model_path)
        accuracy = _accuracy(r.onnx_bytes, test["x"], test["y"])
        assert accuracy == pytest.approx(r.metrics.accuracy)
        assert accuracy >= digits_model.accuracy - 0.01
        assert sorted(r.latency_ms) == [1, 32] and all(ms > 0 for ms in r.latency_ms.values())


def test_sizes_and_methods(digits_build: Any) -> None:
    results, *_ = digits_build
    chosen = accepted_variants(results)
    fp32 = chosen["fp32"].size_bytes
    assert 0.45 < chosen["fp16"].size_bytes / fp32 < 0.6  # fp16 weights stored as raw 2-byte values
    assert chosen["int8"].size_bytes < 0.45 * fp32
    assert "Cast" in _ops(chosen["fp16"])  # keep_io_types: fp32 in and out
    if HAS_ONNX_IR:
        assert chosen["int4"].size_bytes < chosen["int8"].size_bytes
        assert "MatMulNBits" in _ops(chosen["int4"])
    else:
        int4 = next(r for r in results if r.precision == "int4")
        assert not int4.accepted and "onnx-ir" in int4.reason


def test_impossible_floor_rejects_with_reasons_and_drops_nothing(
    digits_model: DigitsArtifacts, digits_eval_unlabelled: Path, clean_cwd: Path
) -> None:
    floor = AcceptanceFloor(min_cosine=1.0)
    results = build_variants(digits_model.model_path, digits_eval_unlabelled, floor=floor, config=FAST)
    assert {r.precision for r in results} == set(PRECISIONS)
    assert set(accepted_variants(results)) == {"fp32"}
    for r in results:
        if r.precision == "fp32":
            continue
        assert not r.accepted and r.onnx_bytes is None
        if r.method == quantize.METHOD_INT8_DYNAMIC_FUSED:
            assert r.reason.startswith("not applicable: ")  # nothing to fuse in the digits MLP
        elif r.precision != "int4" or HAS_ONNX_IR:
            assert r.reason.startswith("cosine to fp32 ") and r.reason.endswith(" < floor 1.0")
            assert r.metrics.cosine is not None and r.metrics.cosine < 1.0 and r.metrics.accuracy is None
    assert list(clean_cwd.iterdir()) == []


def test_precisions_are_validated_and_order_kept(digits_model: DigitsArtifacts, digits_eval: Path) -> None:
    results = build_variants(digits_model.model_path, digits_eval, ("fp16", "fp32", "fp16"), config=FAST)
    assert [r.precision for r in results] == ["fp16", "fp32"]
    with pytest.raises(InvalidArgument, match=r"unknown precision 'fp8'"):
        build_variants(digits_model.model_path, digits_eval, ("fp32", "fp8"))
    with pytest.raises(InvalidArgument, match=r"no precision"):
        build_variants(digits_model.model_path, digits_eval, ())


def test_corrupt_model_fails_clearly_and_leaves_nothing(
    tmp_path: Path, digits_eval: Path, clean_cwd: Path, digits_model: DigitsArtifacts
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(digits_model.model_path.read_bytes()[:500])  # a truncated upload
    with pytest.raises(InvalidArgument, match=r"not a valid ONNX model"):
        build_variants(corrupt, digits_eval, workdir=work)
    with pytest.raises(NotFound):
        build_variants(tmp_path / "missing.onnx", digits_eval, workdir=work)
    with pytest.raises(InvalidArgument, match=r"no array for model input 'input'"):
        build_variants(digits_model.model_path, digits_model.test_path, workdir=work)  # arrays x, y
    assert list(work.iterdir()) == [] and list(clean_cwd.iterdir()) == []


def test_quantizer_failing_midway_is_a_rejection_and_leaves_nothing(
    digits_model: DigitsArtifacts,
    digits_eval: Path,
    tmp_path: Path,
    clean_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real static quantizer, with calibration that dies after it has written its temp models."""
    import onnxruntime.quantization as ort_quant

    real = ort_quant.quantize_static

    def exploding(model_input: Any, model_output: Any, reader: Any, **kwargs: Any) -> Any:
        class Exploding(ort_quant.CalibrationDataReader):  # type: ignore[misc]
            calls = 0

            def get_next(self) -> Any:
                self.calls += 1
                if self.calls > 1:
                    raise RuntimeError("calibration exploded")
                return reader.get_next()

        return real(model_input, model_output, Exploding(), **kwargs)

    monkeypatch.setattr(ort_quant, "quantize_static", exploding)
    work = tmp_path / "work"
    work.mkdir()
    results = build_variants(digits_model.model_path, digits_eval, ("int8",), workdir=work, config=FAST)
    static = next(r for r in results if r.method == quantize.METHOD_INT8_STATIC)
    assert not static.accepted and static.reason == "failed to build: calibration exploded"
    assert accepted_variants(results)["int8"].method == quantize.METHOD_INT8_DYNAMIC
    assert list(work.iterdir()) == [] and list(clean_cwd.iterdir()) == []


def test_int4_rewrites_gemm_and_rejects_models_without_weights(tmp_path: Path, clean_cwd: Path) -> None:
    rows = np.random.default_rng(0).uniform(0, 16, size=(64, 64)).astype(np.float32)
    eval_x = tmp_path / "x.npz"
    np.savez(eval_x, x=rows)
    results = build_variants(gemm_model(tmp_path / "gemm.onnx"), eval_x, ("fp32", "int4"), config=FAST)
    int4 = results[-1]
    if HAS_ONNX_IR:
        assert int4.accepted, int4.reason
        assert "MatMulNBits" in _ops(int4) and "Gemm" not in _ops(int4)
    results = build_variants(relu_model(tmp_path / "relu.onnx"), eval_x, ("int4",), config=FAST)
    assert [(r.precision, r.accepted) for r in results] == [("int4", False)]
    assert results[0].reason.startswith("not applicable: no MatMul with constant 2-D float weights")
    assert list(clean_cwd.iterdir()) == []


def test_conv_net_gets_static_qdq_candidate(tmp_path: Path, digits_eval: Path) -> None:
    pytest.importorskip("sklearn")
    model, accuracy = digits_cnn(tmp_path / "cnn.onnx")
    assert accuracy > 0.9  # a real classifier, so accuracy drops are meaningful
    results = build_variants(model, digits_eval, ("fp32", "int8"), config=FAST)
    static = next(r for r in results if r.method == quantize.METHOD_INT8_STATIC)
    dynamic = next(r for r in results if r.method == quantize.METHOD_INT8_DYNAMIC)
    for r in (static, dynamic):  # both built, loaded, ran and were measured, whichever was kept
        assert r.metrics.accuracy is not None and r.latency_ms, r.reason
    assert static.metrics.accuracy is not None and static.metrics.accuracy >= accuracy - 0.02
    if static.accepted:
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _ops(static)
    assert sum(r.accepted for r in (static, dynamic)) <= 1


def _candidate(method: str, ms: float, accuracy: float) -> VariantResult:
    return VariantResult(
        "int8", method, True, "meets the floor", b"x", latency_ms={1: ms}, metrics=Metrics(accuracy)
    )


def test_selection_prefers_speed_then_accuracy_within_ten_percent() -> None:
    from controller.toolchain.variants import _select

    # Clearly faster wins even when slightly less accurate (both met the floor).
    kept = _select([_candidate("slow", 1.0, 0.97), _candidate("fast", 0.5, 0.965)])
    assert [(r.method, r.accepted) for r in kept] == [("slow", False), ("fast", True)]
    assert kept[0].reason == "meets the floor; but fast was chosen: faster at batch 1 (0.500 ms vs 1.000 ms)"
    assert kept[0].onnx_bytes is None
    # Within 10%: timing noise, so the more accurate one wins.
    kept = _select([_candidate("a", 1.05, 0.97), _candidate("b", 1.0, 0.96)])
    assert [(r.method, r.accepted) for r in kept] == [("a", True), ("b", False)]
    assert "as fast within 10%" in kept[1].reason and "(0.9700 vs 0.9600)" in kept[1].reason
    # A rejected candidate stays rejected with its own reason.
    failed = dataclasses.replace(_candidate("c", 0.1, 0.5), accepted=False, reason="failed to build: boom")
    kept = _select([failed, _candidate("d", 1.0, 0.97)])
    assert (kept[0].method, kept[0].accepted, kept[0].reason) == ("c", False, "failed to build: boom")
    assert kept[1].accepted


def test_int4_without_onnx_ir_is_rejected_with_the_reason(
    digits_model: DigitsArtifacts, digits_eval: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", None)
    (int4,) = build_variants(digits_model.model_path, digits_eval, ("int4",), config=FAST)
    assert not int4.accepted
    assert int4.reason.startswith("failed to build: int4 needs the onnx-ir package, which is not installed")


def test_importing_the_int4_quantizer_leaves_logging_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import; that must not stick."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.delitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", raising=False)
    assert quantize._nbits_quantizer_class().__name__ == "MatMulNBitsQuantizer"
    assert root.handlers == [] and root.level == logging.WARNING


def test_a_variant_is_scored_at_its_worst_batch_size(tmp_path: Path) -> None:
    """The int8 variant's cosine is the worse of batches of 64 and one row at a time: the batched one
    here (rows of 1x, 10x, 100x magnitude share one activation scale), measured independently."""
    src = ffn_block(tmp_path / "ffn.onnx")
    data = EvalData({"x": skewed_rows()})
    results = build_variants(src, data, ("fp32", "int8"), tmp_path, config=FAST)
    dynamic = next(r for r in results if r.method == quantize.METHOD_INT8_DYNAMIC)
    built = quantize.int8_dynamic(src, tmp_path)
    _, outputs = inspect_onnx(src)
    reference = run_eval(open_session(src.read_bytes()), data, 64)
    session = open_session(built)
    batched = evaluate(run_eval(session, data, 64), reference, outputs, None).cosine
    single = evaluate(run_eval(session, data, 1), reference, outputs, None).cosine
    assert batched is not None and single is not None and batched < single
    assert dynamic.metrics.cosine == pytest.approx(batched, abs=1e-9)
