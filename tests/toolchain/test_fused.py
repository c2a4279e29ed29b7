"""int8-dynamic-fused: onnxruntime's transformer fusions, then dynamic int8, as one more int8 candidate.

Fast tests use a transformer's feed-forward half built with onnx.helper (``ffn_block``); the attention
fusion needs a real encoder, so those checks run on the cached MiniLM export and skip without it.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from controller.onnx_check import inspect_onnx
from controller.toolchain import quantize
from controller.toolchain.evaldata import EvalData
from controller.toolchain.minilm import cached_minilm
from controller.toolchain.segments import Segmenter
from controller.toolchain.variants import accepted_variants, build_variants
from tests.toolchain.conftest import FAST
from tests.toolchain.tiny_models import digits_cnn, ffn_block, gemm_model


def _runtime_ops(model: bytes | Path, tmp_path: Path) -> collections.Counter[str]:
    """Operator counts of the graph onnxruntime actually runs (after its load-time fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "runtime.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
    )
    ops = collections.Counter(node.op_type for node in onnx.load(str(tmp_path / "runtime.onnx")).graph.node)
    (tmp_path / "runtime.onnx").unlink()
    return ops


def _source(model: Path, work: Path) -> Path:
    source = work / "source.onnx"
    quantize.prepare_source(onnx.load(str(model)), source)
    return source


@pytest.fixture
def ffn(tmp_path: Path) -> Path:
    return ffn_block(tmp_path / "ffn.onnx")


def test_fusion_keeps_the_fp32_numbers_and_the_layer_norm_out_of_skip_layer_norm(
    ffn: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    fused = quantize.fuse_transformer(_source(ffn, work), work)
    ops = collections.Counter(node.op_type for node in onnx.load(str(fused)).graph.node)
    assert ops["BiasGelu"] == 1 and "Erf" not in ops  # the exporter's Gelu became one fused node
    assert ops["LayerNormalization"] == 1 and ops["Reshape"] == 2  # flattened to 2-D and back
    # What the premise rests on: left alone, onnxruntime fuses the residual Add + LayerNormalization
    # into its (slower) SkipLayerNormalization when it loads the model; the fused artifact keeps them.
    assert _runtime_ops(ffn, tmp_path)["SkipLayerNormalization"] == 1
    runtime = _runtime_ops(fused, tmp_path)
    assert "SkipLayerNormalization" not in runtime and runtime["LayerNormalization"] == 1
    x = np.random.default_rng(0).normal(size=(5, 8, 32)).astype(np.float32)
    want = ort.InferenceSession(str(ffn), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1e-5
    path = tmp_path / "fused-copy.onnx"
    path.write_bytes(fused.read_bytes())
    assert inspect_onnx(path) == inspect_onnx(ffn)  # passes the upload check; same signature


def test_fused_candidate_is_built_measured_and_judged(ffn: Path, tmp_path: Path, clean_cwd: Path) -> None:
    eval_path = tmp_path / "eval.npz"
    np.savez(eval_path, x=np.random.default_rng(1).normal(size=(64, 8, 32)).astype(np.float32))
    work = tmp_path / "work"
    work.mkdir()
    results = build_variants(ffn, eval_path, ("fp32", "int8"), workdir=work, config=FAST)
    by_method = {r.method: r for r in results}
    fused = by_method[quantize.METHOD_INT8_DYNAMIC_FUSED]
    # Measured like any candidate (whether it is chosen is the timing's call on this host).
    assert fused.latency_ms and fused.metrics.cosine is not None and fused.size_bytes > 0, fused.reason
    assert fused.metrics.cosine >= 0.99
    assert fused.accepted or "was chosen" in fused.reason
    chosen = accepted_variants(results)["int8"]
    assert chosen.onnx_bytes is not None
    ort.InferenceSession(chosen.onnx_bytes, providers=["CPUExecutionProvider"])
    assert list(clean_cwd.iterdir()) == [] and list(work.iterdir()) == []


def test_models_without_anything_to_fuse_are_not_applicable(
    tmp_path: Path, digits_eval: Path, clean_cwd: Path
) -> None:
    pytest.importorskip("sklearn")
    cnn, _ = digits_cnn(tmp_path / "cnn.onnx")
    for model in (cnn, gemm_model(tmp_path / "gemm.onnx")):
        work = tmp_path / f"work-{model.stem}"
        work.mkdir()
        with pytest.raises(quantize.NotApplicable, match="found nothing to fuse"):
            quantize.int8_dynamic_fused(_source(model, work), work)
    results = build_variants(cnn, digits_eval, ("int8",), config=FAST)
    fused = next(r for r in results if r.method == quantize.METHOD_INT8_DYNAMIC_FUSED)
    assert not fused.accepted and fused.reason.startswith("not applicable: the transformer optimizer")
    assert accepted_variants(results)["int8"].method != quantize.METHOD_INT8_DYNAMIC_FUSED
    assert list(clean_cwd.iterdir()) == []


def test_segments_of_a_fused_model_use_plain_dynamic_int8(ffn: Path) -> None:
    segmenter = Segmenter(ffn.read_bytes(), calibration=EvalData({"x": np.zeros((4, 8, 32), np.float32)}))
    cut = segmenter.cut_points[0]
    fused = segmenter.segment(cut, None, quantize.METHOD_INT8_DYNAMIC_FUSED)
    plain = segmenter.segment(cut, None, quantize.METHOD_INT8_DYNAMIC)
    assert fused.method == quantize.METHOD_INT8_DYNAMIC and fused.onnx_bytes == plain.onnx_bytes
    assert fused.note.startswith(f"{quantize.METHOD_INT8_DYNAMIC_FUSED} applies to whole models only")
    assert plain.note == ""


def test_the_optimizer_chatter_is_silenced_and_logging_left_as_it_was(
    ffn: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with caplog.at_level(logging.INFO):
        quantize.fuse_transformer(_source(ffn, tmp_path), tmp_path)
    assert not [r for r in caplog.records if not r.name.startswith("controller.")]  # no "Fused BiasGelu: 1"
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("fusion_base").level == logging.NOTSET  # restored


@pytest.fixture(scope="module")
def minilm_fused(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, dict[str, np.ndarray]]:
    art = cached_minilm()
    if art is None:
        pytest.skip("no cached MiniLM export: run python scripts/export_minilm.py (needs the 'export' extra)")
    work = tmp_path_factory.mktemp("minilm-fused")
    source = _source(art.model_path, work)
    model = onnx.load(str(source))
    assert quantize._attention_shape(model) == (12, 384)  # read off the graph: torch reshapes to -1 heads
    arrays = dict(np.load(art.eval_path))
    return source.read_bytes(), quantize.int8_dynamic_fused(source, work), arrays


def test_minilm_attention_is_fused_and_quantized_as_one_op(
    minilm_fused: tuple[bytes, bytes, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, fused, arrays = minilm_fused
    ops = collections.Counter(node.op_type for node in onnx.load_from_string(fused).graph.node)
    assert ops["QAttention"] == 6 and ops["QEmbedLayerNormalization"] == 1 and ops["BiasGelu"] == 6
    runtime = _runtime_ops(fused, tmp_path)
    assert "SkipLayerNormalization" not in runtime and runtime["LayerNormalization"] == 12
    feed = {name: arrays[name][:64] for name in ("input_ids", "attention_mask")}
    want = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(fused, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert float(cosine.mean()) >= 0.99
