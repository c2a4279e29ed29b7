"""Eval data is checked against the model's inputs, and every problem names the array and what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidArgument
from common.types import DataType, TensorSpec
from controller.onnx_check import inspect_onnx
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import load_eval_data, validate_eval_data

PIXELS = TensorSpec("input", DataType.FLOAT32, (-1, 64))
LABEL = TensorSpec("label", DataType.INT64, (-1,))
EMBEDDING = TensorSpec("embedding", DataType.FLOAT32, (-1, 8, 16))


def _rows(n: int, dtype: str = "float32", width: int = 64) -> np.ndarray:
    return np.zeros((n, width), dtype=dtype)


def test_loads_digits_eval_data_against_the_real_model(
    digits_model: DigitsArtifacts, digits_eval: Path
) -> None:
    inputs, outputs = inspect_onnx(digits_model.model_path)
    data = load_eval_data(digits_eval, inputs, outputs)
    assert data.rows == digits_model.n_test
    assert data.labels is not None and data.labels.shape == (digits_model.n_test,)
    assert data.head(10).rows == 10 and data.head(10).labels is not None
    assert data.batch_of(3)["input"].shape == (3, 64)
    # Fewer rows than the batch: repeated, so a batch-32 latency run works with tiny eval sets.
    assert data.head(5).batch_of(32)["input"].shape == (32, 64)


def _save(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": _rows(4), "y": np.zeros(4, np.int64)}, ["'input'", "x, y"]),
        ({"input": _rows(4, "float64")}, ["'input'", "float64", "float32"]),
        ({"input": _rows(4), "labels": np.zeros(3, np.int64)}, ["'labels'", "3 rows", "4"]),
        ({"input": _rows(4), "labels": np.zeros(4, np.float32)}, ["'labels'", "integer"]),
        ({"input": _rows(4), "extra": _rows(4)}, ["'extra'", "matches no model input"]),
        ({"input": np.zeros((4, 8, 8), np.float32)}, ["'input'", "rank 3", "rank 2"]),
        ({"input": _rows(4, width=63)}, ["'input'", "needs 64 at dimension 1"]),
        ({"input": _rows(0)}, ["'input'", "no rows"]),
    ],
    ids=[
        "wrong-name",
        "wrong-dtype",
        "label-rows",
        "float-labels",
        "unknown-array",
        "rank",
        "static-dim",
        "empty",
    ],
)
def test_bad_eval_files_name_the_problem(
    tmp_path: Path, arrays: dict[str, np.ndarray], expected: list[str]
) -> None:
    path = _save(tmp_path, **arrays)
    with pytest.raises(InvalidArgument) as caught:
        load_eval_data(path, [PIXELS], [LABEL])
    for fragment in expected:
        assert fragment in str(caught.value)
    assert "eval.npz" in str(caught.value)


def test_mismatched_rows_between_inputs() -> None:
    inputs = [TensorSpec("ids", DataType.INT64, (-1, 8)), TensorSpec("mask", DataType.INT64, (-1, 8))]
    arrays = {"ids": np.zeros((5, 8), np.int64), "mask": np.zeros((4, 8), np.int64)}
    with pytest.raises(InvalidArgument, match=r"'mask' has 4 rows but 'ids' has 5"):
        validate_eval_data(arrays, inputs)


def test_fixed_batch_needs_a_multiple_of_rows() -> None:
    spec = TensorSpec("image", DataType.FLOAT32, (4, 3))
    validate_eval_data({"image": np.zeros((8, 3), np.float32)}, [spec])
    with pytest.raises(InvalidArgument, match=r"fixed batch of 4.*got 6"):
        validate_eval_data({"image": np.zeros((6, 3), np.float32)}, [spec])


def test_labels_need_a_class_output() -> None:
    arrays = {"input": _rows(2), "labels": np.zeros(2, np.int64)}
    with pytest.raises(InvalidArgument, match=r"no class output"):
        validate_eval_data(arrays, [PIXELS], [EMBEDDING])
    # Without labels the same model is fine: variants are compared with fp32 instead.
    assert validate_eval_data({"input": _rows(2)}, [PIXELS], [EMBEDDING]).labels is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no such file"):
        load_eval_data(tmp_path / "nope.npz", [PIXELS])


def test_not_an_npz(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"definitely not numpy" * 10)
    with pytest.raises(InvalidArgument, match=r"junk.npz: not a readable .npz"):
        load_eval_data(junk, [PIXELS])
    single = tmp_path / "single.npy"
    np.save(single, _rows(2))
    with pytest.raises(InvalidArgument, match=r"single .npy array"):
        load_eval_data(single, [PIXELS])


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, input=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidArgument, match=r"not a readable .npz"):
        load_eval_data(path, [PIXELS])
