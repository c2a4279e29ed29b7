"""Cut points: where a model can be split, what crosses, and how many bytes per sample."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.errors import InvalidArgument
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.partition import ModelGraph, find_cut_points, select_cut_points
from controller.toolchain.segments import Segmenter, run_segments
from tests.toolchain.tiny_models import digits_cnn

OPSET = [helper.make_opsetid("", 17)]


def make_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], width: int | str = 4) -> bytes:
    """x float [N, width] -> ... -> y float [N, width]; nodes in the order given (not checked)."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def cnn_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path, _ = digits_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return path.read_bytes()


def _expected_bytes(shape: tuple[int | str | None, ...], itemsize: int) -> int:
    return math.prod(d for d in shape[1:] if isinstance(d, int)) * itemsize


def test_digits_mlp_has_many_real_cut_points(digits_model: DigitsArtifacts) -> None:
    source = digits_model.model_path.read_bytes()
    graph = ModelGraph(source)
    cuts = graph.cut_points
    weights = {init.name for init in onnx.load_from_string(source).graph.initializer}

    assert len(cuts) >= 10, [c.index for c in cuts]
    assert all(0 < c.index < graph.node_count for c in cuts)  # the trivial cuts are not listed
    assert [c.index for c in cuts] == sorted({c.index for c in cuts})
    for cut in cuts:
        assert 1 <= len(cut.tensors) <= 4
        assert not set(cut.names) & weights  # no weight ever crosses
        for tensor in cut.tensors:
            assert isinstance(tensor.shape[0], str)  # a symbolic batch dim (the input's was named "N")
            assert tensor.bytes_per_sample == _expected_bytes(tensor.shape, tensor.dtype.itemsize)
    # The MLP's layers: 64 inputs (256 B), hidden 128 and 64 (512 B, 256 B), 10 class scores (40 B).
    sizes = {c.bytes_per_sample for c in cuts}
    assert {256, 512, 40} <= sizes
    # After the ArgMax both the probabilities (a model output) and the class index cross.
    two = [c for c in cuts if len(c.tensors) == 2]
    assert two and all("probabilities" in c.names for c in two)


def test_cnn_cut_points_report_conv_and_flatten_sizes(cnn_bytes: bytes) -> None:
    cuts = find_cut_points(cnn_bytes)
    by_name = {c.names[0]: c for c in cuts if len(c.tensors) == 1}
    assert len(cuts) >= 6
    assert by_name["conv"].bytes_per_sample == 8 * 8 * 8 * 4  # 8 channels of 8x8 floats
    assert by_name["pool"].bytes_per_sample == 8 * 4 * 4 * 4
    assert by_name["features"].bytes_per_sample == 128 * 4
    assert by_name["features"].tensors[0].shape[1:] == (128,)


def _weight_model() -> bytes:
    """A weight Transpose (not folded by the exporter) and a Constant, both used only at the end."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),  # weight-derived
        helper.make_node(
            "Constant", [], ["c"], value=numpy_helper.from_array(np.full((4,), 0.5, np.float32))
        ),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("MatMul", ["s", "Wt"], ["m"]),
        helper.make_node("Add", ["m", "c"], ["y"]),
    ]
    return make_model(nodes, [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "W")])


def test_weight_derived_tensors_never_cross_and_the_tail_recomputes_them() -> None:
    source = _weight_model()
    segmenter = Segmenter(source)
    cuts = segmenter.cut_points
    assert [c.names for c in cuts] == [("r",), ("s",), ("m",)]  # never Wt, never c
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    full = run_segments([source], {"x": x})["y"]
    for cut in cuts:
        tail = segmenter.fp32(cut, None)
        if cut.names != ("m",):
            assert "Transpose" in {n.op_type for n in tail.graph.node}  # recomputed on the tail side
        env = run_segments([segmenter.segment(None, cut), segmenter.segment(cut, None)], {"x": x})
        np.testing.assert_allclose(env["y"], full, atol=1e-6)


def test_constant_nodes_become_initializers() -> None:
    graph = ModelGraph(_weight_model())
    assert "Constant" not in {n.op_type for n in graph.model.graph.node}
    assert "c" in {init.name for init in graph.model.graph.initializer}


def _residual_model() -> bytes:
    """y = relu(relu(x)) + x: the model input crosses every cut, with one activation."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["b"]),
        helper.make_node("Add", ["b", "x"], ["y"]),
    ]
    return make_model(nodes, [])


def test_a_model_input_used_late_crosses_and_counts_against_the_maximum() -> None:
    source = _residual_model()
    cuts = find_cut_points(source)
    assert [c.names for c in cuts] == [("a", "x"), ("b", "x")]
    assert cuts[0].bytes_per_sample == 2 * 4 * 4
    assert find_cut_points(source, max_tensors=1) == []
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    segmenter = Segmenter(source)
    env = run_segments(
        [segmenter.segment(None, 1), segmenter.segment(1, 2), segmenter.segment(2, None)], {"x": x}
    )
    np.testing.assert_array_equal(env["y"], run_segments([source], {"x": x})["y"])


def test_positions_where_only_inputs_and_their_shapes_cross_are_not_cut_points() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["y"]),
    ]
    graph = ModelGraph(make_model(nodes, []))
    assert [c.index for c in graph.cut_points] == [2]
    assert set(graph.cut_points[0].names) == {"r", "shape"}
    with pytest.raises(InvalidArgument, match="only model inputs"):
        graph.cut_point(1)
    with pytest.raises(InvalidArgument, match="strictly between"):
        graph.cut_point(3)


def test_unknown_dims_give_no_byte_count() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    (cut,) = find_cut_points(make_model(nodes, [], width="F"))
    assert cut.tensors[0].shape == ("N", "F")
    assert cut.bytes_per_sample is None
    assert json.loads(json.dumps(cut.as_dict()))["bytes_per_sample"] is None


def test_node_order_does_not_matter() -> None:
    sorted_model = onnx.load_from_string(_weight_model())
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(sorted_model)
    nodes = list(shuffled.graph.node)[::-1]
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    # The weight Transpose now lands between Sigmoid and MatMul: that position carries the same
    # tensor as the one before it, so it is not a second cut point.
    assert [c.names for c in find_cut_points(shuffled)] == [c.names for c in find_cut_points(sorted_model)]


def test_select_keeps_cheap_spread_out_cut_points(digits_model: DigitsArtifacts) -> None:
    graph = ModelGraph(digits_model.model_path.read_bytes())
    chosen = graph.select(3)
    assert 1 <= len(chosen) <= 3
    assert [c.index for c in chosen] == sorted(c.index for c in chosen)
    gap = graph.node_count / 8
    assert all(b.index - a.index >= gap for a, b in itertools.pairwise(chosen))
    assert min(c.bytes_per_sample or 0 for c in chosen) == min(
        c.bytes_per_sample or 0 for c in graph.cut_points
    )
    assert select_cut_points(graph.cut_points, 0, graph.node_count) == []


def test_cut_points_serialise_to_json(cnn_bytes: bytes) -> None:
    data = json.loads(json.dumps([c.as_dict() for c in find_cut_points(cnn_bytes)]))
    assert data[0]["tensors"][0]["dtype"] == "float32"
    assert {"index", "after", "bytes_per_sample", "tensors"} <= set(data[0])


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a valid ONNX model"):
        find_cut_points(b"definitely not protobuf \xff\xff")
    with pytest.raises(InvalidArgument, match="max tensors"):
        find_cut_points(_residual_model(), max_tensors=0)
