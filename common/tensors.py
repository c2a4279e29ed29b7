"""Conversions between numpy arrays and the wire-level ``Tensor`` / ``TensorSpec`` types.

Tensors travel as little-endian C-order bytes. Decoding never copies: ``from_tensor`` returns a
read-only view over the message's bytes, which is all onnxruntime needs and keeps large inputs cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from common.errors import InvalidArgument
from common.types import DataType, Tensor, TensorSpec

#: Explicit little-endian wire dtypes ('|' = byte order irrelevant for one-byte types).
_WIRE_DTYPES: dict[DataType, np.dtype[np.generic]] = {
    DataType.FLOAT32: np.dtype("<f4"),
    DataType.FLOAT16: np.dtype("<f2"),
    DataType.FLOAT64: np.dtype("<f8"),
    DataType.INT8: np.dtype("i1"),
    DataType.UINT8: np.dtype("u1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.BOOL: np.dtype("?"),
}

#: numpy dtype name -> DataType; the enum values are exactly numpy's names.
_BY_NUMPY_NAME = {dt.value: dt for dt in DataType}

#: ONNX type strings as onnxruntime reports them (``NodeArg.type``).
_ONNX_TYPES = {
    "tensor(float)": DataType.FLOAT32,
    "tensor(float16)": DataType.FLOAT16,
    "tensor(double)": DataType.FLOAT64,
    "tensor(int8)": DataType.INT8,
    "tensor(uint8)": DataType.UINT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(bool)": DataType.BOOL,
}

SUPPORTED_DTYPES = tuple(dt.value for dt in DataType)


#: np.dtype -> DataType for the dtypes arrays usually have (native and wire byte order): one dict
#: lookup instead of reading ``dtype.name``, which numpy builds anew on every access (this is on
#: every served request's path).
_BY_NUMPY_DTYPE: dict[np.dtype[np.generic], DataType] = {
    **{np.dtype(dt.value): dt for dt in DataType},
    **{wire: dt for dt, wire in _WIRE_DTYPES.items()},
}


def data_type_of(dtype: npt.DTypeLike) -> DataType:
    """The ``DataType`` of a numpy dtype (any byte order); InvalidArgument names unsupported ones."""
    np_dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    found = _BY_NUMPY_DTYPE.get(np_dtype)
    if found is not None:
        return found
    found = _BY_NUMPY_NAME.get(np_dtype.name)
    if found is None:
        raise InvalidArgument(
            f"unsupported tensor dtype {np_dtype.name!r}: supported are {', '.join(SUPPORTED_DTYPES)}"
        )
    return found


def to_tensor(name: str, array: npt.ArrayLike) -> Tensor:
    """Encode ``array`` as a ``Tensor`` (little-endian, C order)."""
    arr = np.asarray(array)
    dtype = data_type_of(arr.dtype)
    # ascontiguousarray is a no-op for arrays already in wire layout; it byte-swaps big-endian input.
    wire = np.ascontiguousarray(arr, dtype=_WIRE_DTYPES[dtype])
    # A numpy shape already holds Python ints.
    return Tensor(name=name, dtype=dtype, shape=arr.shape, data=wire.tobytes())


def expected_nbytes(dtype: DataType, shape: Sequence[int]) -> int:
    # Python ints: a hostile shape cannot overflow this product.
    return math.prod(shape) * dtype.itemsize


def from_tensor(t: Tensor) -> np.ndarray:
    """Decode a ``Tensor`` into a read-only array that views ``t.data`` (no copy).

    Raises InvalidArgument naming the tensor when a dimension is negative or the byte count does not
    match shape x itemsize.
    """
    if t.encoding:
        # Compressed bytes are not the array: the receiver decodes them (agent.serving.codec) first.
        raise InvalidArgument(f"tensor {t.name!r} is {t.encoding}-encoded; decode it before reading it")
    if t.shape and min(t.shape) < 0:
        raise InvalidArgument(f"tensor {t.name!r} has a negative dimension in shape {list(t.shape)}")
    expected = expected_nbytes(t.dtype, t.shape)
    if len(t.data) != expected:
        raise InvalidArgument(
            f"tensor {t.name!r} of {t.dtype.value} {list(t.shape)} needs {expected} bytes "
            f"but carries {len(t.data)}"
        )
    if t.dtype is DataType.BOOL and t.data and int(np.frombuffer(t.data, dtype=np.uint8).max()) > 1:
        # numpy would happily view byte 2 as a bool whose comparisons misbehave; refuse it.
        raise InvalidArgument(f"tensor {t.name!r} is bool but holds bytes other than 0 and 1")
    return np.frombuffer(t.data, dtype=_WIRE_DTYPES[t.dtype]).reshape(t.shape)


def dtype_from_onnx_type(onnx_type: str) -> DataType:
    """Map an onnxruntime type string such as ``'tensor(float)'`` to a ``DataType``."""
    found = _ONNX_TYPES.get(onnx_type)
    if found is None:
        raise InvalidArgument(
            f"unsupported ONNX type {onnx_type!r}: supported are {', '.join(sorted(_ONNX_TYPES))}"
        )
    return found


def _is_dynamic(dim: int | None) -> bool:
    return dim is None or dim < 0


def format_shape(shape: Sequence[int | None]) -> str:
    """Shape for messages, dynamic dimensions shown as '?'."""
    return "[" + ", ".join("?" if _is_dynamic(d) else str(d) for d in shape) + "]"


def spec_matches(spec: TensorSpec, array: np.ndarray) -> str | None:
    """None when ``array`` fits ``spec``; otherwise one sentence saying what is wrong.

    Checks the dtype (byte order aside), the rank and every static dimension; -1 (or None) in the
    spec is dynamic and accepts any size.
    """
    given = np.dtype(array.dtype).name
    if given != spec.dtype.value:
        return f"{spec.name!r} expects dtype {spec.dtype.value} but got {given}"
    if array.ndim != len(spec.shape):
        return (
            f"{spec.name!r} expects rank {len(spec.shape)} (shape {format_shape(spec.shape)}) "
            f"but got rank {array.ndim} (shape {list(array.shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if not _is_dynamic(want) and want != got:
            return (
                f"{spec.name!r} dimension {axis} must be {want} but is {got} "
                f"(expected shape {format_shape(spec.shape)}, got {list(array.shape)})"
            )
    return None
