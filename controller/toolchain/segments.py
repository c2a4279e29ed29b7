"""Segments: the part of a model between two cut points, at a precision, built on demand and cached.

The fp32 segment is cut out of the prepared model (see ``partition``) with ``onnx.utils.Extractor``
in memory: a head takes the model inputs and returns the tensors crossing its end cut; a middle or
tail takes the tensors crossing its start cut. Quantized segments split first and quantize each side
with the same converters as the whole-model variants (``quantize``): quantizing first and splitting
after would leave QDQ pairs and quantized initializers straddling the cut.

Cut pairs times precisions is too many to build eagerly for a large model, so a segment is built when
first asked for and kept in a ``SegmentCache`` keyed by content: the sha256 of the source model's
bytes, the cut range and the method (plus the calibration rows for static int8).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.utils

from common.errors import InvalidArgument
from controller.toolchain import quantize
from controller.toolchain.evaldata import Array, EvalData
from controller.toolchain.measure import open_session
from controller.toolchain.partition import DEFAULT_MAX_TENSORS, CutPoint, ModelGraph
from controller.toolchain.segment_cache import SegmentCache, segment_key

logger = logging.getLogger(__name__)

#: A segment boundary: a cut point (or its index), or None for the model's own inputs / outputs.
Bound = CutPoint | int | None

#: The method each precision uses unless told otherwise (int8: the variant build decides per model).
DEFAULT_METHODS = {
    "fp32": quantize.METHOD_FP32,
    "fp16": quantize.METHOD_FP16,
    "int8": quantize.METHOD_INT8_DYNAMIC,
    "int4": quantize.METHOD_INT4,
}
METHODS = (*DEFAULT_METHODS.values(), quantize.METHOD_INT8_STATIC)
#: Methods for whole-model variants only, and the method their blocks are built with instead: the
#: transformer fusions need whole attention blocks and the mask path, which a cut can split, so a model
#: whose int8 variant is fused is profiled (and cut) with plain dynamic int8; ``Segment.method`` and
#: its ``note`` say so.
WHOLE_MODEL_METHODS = {quantize.METHOD_INT8_DYNAMIC_FUSED: quantize.METHOD_INT8_DYNAMIC}


@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    source_sha256: str
    start: int | None  # None: from the model inputs
    end: int | None  # None: to the model outputs
    method: str
    onnx_bytes: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    note: str = ""  # e.g. that the method had nothing to quantize here, so the fp32 graph was kept

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx_bytes).hexdigest()

    def manifest(self) -> dict[str, Any]:
        """What an artifact manifest records about this segment (everything but the bytes)."""
        model = onnx.load_model_from_string(self.onnx_bytes)
        return {
            "source_sha256": self.source_sha256,
            "start": self.start,
            "end": self.end,
            "method": self.method,
            "sha256": self.sha256,
            "size_bytes": len(self.onnx_bytes),
            "inputs": [_value_dict(v) for v in model.graph.input],
            "outputs": [_value_dict(v) for v in model.graph.output],
            "opset": {op.domain or "ai.onnx": op.version for op in model.opset_import},
            "note": self.note,
        }


class Segmenter:
    """Builds (and caches) the segments of one model.

    ``calibration`` holds eval rows for the model inputs; static int8 calibrates a segment on the
    tensors that reach its start cut when those rows run through the fp32 model. ``workdir`` is where
    quantizers get their private temp directory (removed after every build).
    """

    def __init__(
        self,
        model: onnx.ModelProto | bytes | ModelGraph,
        *,
        cache: SegmentCache | None = None,
        max_tensors: int = DEFAULT_MAX_TENSORS,
        calibration: EvalData | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.graph = model if isinstance(model, ModelGraph) else ModelGraph(model, max_tensors=max_tensors)
        self.cache = cache if cache is not None else SegmentCache()
        self.calibration = calibration
        self.workdir = workdir
        # One Extractor for every segment: it indexes the graph once; extract_model does not mutate it.
        self._extractor = onnx.utils.Extractor(self.graph.model)
        self._notes: dict[str, str] = {}  # segment key -> note, so a model is parsed once for it
        self._calibration_sha256: str | None = None

    @property
    def cut_points(self) -> list[CutPoint]:
        return self.graph.cut_points

    def boundaries(self, cuts: Sequence[Bound] | None = None) -> list[int | None]:
        """``[None, c1, ..., ck, None]``: the block boundaries for ``cuts`` (all cut points if None)."""
        chosen = self.cut_points if cuts is None else cuts
        indices = sorted({i for c in chosen if (i := self._index(c)) is not None})
        return [None, *indices, None]

    def io_names(self, start: Bound, end: Bound) -> tuple[list[str], list[str]]:
        """(inputs, outputs) of the segment from ``start`` to ``end``."""
        first, last = self._range(start, end)
        inputs = list(self.graph.inputs) if first is None else list(self.graph.cut_point(first).names)
        outputs = list(self.graph.outputs) if last is None else list(self.graph.cut_point(last).names)
        return inputs, outputs

    def fp32(self, start: Bound, end: Bound) -> onnx.ModelProto:
        """The fp32 segment as a model (built, checked, cached)."""
        return onnx.load_model_from_string(self.segment(start, end).onnx_bytes)

    def segment(self, start: Bound, end: Bound, method: str = quantize.METHOD_FP32) -> Segment:
        """The segment from ``start`` to ``end`` converted with ``method`` (a ``quantize.METHOD_*``,
        or a precision name for its default method). A method with nothing to convert in this
        segment (no MatMul for int4) keeps the fp32 graph and says so in ``note``; so does a method
        for whole models only (``WHOLE_MODEL_METHODS``), which builds the segment with its stand-in."""
        asked = DEFAULT_METHODS.get(method, method)
        method = WHOLE_MODEL_METHODS.get(asked, asked)
        if method not in METHODS:
            raise InvalidArgument(f"unknown segment method {method!r}: choose from {', '.join(METHODS)}")
        first, last = self._range(start, end)
        inputs, outputs = self.io_names(first, last)
        # The tools' versions are part of the address: a cache directory that outlives an upgrade must
        # not serve what an older quantizer built as if the new one had.
        extra = _tool_versions()
        if method == quantize.METHOD_INT8_STATIC:
            extra += f":calibration={self._calibration_digest()}"
        key = segment_key(self.graph.source_sha256, first, last, method, extra)
        if method == quantize.METHOD_FP32:
            data = self.cache.get_or_build(key, lambda: self._extract(first, last, inputs, outputs))
            return Segment(self.graph.source_sha256, first, last, method, data, tuple(inputs), tuple(outputs))
        fp32 = self.segment(first, last)
        data = self.cache.get_or_build(key, lambda: self._convert(first, last, method, fp32.onnx_bytes))
        note = self._notes.get(key)
        if note is None:
            # Read off the bytes rather than remembered from the build, so a segment served from the
            # cache directory (built by another process) says the same.
            note = _unconverted_note(method, data, fp32.onnx_bytes)
            self._notes[key] = note
        if asked != method:
            note = "; ".join(
                filter(None, [f"{asked} applies to whole models only; built with {method}", note])
            )
        return Segment(
            self.graph.source_sha256, first, last, method, data, tuple(inputs), tuple(outputs), note
        )

    def _extract(self, first: int | None, last: int | None, inputs: list[str], outputs: list[str]) -> bytes:
        model = self._extractor.extract_model(inputs, outputs)
        model.graph.name = f"segment {_text(first)}..{_text(last)} of {self.graph.source_sha256[:12]}"
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:  # e.g. a subgraph reading a tensor the cut dropped
            raise InvalidArgument(
                f"segment {_text(first)}..{_text(last)} is not a valid model: {exc}"
            ) from exc
        logger.debug(
            "extracted segment %s..%s: %d nodes, inputs %s, outputs %s",
            _text(first),
            _text(last),
            len(model.graph.node),
            inputs,
            outputs,
        )
        return model.SerializeToString()

    def _convert(self, first: int | None, last: int | None, method: str, fp32: bytes) -> bytes:
        model = onnx.load_model_from_string(fp32)
        # A tensor that only passes through (a graph output made before the start cut, or a mask
        # used after the end cut) is both input and output of the segment. The fp16 converter cannot
        # sort such a graph, so the converters see the segment without those and they are put back.
        passing = _strip_passthrough(model)
        if not model.graph.output:
            return fp32  # the segment only forwards tensors: nothing to convert
        work = Path(tempfile.mkdtemp(prefix="edgefleet-segment-", dir=self.workdir))
        try:
            source = work / "source.onnx"
            # A file in the private dir: quantizers read paths and write side files next to them.
            quantize.prepare_source(model, source)
            if method == quantize.METHOD_FP16:
                converted = quantize.to_fp16(source)
            elif method == quantize.METHOD_INT8_DYNAMIC:
                converted = quantize.int8_dynamic(source, work)
            elif method == quantize.METHOD_INT8_STATIC:
                names = [v.name for v in model.graph.input]
                converted = quantize.int8_static(source, work, self._calibration_for(first, names), 1)
            else:
                converted = quantize.int4_matmulnbits(source)
        except quantize.NotApplicable as exc:
            # A block without a MatMul has nothing for int4: at "int4" it runs as fp32, which is
            # what the whole int4 model does with that part too.
            logger.info(
                "segment %s..%s: %s not applicable (%s); fp32 kept", _text(first), _text(last), method, exc
            )
            return fp32
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result = onnx.load_model_from_string(converted)
        _restore_passthrough(result, passing)
        return result.SerializeToString()

    def _calibration_for(self, first: int | None, names: Sequence[str]) -> EvalData:
        """The tensors ``names`` entering a segment that starts at ``first``, for the eval rows, as one
        batch (run through the fp32 head when the segment does not start at the model inputs)."""
        if self.calibration is None:
            raise InvalidArgument("static int8 segments need calibration rows (pass calibration=EvalData)")
        feed: dict[str, Array] = dict(self.calibration.inputs)
        if first is not None:
            feed = run_segments([self.segment(None, first)], feed)
        return _OneBatch({name: feed[name] for name in names})

    def _calibration_digest(self) -> str:
        if self.calibration is None:
            return ""
        if self._calibration_sha256 is None:
            digest = hashlib.sha256()
            for name in sorted(self.calibration.inputs):
                arr = np.ascontiguousarray(self.calibration.inputs[name])
                digest.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
                digest.update(arr.tobytes())
            self._calibration_sha256 = digest.hexdigest()
        return self._calibration_sha256

    def _index(self, bound: Bound) -> int | None:
        if bound is None:
            return None
        index = bound.index if isinstance(bound, CutPoint) else int(bound)
        self.graph.cut_point(index)  # raises InvalidArgument with the reason when it is not one
        return index

    def _range(self, start: Bound, end: Bound) -> tuple[int | None, int | None]:
        first, last = self._index(start), self._index(end)
        if first is not None and last is not None and first >= last:
            raise InvalidArgument(f"a segment must end after it starts: got {first}..{last}")
        return first, last


def extract_segment(
    model: onnx.ModelProto | bytes,
    start_cut: Bound,
    end_cut: Bound,
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
) -> onnx.ModelProto:
    """The fp32 segment of ``model`` between two cut points (None: the model's inputs / outputs).
    One-off convenience; use a ``Segmenter`` to build many segments of one model."""
    return Segmenter(model, max_tensors=max_tensors).fp32(start_cut, end_cut)


def run_segments(segments: Sequence[Segment | bytes], feed: Mapping[str, Array]) -> dict[str, Array]:
    """Run segments in order, each fed from the model inputs and earlier segments' outputs; returns
    every tensor seen (so the caller reads the final outputs and any crossing tensor by name)."""
    env: dict[str, Array] = dict(feed)
    for seg in segments:
        session = open_session(seg.onnx_bytes if isinstance(seg, Segment) else seg)
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {i.name: env[i.name] for i in session.get_inputs()})
        env.update(zip(names, (np.asarray(v) for v in values), strict=True))
    return env


class _OneBatch(EvalData):
    """Eval data served as a single feed: a crossing tensor without a batch axis (a shape vector)
    cannot be sliced into row batches, so static int8 calibrates on all rows at once."""

    __slots__ = ()

    @property
    def rows(self) -> int:
        return 1

    def feed(self, start: int, stop: int) -> dict[str, Array]:
        return dict(self.inputs)


@dataclass(frozen=True, slots=True)
class _Passthrough:
    inputs: list[str]  # the segment's input order
    outputs: list[str]  # the segment's output order
    removed_inputs: list[onnx.ValueInfoProto]
    removed_outputs: list[onnx.ValueInfoProto]


def _strip_passthrough(model: onnx.ModelProto) -> _Passthrough:
    """Remove outputs that are also inputs (and such inputs no node reads), in place."""
    graph = model.graph
    input_names = {v.name for v in graph.input}
    read = {name for node in graph.node for name in node.input}
    kept_out = [v for v in graph.output if v.name not in input_names]
    gone_out = [v for v in graph.output if v.name in input_names]
    passing = {v.name for v in gone_out}
    kept_in = [v for v in graph.input if v.name not in passing or v.name in read]
    gone_in = [v for v in graph.input if v.name in passing and v.name not in read]
    result = _Passthrough(
        [v.name for v in graph.input],
        [v.name for v in graph.output],
        [_copy(v) for v in gone_in],
        [_copy(v) for v in gone_out],
    )
    for field_list, kept in ((graph.output, kept_out), (graph.input, kept_in)):
        values = [_copy(v) for v in kept]
        del field_list[:]
        field_list.extend(values)
    return result


def _restore_passthrough(model: onnx.ModelProto, passing: _Passthrough) -> None:
    """Put back what ``_strip_passthrough`` took out, in the segment's original order."""
    graph = model.graph
    for field_list, order, removed in (
        (graph.input, passing.inputs, passing.removed_inputs),
        (graph.output, passing.outputs, passing.removed_outputs),
    ):
        by_name = {v.name: _copy(v) for v in (*field_list, *removed)}
        del field_list[:]
        field_list.extend(by_name[name] for name in order)


def _copy(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copied = onnx.ValueInfoProto()
    copied.CopyFrom(value)
    return copied


@functools.cache
def _tool_versions() -> str:
    return f"onnx={onnx.__version__},onnxruntime={importlib.metadata.version('onnxruntime')}"


def _unconverted_note(method: str, data: bytes, fp32: bytes) -> str:
    """A note when ``method`` left the segment as it was: the same bytes (int4 found no MatMul), or
    the same operators over the same weight types (dynamic int8 found nothing it quantizes)."""
    if data != fp32:
        converted, original = onnx.load_model_from_string(data), onnx.load_model_from_string(fp32)
        if _signature(converted) != _signature(original):
            return ""
    return f"{method} had nothing to convert here; this is the fp32 graph"


def _signature(model: onnx.ModelProto) -> tuple[list[str], list[int]]:
    graph = model.graph
    return sorted(n.op_type for n in graph.node), sorted(i.data_type for i in graph.initializer)


def _value_dict(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else None
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape if tensor.HasField("shape") else None}


def _text(bound: int | None) -> str:
    return "" if bound is None else str(bound)
