"""Precision converters, each a thin wrapper over onnxruntime's own tools.

Every converter reads the fp32 model from a file inside the caller's private work directory and
returns the converted model as bytes; any file a tool writes lands in that directory (or in the
tool's own self-deleting temp directory), never next to the uploaded model or in the process's
working directory. Methods and their parameters follow what was measured on this kind of machine
(issue 3): fp16 keeps fp32 inputs/outputs; int8 is dynamic per-channel for MatMul-heavy models,
the same after onnxruntime's transformer fusions for BERT-style encoders, and static QDQ for conv nets
(all are tried and measured by the caller); int4 is MatMulNBits, block 32.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from controller.toolchain.evaldata import EvalData

logger = logging.getLogger(__name__)

METHOD_FP32 = "fp32"
METHOD_FP16 = "fp16-keep-io"
METHOD_INT8_DYNAMIC = "int8-dynamic-per-channel"
METHOD_INT8_DYNAMIC_FUSED = "int8-dynamic-fused"
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


def int8_dynamic_fused(src: Path, work: Path) -> bytes:
    """Dynamic int8, per-channel weights, of the model after :func:`fuse_transformer`.

    Fusing first is what lets the quantizer see whole attention blocks: each becomes one
    ``QAttention`` (int8 Q/K/V projection in one GEMM) instead of three MatMulInteger chains around an
    fp32 softmax that onnxruntime can no longer fuse once they are quantized. NotApplicable for a
    model the transformer optimizer finds nothing to fuse in (a conv net, the digits MLP).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = fuse_transformer(src, work)
    out = work / "int8-dynamic-fused.onnx"
    quantize_dynamic(
        fused,
        out,
        per_channel=True,
        weight_type=QuantType.QInt8,
        # onnx's shape inference knows no contrib op, so the type of whatever follows a fused node
        # (a MatMul after BiasGelu) is unknown to the quantizer, which then refuses it; every such
        # activation here is float (the quantizer's own suggested remedy).
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out.read_bytes()


def fuse_transformer(src: Path, work: Path) -> Path:
    """The fp32 model with onnxruntime's BERT fusions applied, written to ``work``; its path.

    The fusions (``Attention``, ``EmbedLayerNormalization``, ``BiasGelu``: onnxruntime contrib ops)
    are the hardware-independent Python ones (no onnxruntime graph optimization is baked in), so the
    artifact still runs on any onnxruntime CPU build. Two choices were measured on MiniLM (onnxruntime
    1.32, one thread, batch 1, sequence 32):

    * ``SkipLayerNormalization`` is not fused, and every ``LayerNormalization`` that follows a residual
      ``Add`` runs on the activations flattened to 2-D. onnxruntime's CPU SkipLayerNormalization
      kernel is a scalar loop with a division per element: 67 us per call at [1, 32, 384] against
      17 us for Add + LayerNormalization, and with 12 per model that was 19% of the int8 model's
      time. onnxruntime fuses the pair itself when a session loads (only for 3-D inputs), so the
      flattening is what keeps the faster kernels (the int8 model went from 4.3 to 3.5 ms).
    * ``num_heads`` and ``hidden_size`` are read off the graph (:func:`_attention_shape`): torch
      exports reshape to ``[batch, seq, -1, head_size]``, from which the optimizer cannot detect them
      and then fuses no attention at all.

    NotApplicable when neither a fusion nor the LayerNormalization rewrite changed anything.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    model = onnx.load(str(src))
    before = Counter(node.op_type for node in model.graph.node)
    num_heads, hidden_size = _attention_shape(model)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    with _quiet_transformer_loggers():
        optimizer = optimize_by_fusion(model, "bert", num_heads, hidden_size, options)
    fused_model: onnx.ModelProto = optimizer.model
    after = Counter(node.op_type for node in fused_model.graph.node)
    fused = {op: after[op] - before[op] for op in _FUSED_OPS if after[op] > before[op]}
    flattened = _flatten_residual_layer_norms(fused_model)
    if not fused and not flattened:
        raise NotApplicable(
            "the transformer optimizer found nothing to fuse (no attention, Gelu or embedding "
            "pattern) and no LayerNormalization after a residual Add"
        )
    logger.debug(
        "transformer fusion (num_heads %d, hidden_size %d): %s; %d LayerNormalization flattened to 2-D",
        num_heads,
        hidden_size,
        fused,
        flattened,
    )
    if any(node.domain == "com.microsoft" for node in fused_model.graph.node) and not any(
        op.domain == "com.microsoft" for op in fused_model.opset_import
    ):
        fused_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out = work / "fused.onnx"
    onnx.save_model(fused_model, str(out))
    return out


#: Operators the BERT fusions create; a rise in any of them counts as "the optimizer fused something".
_FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "LayerNormalization",
)


def _attention_shape(model: onnx.ModelProto) -> tuple[int, int]:
    """(num_heads, hidden_size) of a BERT-style graph, or (0, 0) to let the optimizer try.

    hidden_size is the most common length of the LayerNormalization scales; the head size is the last
    entry of the 4-D shapes the heads are split with (a constant shape, or a Concat whose last input
    is a constant), and num_heads is hidden_size over it.
    """
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    scales = Counter(
        constants[node.input[1]].dims[0]
        for node in graph.node
        if node.op_type == "LayerNormalization"
        and len(node.input) > 1
        and node.input[1] in constants
        and len(constants[node.input[1]].dims) == 1
    )
    if not scales:
        return 0, 0
    hidden = int(scales.most_common(1)[0][0])
    producers = {out: node for node in graph.node for out in node.output}

    def scalar(name: str) -> int | None:
        init = constants.get(name)
        if init is None or init.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return None
        values = numpy_helper.to_array(init).reshape(-1)
        return int(values[0]) if values.size == 1 else None

    heads: Counter[int] = Counter()
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        head_size: int | None = None
        shape = constants.get(node.input[1])
        if shape is not None:
            values = numpy_helper.to_array(shape).reshape(-1)
            head_size = int(values[3]) if values.size == 4 else None
        else:
            concat = producers.get(node.input[1])
            if concat is not None and concat.op_type == "Concat" and len(concat.input) == 4:
                head_size = scalar(concat.input[3])
        if head_size and head_size > 0 and hidden % head_size == 0 and hidden // head_size > 1:
            heads[hidden // head_size] += 1
    if not heads:
        return 0, 0
    return heads.most_common(1)[0][0], hidden


def _flatten_residual_layer_norms(model: onnx.ModelProto) -> int:
    """Run each LayerNormalization over the last axis whose input comes from an ``Add`` on that input
    flattened to [-1, hidden] (and reshape the result back), in place; how many were rewritten.

    The result is the same numbers; what changes is that onnxruntime's load-time SkipLayerNormFusion
    (which only matches 3-D inputs straight from the Add) no longer applies (see fuse_transformer).
    """
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    names = {name for node in graph.node for name in (*node.input, *node.output)} | set(constants)
    shapes: dict[int, str] = {}
    nodes: list[onnx.NodeProto] = []
    count = 0

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.add(name)
        return name

    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        scale = constants.get(node.input[1]) if len(node.input) > 1 else None
        source = producers.get(node.input[0])
        if (
            node.op_type != "LayerNormalization"
            or node.domain not in ("", "ai.onnx")
            or axis != -1
            or len(node.output) != 1
            or scale is None
            or len(scale.dims) != 1
            or source is None
            or source.op_type != "Add"
        ):
            nodes.append(node)
            continue
        hidden = int(scale.dims[0])
        if hidden not in shapes:
            shapes[hidden] = fresh(f"flat_layer_norm_shape_{hidden}")
            graph.initializer.append(
                numpy_helper.from_array(np.array([-1, hidden], dtype=np.int64), shapes[hidden])
            )
        x, y = node.input[0], node.output[0]
        original_shape, flat_x, flat_y = fresh(f"{x}_shape"), fresh(f"{x}_2d"), fresh(f"{y}_2d")
        nodes.append(helper.make_node("Shape", [x], [original_shape], name=fresh(f"{node.name}_Shape")))
        nodes.append(
            helper.make_node("Reshape", [x, shapes[hidden]], [flat_x], name=fresh(f"{node.name}_Flatten"))
        )
        node.input[0] = flat_x
        node.output[0] = flat_y
        nodes.append(node)
        nodes.append(
            helper.make_node("Reshape", [flat_y, original_shape], [y], name=fresh(f"{node.name}_Restore"))
        )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


@contextlib.contextmanager
def _quiet_transformer_loggers() -> Iterator[None]:
    """Silence the transformer optimizer's per-fusion chatter (INFO lines and detection warnings) while
    it runs; what it did is summarised by :func:`fuse_transformer` itself.

    Its modules are imported under their bare names (``fusion_attention``, ``onnx_model``...: the
    package puts its own directory on ``sys.path``), so their loggers are found by module file.
    """
    import onnxruntime.transformers

    package = Path(onnxruntime.transformers.__file__).parent
    loggers = [
        logging.getLogger(name)
        for name, module in list(sys.modules.items())
        if Path(getattr(module, "__file__", None) or "/").parent == package
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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
