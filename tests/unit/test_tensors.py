from __future__ import annotations

import numpy as np
import pytest

from common.errors import InvalidArgument
from common.tensors import dtype_from_onnx_type, from_tensor, spec_matches, to_tensor
from common.types import DataType, Tensor, TensorSpec

_RNG = np.random.default_rng(0)


def _sample(dtype: DataType) -> np.ndarray:
    if dtype is DataType.BOOL:
        return _RNG.integers(0, 2, size=(2, 3)).astype(bool)
    np_dtype = np.dtype(dtype.value)
    if np_dtype.kind == "f":
        return (_RNG.standard_normal((2, 3)) * 100).astype(np_dtype)
    info = np.iinfo(np_dtype)
    # Include the extremes: a wrong width or sign would mangle exactly these.
    values = np.array([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, 7])
    return values.astype(np_dtype).reshape(2, 3)


@pytest.mark.parametrize("dtype", list(DataType), ids=lambda d: d.value)
def test_round_trip_every_dtype(dtype: DataType) -> None:
    array = _sample(dtype)
    tensor = to_tensor("x", array)
    assert tensor.dtype is dtype
    assert tensor.shape == (2, 3)
    assert len(tensor.data) == array.size * dtype.itemsize
    back = from_tensor(tensor)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_wire_format_is_little_endian_c_order() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int32)
    assert to_tensor("x", array).data == np.array([1, 2, 3, 4], dtype="<i4").tobytes()
    # Fortran-ordered and big-endian inputs are normalised to the same bytes.
    assert to_tensor("x", np.asfortranarray(array)).data == to_tensor("x", array).data
    big = array.astype(">i4")
    assert to_tensor("x", big).data == to_tensor("x", array).data
    assert to_tensor("x", big).dtype is DataType.INT32


def test_decoded_array_is_a_read_only_view() -> None:
    tensor = to_tensor("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    back = from_tensor(tensor)
    assert not back.flags.writeable
    assert np.shares_memory(back, np.frombuffer(tensor.data, dtype=np.uint8))


def test_scalar_and_empty_tensors() -> None:
    scalar = from_tensor(to_tensor("s", np.float64(2.5)))
    assert scalar.shape == ()
    assert float(scalar) == 2.5
    empty = to_tensor("e", np.zeros((0, 4), dtype=np.float32))
    assert empty.data == b""
    assert from_tensor(empty).shape == (0, 4)


@pytest.mark.parametrize("delta", [-1, 1, -4])
def test_wrong_byte_count_names_tensor_and_counts(delta: int) -> None:
    good = to_tensor("pixels", np.zeros((2, 3), dtype=np.float32))
    bad = Tensor(
        "pixels", good.dtype, good.shape, good.data[: len(good.data) + delta] + b"\0" * max(delta, 0)
    )
    with pytest.raises(InvalidArgument) as err:
        from_tensor(bad)
    message = str(err.value)
    assert "'pixels'" in message
    assert "24" in message
    assert str(24 + delta) in message


def test_negative_dimension_refused() -> None:
    # -1 x -4 x 4 bytes = 16 bytes would pass a naive size check.
    with pytest.raises(InvalidArgument, match=r"'x'.*negative"):
        from_tensor(Tensor("x", DataType.FLOAT32, (-1, -4), b"\0" * 16))


def test_encoded_tensor_is_not_read_as_an_array() -> None:
    # Compressed bytes happen to be the right length here; reading them as floats would be garbage.
    with pytest.raises(InvalidArgument, match=r"'x' is zlib-encoded"):
        from_tensor(Tensor("x", DataType.FLOAT32, (2,), b"\0" * 8, encoding="zlib"))


def test_huge_shape_does_not_overflow_size_check() -> None:
    # 2**62 * 2**2 * 4 wraps to 0 in 64-bit arithmetic; must still be refused for empty data.
    with pytest.raises(InvalidArgument):
        from_tensor(Tensor("x", DataType.FLOAT32, (2**62, 4), b""))


@pytest.mark.parametrize(
    "array", [np.array(["a"]), np.zeros(2, dtype=np.complex64), np.zeros(2, dtype=np.uint32)]
)
def test_unsupported_dtype_named(array: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match=array.dtype.name):
        to_tensor("x", array)


def test_dtype_from_onnx_type() -> None:
    assert dtype_from_onnx_type("tensor(float)") is DataType.FLOAT32
    assert dtype_from_onnx_type("tensor(double)") is DataType.FLOAT64
    assert dtype_from_onnx_type("tensor(float16)") is DataType.FLOAT16
    assert dtype_from_onnx_type("tensor(int64)") is DataType.INT64
    assert dtype_from_onnx_type("tensor(bool)") is DataType.BOOL
    with pytest.raises(InvalidArgument, match="tensor\\(string\\)"):
        dtype_from_onnx_type("tensor(string)")
    with pytest.raises(InvalidArgument):
        dtype_from_onnx_type("seq(map(int64,tensor(float)))")


def test_spec_matches() -> None:
    spec = TensorSpec("input", DataType.FLOAT32, (-1, 64))
    assert spec_matches(spec, np.zeros((1, 64), np.float32)) is None
    assert spec_matches(spec, np.zeros((7, 64), np.float32)) is None
    assert spec_matches(spec, np.zeros((0, 64), np.float32)) is None

    problem = spec_matches(spec, np.zeros((1, 64), np.float64))
    assert problem is not None
    assert "'input'" in problem and "float32" in problem and "float64" in problem

    problem = spec_matches(spec, np.zeros(64, np.float32))
    assert problem is not None
    assert "rank 2" in problem and "rank 1" in problem

    problem = spec_matches(spec, np.zeros((1, 63), np.float32))
    assert problem is not None
    assert "dimension 1" in problem and "64" in problem and "63" in problem

    # Fully dynamic specs accept any size of the right rank.
    assert spec_matches(TensorSpec("t", DataType.INT64, (-1, -1)), np.zeros((3, 9), np.int64)) is None
    assert spec_matches(TensorSpec("s", DataType.BOOL, ()), np.array(True)) is None


def test_bool_bytes_other_than_0_and_1_refused() -> None:
    assert from_tensor(Tensor("m", DataType.BOOL, (3,), b"\x00\x01\x00")).tolist() == [False, True, False]
    with pytest.raises(InvalidArgument, match="'m'"):
        from_tensor(Tensor("m", DataType.BOOL, (3,), b"\x00\x02\x01"))
