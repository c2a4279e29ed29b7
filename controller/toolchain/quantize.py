"""Precision converters, each a thin wrapper over onnxruntime's own tools.

Every converter reads the fp32 model from a file inside the caller's private work directory and
returns the converted model as bytes; any file a tool writes lands in that directory (or in the
tool's own self-deleting temp directory), never next to the uploaded model or in the process's
working directory. Methods and their parameters follow what was measured on this kind of machine
(issue 3): fp16 keeps fp32 inputs/outputs; int8 is dynamic per-channel for MatMul-heavy models and
static QDQ for conv nets (both are tried and measured by the caller); int4 is MatMulNBits, block 32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from controller.toolchain.evaldata import EvalData

logger = logging.getLogger(__name__)

METHOD_FP32 = "fp32"
METHOD_FP16 = "fp16-keep-io"
METHOD_INT8_DYNAMIC = "int8-dynamic-per-channel"
METHOD_INT8_STATIC = "int8-static-qdq"
INT4_BLOCK_SIZE = 32
METHOD_INT4 = f"int4-matmulnbits-b{INT4_BLOCK_SIZE}"


class NotApplicable(Exception):
    """The method cannot apply to this model; the message is the reason recorded for the rejection."""


def fold_constants(model: onnx.ModelProto) -> None:
    """Turn top-level ``Constant`` nodes with a tensor value into initializers, in place: an initializer
    is what every onnxruntime quantizer (and the cut-point analysis) recognises as a weight."""
    graph = model.graph
    if model.ir_version < 4:  # before IR 4 an initializer also had to be a graph input
        return
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == a.TENSOR), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        logger.debug("folded %d Constant nodes into initializers", len(graph.node) - len(kept))
        del graph.node[:]
        graph.node.extend(kept)


def prepare_source(model: onnx.ModelProto, path: Path) -> None:
    """Write the model the quantizers read, its ``Constant`` nodes folded into initializers first."""
    fold_constants(model)
    onnx.save_model(model, str(path))


def to_fp16(src: Path) -> bytes:
    """fp16 weights and compute, fp32 inputs/outputs (so callers and the wire format do not change)."""
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model: onnx.ModelProto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    # The converter appends the input Casts at the end of the node list, which onnx.checker (and so
    # our own upload check) refuses; onnxruntime sorts on load, but artifacts must pass both.
    ONNXModel(model).topological_sort()
    _pack_fp16_initializers(model.graph)
    return model.SerializeToString()


def int8_dynamic(src: Path, work: Path) -> bytes:
    """Dynamic int8, per-channel weights (per-tensor lost accuracy on MiniLM: cosine 0.957)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / "int8-dynamic.onnx"
    quantize_dynamic(src, out, per_channel=True, weight_type=QuantType.QInt8)
    return out.read_bytes()


def int8_static(src: Path, work: Path, data: EvalData, batch: int) -> bytes:
    """Static int8 in QDQ format, activations calibrated (MinMax) on the eval rows in ``data``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class EvalReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, Any]] = (
                data.feed(start, start + batch) for start in range(0, data.rows, batch)
            )

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

    out = work / "int8-static.onnx"
    quantize_static(
        src,
        out,
        EvalReader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # uint8 activations with int8 weights: onnxruntime's recommended pairing for x86 CPUs.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out.read_bytes()


def int4_matmulnbits(src: Path) -> bytes:
    """4-bit blockwise weights (MatMulNBits, symmetric, block 32) for every MatMul with constant weights."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(str(src))
    # MatMulNBitsQuantizer only looks at MatMul nodes; Gemm (common in exported linear layers) would
    # silently stay fp32, so rewrite it into MatMul + Add first with onnxruntime's own helper.
    ONNXModel(model).replace_gemm_with_matmul()
    if not _constant_weight_matmuls(model.graph):
        raise NotApplicable("no MatMul with constant 2-D float weights to quantize (Gemm rewritten first)")
    quantizer_class = _nbits_quantizer_class()
    quantizer = quantizer_class(model, bits=4, block_size=INT4_BLOCK_SIZE, is_symmetric=True)
    quantizer.process()
    result: onnx.ModelProto = quantizer.model.model
    if not any(node.op_type == "MatMulNBits" for node in result.graph.node):
        raise NotApplicable(
            "MatMulNBitsQuantizer quantized no MatMul (weights too small or of unsupported shape)"
        )
    return result.SerializeToString()


def _nbits_quantizer_class() -> Any:
    """Import MatMulNBitsQuantizer without letting it reconfigure this process's logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnxruntime does not declare it, but the module needs the onnx-ir package
        raise RuntimeError(f"int4 needs the onnx-ir package, which is not installed ({exc})") from exc
    finally:
        # The module calls logging.basicConfig(level=INFO) on import: that would add a stderr handler
        # to the root logger and flood the controller's log with one line per node. Undo it.
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    return MatMulNBitsQuantizer


def _constant_weight_matmuls(graph: onnx.GraphProto) -> list[str]:
    weights = {
        init.name
        for init in graph.initializer
        if len(init.dims) == 2 and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    return [
        node.name or node.output[0]
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in weights
    ]


def _pack_fp16_initializers(graph: onnx.GraphProto) -> None:
    """Store fp16 initializers as raw bytes: the converter leaves them in ``int32_data`` as varints
    (up to 3 bytes per value), which made the "half-size" fp16 model about 63% of fp32 on digits."""
    for index, init in enumerate(graph.initializer):
        if init.data_type == onnx.TensorProto.FLOAT16 and not init.raw_data and init.int32_data:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == attr.GRAPH else list(attr.graphs):
                _pack_fp16_initializers(sub)
