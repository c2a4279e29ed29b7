"""Validate an uploaded ONNX file and read its input/output specs, before it is offered to any device."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from common.errors import InvalidArgument, NotFound
from common.types import DataType, TensorSpec

logger = logging.getLogger(__name__)

_ELEM_TYPES: dict[int, DataType] = {
    onnx.TensorProto.FLOAT: DataType.FLOAT32,
    onnx.TensorProto.FLOAT16: DataType.FLOAT16,
    onnx.TensorProto.DOUBLE: DataType.FLOAT64,
    onnx.TensorProto.INT8: DataType.INT8,
    onnx.TensorProto.UINT8: DataType.UINT8,
    onnx.TensorProto.INT16: DataType.INT16,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.INT64: DataType.INT64,
    onnx.TensorProto.BOOL: DataType.BOOL,
}


def inspect_onnx(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Return (inputs, outputs) of the model at ``path`` after ``onnx.checker`` accepts it.

    InvalidArgument("not a valid ONNX model: ...") for anything the checker or parser refuses;
    InvalidArgument("unsupported ONNX model: ...") for a valid model whose inputs or outputs are not
    tensors of a type the inference protocol carries.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    try:
        # Checking by path (not a loaded proto) lets the checker handle models over protobuf's 2 GiB.
        onnx.checker.check_model(str(path))
        # Only the graph's signature is needed: leave external weight files on disk.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises checker, protobuf-decode and OS errors alike; all mean "bad file"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"not a valid ONNX model: {reason}") from exc

    inputs, outputs = signature(model)
    if not outputs:
        raise InvalidArgument("not a valid ONNX model: the graph declares no outputs")
    logger.debug("inspected %s: inputs %s, outputs %s", path, inputs, outputs)
    return inputs, outputs


def signature(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a parsed model, without running the checker (for bytes the toolchain
    built itself). InvalidArgument as ``inspect_onnx`` for inputs or outputs the protocol cannot carry."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    # Older IR versions list weights as graph inputs too; they are not something a caller feeds.
    inputs = tuple(_spec(v, "input") for v in graph.input if v.name not in initializers)
    outputs = tuple(_spec(v, "output") for v in graph.output)
    return inputs, outputs


def _spec(value: onnx.ValueInfoProto, role: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        hint = " (export classifiers with zipmap disabled)" if kind in ("sequence_type", "map_type") else ""
        raise InvalidArgument(
            f"unsupported ONNX model: {role} {value.name!r} is a {kind}, not a tensor{hint}"
        )
    tensor = value.type.tensor_type
    dtype = _ELEM_TYPES.get(tensor.elem_type)
    if dtype is None:
        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise InvalidArgument(
            f"unsupported ONNX model: {role} {value.name!r} has element type {type_name}; supported are "
            f"{', '.join(dt.value for dt in DataType)}"
        )
    # dim_param (symbolic) and unset dimensions are dynamic: -1.
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)
