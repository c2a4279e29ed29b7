from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from common.errors import InvalidArgument, NotFound
from common.types import DataType, TensorSpec
from controller.artifacts import ArtifactStore
from controller.onnx_check import inspect_onnx
from controller.toolchain.digits import DigitsArtifacts


def _write(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_digits_model_specs(digits_model: DigitsArtifacts) -> None:
    inputs, outputs = inspect_onnx(digits_model.model_path)
    assert inputs == (TensorSpec("input", DataType.FLOAT32, (-1, 64)),)
    assert outputs == (
        TensorSpec("label", DataType.INT64, (-1,)),
        TensorSpec("probabilities", DataType.FLOAT32, (-1, 10)),
    )


def test_initializers_listed_as_inputs_are_excluded(tmp_path: Path) -> None:
    weight = onh.from_array(np.ones((3, 2), np.float32), "w")
    model = _model(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        # IR < 4 style: the weight also appears among the graph inputs.
        [
            oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3]),
            oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3, 2]),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    inputs, outputs = inspect_onnx(_write(tmp_path / "m.onnx", model))
    assert inputs == (TensorSpec("x", DataType.FLOAT32, (-1, 3)),)
    assert outputs == (TensorSpec("y", DataType.FLOAT32, (-1, 2)),)


def test_dtypes_mapped(tmp_path: Path) -> None:
    model = _model(
        [oh.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT16)],
        [oh.make_tensor_value_info("x", onnx.TensorProto.BOOL, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [2])],
    )
    inputs, outputs = inspect_onnx(_write(tmp_path / "m.onnx", model))
    assert inputs[0].dtype is DataType.BOOL and outputs[0].dtype is DataType.FLOAT16


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def _bad_files(tmp_path: Path, digits: DigitsArtifacts) -> dict[str, Path]:
    good = digits.model_path.read_bytes()
    files = {
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(7).bytes(5000),
        "text": b"this is not an onnx model\n",
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(data)
    # Parses fine, but the checker refuses it: a node consumes a tensor nothing produces.
    paths["checker"] = _write(
        tmp_path / "checker.onnx",
        _model(
            [oh.make_node("Relu", ["nowhere"], ["y"])],
            [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
    )
    return paths


@pytest.mark.parametrize("kind", ["truncated", "random", "text", "empty", "checker"])
def test_invalid_files_refused(
    tmp_path: Path, digits_model: DigitsArtifacts, store: ArtifactStore, kind: str
) -> None:
    path = _bad_files(tmp_path, digits_model)[kind]
    # The upload path: store first, inspect the stored file, discard it when refused.
    sha, _ = store.put_file(path, max_bytes=10_000_000)
    with pytest.raises(InvalidArgument, match=r"^not a valid ONNX model: .+"):
        inspect_onnx(store.path(sha))
    store.discard(sha)
    assert list(store.tmp_dir.iterdir()) == []
    assert not store.exists(sha)


def test_zipmap_output_refused_with_hint(tmp_path: Path) -> None:
    # skl2onnx's default classifier output: a sequence of {label: probability} maps.
    probs_type = oh.make_sequence_type_proto(
        oh.make_map_type_proto(
            onnx.TensorProto.INT64, oh.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)
        )
    )
    graph = oh.make_graph(
        [oh.make_node("ZipMap", ["x"], ["probs"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2])],
        [oh.make_value_info("probs", probs_type)],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)  # valid ONNX, just not something the tensor protocol can carry
    with pytest.raises(InvalidArgument, match=r"unsupported ONNX model: output 'probs' .*zipmap disabled"):
        inspect_onnx(_write(tmp_path / "zipmap.onnx", model))


def test_unsupported_element_type_refused(tmp_path: Path) -> None:
    model = _model(
        [oh.make_node("Identity", ["s"], ["y"])],
        [oh.make_tensor_value_info("s", onnx.TensorProto.STRING, [1])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.STRING, [1])],
    )
    with pytest.raises(InvalidArgument, match="unsupported ONNX model: input 's' has element type STRING"):
        inspect_onnx(_write(tmp_path / "strings.onnx", model))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        inspect_onnx(tmp_path / "nope.onnx")


def test_copy_of_good_model_still_inspects(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    # Inspection depends on content only, not on the file's name or directory.
    copy = tmp_path / "renamed.bin"
    shutil.copy(digits_model.model_path, copy)
    assert inspect_onnx(copy) == inspect_onnx(digits_model.model_path)
