"""Segments: cut out in memory, chained back to the full model, quantized after splitting, cached."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from common.errors import InvalidArgument
from controller.toolchain import quantize
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import EvalData
from controller.toolchain.measure import open_session
from controller.toolchain.segment_cache import SegmentCache, segment_key
from controller.toolchain.segments import Segmenter, extract_segment, run_segments
from tests.toolchain.tiny_models import digits_cnn

logger = logging.getLogger(__name__)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def digits_x(digits_model: DigitsArtifacts) -> np.ndarray:
    return np.asarray(np.load(digits_model.test_path)["x"])


@pytest.fixture(scope="module")
def models(digits_model: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    cnn, _ = digits_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return {"digits": digits_model.model_path.read_bytes(), "cnn": cnn.read_bytes()}


@pytest.fixture(scope="module")
def segmenters(models: dict[str, bytes], digits_x: np.ndarray) -> dict[str, Segmenter]:
    calibration = EvalData({"input": digits_x[:64]})
    return {name: Segmenter(source, calibration=calibration) for name, source in models.items()}


def _max_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names: tuple[str, ...]) -> float:
    worst = 0.0
    for name in names:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - want[name]), initial=0.0)))
    return worst


@pytest.mark.parametrize("name", ["digits", "cnn"])
def test_every_fp32_chain_equals_the_full_model(
    name: str, models: dict[str, bytes], segmenters: dict[str, Segmenter], digits_x: np.ndarray
) -> None:
    segmenter = segmenters[name]
    outputs = segmenter.graph.outputs
    feed = {"input": digits_x}
    full = run_segments([models[name]], feed)
    cuts = segmenter.cut_points
    assert len(cuts) >= 6
    worst = 0.0
    for cut in cuts:  # head -> tail at every cut point
        env = run_segments([segmenter.segment(None, cut), segmenter.segment(cut, None)], feed)
        worst = max(worst, _max_diff(env, full, outputs))
    for first, second in itertools.combinations(cuts, 2):  # head -> middle -> tail at every pair
        chain = [
            segmenter.segment(None, first),
            segmenter.segment(first, second),
            segmenter.segment(second, None),
        ]
        worst = max(worst, _max_diff(run_segments(chain, feed), full, outputs))
    logger.info("%s: %d cut points, fp32 chains max abs diff %.3g", name, len(cuts), worst)
    assert worst <= TOLERANCE


@pytest.mark.parametrize("name", ["digits", "cnn"])
def test_segments_pass_the_checker_load_and_declare_the_cut_tensors(
    name: str, segmenters: dict[str, Segmenter]
) -> None:
    segmenter = segmenters[name]
    bounds = segmenter.boundaries()
    for start, end in itertools.pairwise(bounds):
        model = segmenter.fp32(start, end)
        onnx.checker.check_model(model, full_check=True)
        session = open_session(model.SerializeToString())
        inputs, outputs = segmenter.io_names(start, end)
        assert [i.name for i in session.get_inputs()] == inputs
        assert [o.name for o in session.get_outputs()] == outputs
    head = segmenter.fp32(None, bounds[1])
    assert [v.name for v in head.graph.input] == list(segmenter.graph.inputs)
    # Every initializer a segment carries is one its own nodes read: no weights of other segments.
    for start, end in itertools.pairwise(bounds):
        model = segmenter.fp32(start, end)
        read = {name for node in model.graph.node for name in node.input}
        assert {init.name for init in model.graph.initializer} <= read


QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "ConvInteger", "MatMulNBits"}


def _quantized(model: bytes) -> bool:
    return bool(QUANTIZED_OPS & {n.op_type for n in onnx.load_from_string(model).graph.node})


def _agreement(env: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> float:
    return float(np.mean(np.argmax(env["probabilities"], 1) == np.argmax(full["probabilities"], 1)))


@pytest.mark.parametrize(
    ("name", "method"),
    [("digits", quantize.METHOD_INT8_DYNAMIC), ("cnn", quantize.METHOD_INT8_STATIC)],
)
def test_int8_chains_stay_close_to_fp32(
    name: str, method: str, models: dict[str, bytes], segmenters: dict[str, Segmenter], digits_x: np.ndarray
) -> None:
    segmenter = segmenters[name]
    feed = {"input": digits_x}
    full = run_segments([models[name]], feed)
    cuts = segmenter.cut_points
    for cut in (cuts[len(cuts) // 3], cuts[2 * len(cuts) // 3]):
        head, tail = segmenter.segment(None, cut, method), segmenter.segment(cut, None, method)
        assert head.inputs == segmenter.graph.inputs and tail.outputs == segmenter.graph.outputs
        both = _agreement(run_segments([head, tail], feed), full)
        mixed = _agreement(run_segments([segmenter.segment(None, cut), tail], feed), full)
        logger.info(
            "%s %s chain at cut %d: agreement with fp32 %.4f (fp32 head: %.4f)",
            name,
            method,
            cut.index,
            both,
            mixed,
        )
        assert both >= 0.95 and mixed >= 0.95
        quantized = [_quantized(seg.onnx_bytes) for seg in (head, tail)]
        assert any(quantized)
        # A side the method left alone says so (e.g. digits' last block has no MatMul to quantize).
        assert all(q or seg.note for q, seg in zip(quantized, (head, tail), strict=True))


def test_fp16_and_int4_segments_run_and_say_when_nothing_was_converted(
    models: dict[str, bytes], segmenters: dict[str, Segmenter], digits_x: np.ndarray
) -> None:
    segmenter = segmenters["digits"]
    feed = {"input": digits_x[:50]}
    full = run_segments([models["digits"]], feed)
    first = segmenter.cut_points[0]  # before any MatMul: the head has nothing for int4
    head16 = segmenter.segment(None, first, "fp16")
    env = run_segments([head16, segmenter.segment(first, None, "fp16")], feed)
    assert _agreement(env, full) >= 0.98
    head4 = segmenter.segment(None, first, "int4")
    assert (
        "nothing to convert" in head4.note and head4.onnx_bytes == segmenter.segment(None, first).onnx_bytes
    )
    tail4 = segmenter.segment(first, None, "int4")
    assert not tail4.note and "MatMulNBits" in {
        n.op_type for n in onnx.load_from_string(tail4.onnx_bytes).graph.node
    }
    assert _agreement(run_segments([head4, tail4], feed), full) >= 0.95


def test_passthrough_tensors_survive_conversion(
    segmenters: dict[str, Segmenter], digits_x: np.ndarray
) -> None:
    """After the ArgMax the probabilities (a model output) pass through the tail unchanged."""
    segmenter = segmenters["digits"]
    cut = next(c for c in segmenter.cut_points if "probabilities" in c.names and len(c.names) == 2)
    for method in ("fp16", "int8"):
        tail = segmenter.segment(cut, None, method)
        model = onnx.load_from_string(tail.onnx_bytes)
        assert [v.name for v in model.graph.input] == list(cut.names)
        assert [v.name for v in model.graph.output] == list(segmenter.graph.outputs)
        env = run_segments([segmenter.segment(None, cut), tail], {"input": digits_x[:20]})
        assert env["label"].shape == (20,)


def test_segments_are_built_once_and_cached_by_content(models: dict[str, bytes], tmp_path: Path) -> None:
    directory = tmp_path / "segments"
    segmenter = Segmenter(models["digits"], cache=SegmentCache(directory=directory))
    cut = segmenter.cut_points[3]
    first = segmenter.segment(None, cut)
    assert segmenter.cache.misses == 1
    again = segmenter.segment(None, cut)
    assert again.onnx_bytes is first.onnx_bytes and segmenter.cache.hits == 1
    assert len(list(directory.iterdir())) == 1  # one <sha256>.onnx, no temp file left behind
    assert all(len(p.stem) == 64 and p.suffix == ".onnx" for p in directory.iterdir())

    # A new process (a new cache over the same directory) reads the bytes back instead of building.
    other = Segmenter(models["digits"], cache=SegmentCache(directory=directory))
    reread = other.segment(None, cut)
    assert reread.onnx_bytes == first.onnx_bytes and other.cache.misses == 0
    assert reread.sha256 == first.sha256

    keys = {
        segment_key("a", None, 3, "fp32"),
        segment_key("b", None, 3, "fp32"),
        segment_key("a", 3, None, "fp32"),
        segment_key("a", None, 3, "fp16"),
        segment_key("a", None, 3, "fp32", "calibration"),
    }
    assert len(keys) == 5


def test_cache_is_an_lru_bounded_by_count_and_bytes() -> None:
    cache = SegmentCache(max_entries=2, max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"12")
    assert cache.get("b") is None and len(cache) == 2  # count bound: b (least recent) went
    cache.put("d", b"123456")
    assert cache.size_bytes <= 10 and cache.get("d") == b"123456" and cache.get("a") is None
    cache.put("huge", b"x" * 11)  # larger than the whole budget: not kept in memory
    assert cache.get("huge") is None and cache.get("d") == b"123456"
    built: list[str] = []

    def build() -> bytes:
        built.append("e")
        return b"e"

    assert cache.get_or_build("e", build) == b"e"
    assert cache.get_or_build("e", build) == b"e"
    assert built == ["e"]
    with pytest.raises(InvalidArgument):
        SegmentCache(max_entries=0)


def test_manifest_records_the_segment(segmenters: dict[str, Segmenter]) -> None:
    segmenter = segmenters["cnn"]
    cut = segmenter.cut_points[2]
    manifest = segmenter.segment(cut, None, "int8").manifest()
    assert manifest["source_sha256"] == segmenter.graph.source_sha256
    assert (manifest["start"], manifest["end"], manifest["method"]) == (
        cut.index,
        None,
        quantize.METHOD_INT8_DYNAMIC,
    )
    assert [i["name"] for i in manifest["inputs"]] == list(cut.names)
    assert manifest["inputs"][0]["dtype"] == "float32" and manifest["inputs"][0]["shape"][1:] == [8, 8, 8]
    assert manifest["opset"]["ai.onnx"] == 17 and manifest["size_bytes"] > 0


def test_bad_requests_are_refused(models: dict[str, bytes], segmenters: dict[str, Segmenter]) -> None:
    segmenter = segmenters["digits"]
    a, b = segmenter.cut_points[1], segmenter.cut_points[4]
    with pytest.raises(InvalidArgument, match="end after it starts"):
        segmenter.segment(b, a)
    with pytest.raises(InvalidArgument, match="end after it starts"):
        segmenter.segment(a, a)
    with pytest.raises(InvalidArgument, match="not a cut point"):
        segmenter.segment(None, 0)
    with pytest.raises(InvalidArgument, match="unknown segment method"):
        segmenter.segment(None, a, "int3")
    with pytest.raises(InvalidArgument, match="calibration"):
        Segmenter(models["digits"]).segment(a, None, quantize.METHOD_INT8_STATIC)


def test_extract_segment_is_the_one_off_form(models: dict[str, bytes], digits_x: np.ndarray) -> None:
    cut = Segmenter(models["cnn"]).cut_points[2]
    head = extract_segment(models["cnn"], None, cut.index)
    tail = extract_segment(onnx.load_from_string(models["cnn"]), cut, None)
    env = run_segments([head.SerializeToString(), tail.SerializeToString()], {"input": digits_x[:10]})
    want = run_segments([models["cnn"]], {"input": digits_x[:10]})
    assert _max_diff(env, want, ("probabilities",)) <= TOLERANCE


def test_quantizing_segments_writes_nothing_outside_its_temp_dir(
    models: dict[str, bytes], digits_x: np.ndarray, clean_cwd: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    segmenter = Segmenter(models["cnn"], calibration=EvalData({"input": digits_x[:32]}), workdir=work)
    cut = segmenter.cut_points[1]
    for method in ("fp16", "int8", quantize.METHOD_INT8_STATIC, "int4"):
        segmenter.segment(cut, None, method)
    assert list(clean_cwd.iterdir()) == []
    assert list(work.iterdir()) == []
