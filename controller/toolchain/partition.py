"""Cut points: the places where one ONNX model can be split between tiers, and what crosses each.

A cut at position ``i`` of a topological order of the top-level nodes splits the graph into a head
(``nodes[:i]``) and a tail (``nodes[i:]``). The tensors that cross are those available before the
cut (graph inputs and head outputs) that the tail consumes or that are graph outputs (a graph output
made by the head is carried through the tail, so the last tier can answer with every output).

Weight-derived tensors never cross. A tensor is weight-derived when nothing upstream of it is a graph
input (it is computed from initializers and constants alone, e.g. a Transpose of a weight that the
exporter did not fold). Sending it would ship weights over the network on every request, so it is
left out of the crossing set and the tail recomputes it. No extra code does that: the segment
extractor (``onnx.utils.Extractor``) walks back from a segment's outputs until it reaches the
segment's inputs, so it pulls a weight-derived producer into the tail by itself. This is simpler
than skipping such cuts (which would lose real cut points) and costs only the recomputation of
weight-only nodes, which the full model runs on every call anyway.

``Constant`` nodes are made initializers first, so their outputs count as weights, not activations.
A position is no cut point when more than ``max_tensors`` cross, when only model inputs and tensors
computed from their shapes cross (the head does nothing), when every model output already crosses
(the tail does nothing), when it carries the same tensors as the cut point just before it, or when a
crossing tensor's type is one the wire cannot carry; ``ModelGraph.cut_point`` says which applies.

Sizes come from onnx shape inference (with data propagation). Axis 0 is taken as the batch axis when
it is symbolic or unknown, or equals the model's fixed batch; bytes per sample is then the product
of the other dims times the item size. A tensor without such a batch axis (a shape vector, a scalar)
is sent once per call: its whole size is counted, exact at batch 1 and an upper bound above it.
Where inference leaves a non-batch dim unknown, the bytes are None: reported, not guessed. Where it
cannot even tell the rank, the position is no cut point (a segment's inputs need a declared shape).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from common.errors import InvalidArgument
from common.types import DataType
from controller.toolchain.quantize import fold_constants

logger = logging.getLogger(__name__)

#: Most tensors a cut may carry: every crossing tensor is one more array on the wire and one more
#: input to bind on the far side, and positions inside attention blocks can carry many.
DEFAULT_MAX_TENSORS = 4
#: The name given to a model input's batch dim when the model leaves it anonymous (digits does), so
#: that shape inference carries one symbol through the graph instead of fresh unknowns.
BATCH_SYMBOL = "N"

Dim = int | str | None  # static size, symbolic name, or unknown


@dataclass(frozen=True, slots=True)
class CrossingTensor:
    name: str
    dtype: DataType
    shape: tuple[Dim, ...]
    bytes_per_sample: int | None  # None: a non-batch dim is unknown

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype.value,
            "shape": list(self.shape),
            "bytes_per_sample": self.bytes_per_sample,
        }


@dataclass(frozen=True, slots=True)
class CutPoint:
    index: int  # head = nodes[:index] of the topological order; 0 < index < number of nodes
    after: str  # the last head node (its name, else op type and first output), for people
    tensors: tuple[CrossingTensor, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def bytes_per_sample(self) -> int | None:
        sizes = [t.bytes_per_sample for t in self.tensors]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "after": self.after,
            "bytes_per_sample": self.bytes_per_sample,
            "tensors": [t.as_dict() for t in self.tensors],
        }


class ModelGraph:
    """A model prepared for cutting: constants folded, nodes in topological order, shapes inferred.

    Built once per model and shared by cut-point search and segment extraction, so that a cut index
    means the same node position everywhere. ``source_sha256`` is the hash of the bytes given.
    """

    def __init__(self, model: onnx.ModelProto | bytes, *, max_tensors: int = DEFAULT_MAX_TENSORS) -> None:
        if max_tensors < 1:
            raise InvalidArgument(f"max tensors per cut must be >= 1, got {max_tensors}")
        source = model if isinstance(model, bytes) else model.SerializeToString()
        self.source_sha256 = hashlib.sha256(source).hexdigest()
        self.max_tensors = max_tensors
        try:
            parsed = onnx.load_model_from_string(source)
        except Exception as exc:  # protobuf decode errors have no common type
            raise InvalidArgument(f"not a valid ONNX model: {exc}") from exc
        self.model = _prepare(parsed)
        graph = self.model.graph
        weights = {init.name for init in graph.initializer}
        self.inputs = tuple(v.name for v in graph.input if v.name not in weights)
        self.outputs = tuple(v.name for v in graph.output)
        self.node_count = len(graph.node)
        self._labels = [_label(node) for node in graph.node]
        self._types = {v.name: v.type for v in (*graph.value_info, *graph.input, *graph.output)}
        self.fixed_batch = _fixed_batch(graph, weights)  # 0: the batch dim is dynamic
        # Precomputed per position (a sweep over live intervals) so that a model with a thousand
        # nodes does not rescan every tensor at every position.
        self._crossing: list[list[str]] = [[] for _ in range(self.node_count + 1)]
        intervals, self._shape_only = _live_intervals(graph, self.inputs, weights)
        for name, (first, last) in sorted(intervals.items()):
            for position in range(first, min(last, self.node_count) + 1):
                self._crossing[position].append(name)
        self._cuts = self._find()

    @property
    def cut_points(self) -> list[CutPoint]:
        return list(self._cuts)

    def select(self, limit: int) -> list[CutPoint]:
        """At most ``limit`` cheap, spread-out cut points (see ``select_cut_points``)."""
        return select_cut_points(self._cuts, limit, self.node_count)

    def cut_point(self, index: int) -> CutPoint:
        """The cut point at ``index``; InvalidArgument (with the reason) when that position is not one."""
        for cut in self._cuts:
            if cut.index == index:
                return cut
        raise InvalidArgument(f"position {index} is not a cut point: {self._why_not(index)}")

    def crossing_names(self, index: int) -> list[str]:
        """Every non-weight tensor live across position ``index``, in a stable order (by name)."""
        return list(self._crossing[index]) if 0 <= index <= self.node_count else []

    def _find(self) -> list[CutPoint]:
        cuts: list[CutPoint] = []
        for index in range(1, self.node_count):
            reason = self._why_not(index)
            if reason:
                logger.debug("position %d is not a cut point: %s", index, reason)
                continue
            tensors = tuple(self._describe(name) for name in self.crossing_names(index))
            cuts.append(CutPoint(index, self._labels[index - 1], tensors))
        logger.info(
            "found %d cut points among %d positions (max %d tensors per cut)",
            len(cuts),
            max(self.node_count - 1, 0),
            self.max_tensors,
        )
        return cuts

    def _why_not(self, index: int) -> str:
        """Why position ``index`` is no cut point, or "" when it is one."""
        reason = self._why_not_alone(index)
        if reason:
            return reason
        # The node just before a position that carries exactly what the previous position carries
        # made nothing that crosses (a weight-only node the tail recomputes, or a dead end): the
        # cut would be the earlier one again under another index, so only the first counts.
        first = index
        while first > 1 and self._crossing[first - 1] == self._crossing[index]:
            first -= 1
        if first < index and not self._why_not_alone(first):
            return f"the same tensors cross as at cut point {first}"
        return ""

    def _why_not_alone(self, index: int) -> str:
        if not 0 < index < self.node_count:
            return f"cuts lie strictly between the first and last of the {self.node_count} nodes"
        names = self.crossing_names(index)
        if not names:
            return "nothing crosses (the tail does not depend on the head)"
        if len(names) > self.max_tensors:
            return f"{len(names)} tensors cross, more than the maximum of {self.max_tensors}"
        if set(names) <= set(self.inputs) | self._shape_only:
            return "only model inputs (and their shapes) cross: the head would compute nothing the tail uses"
        if set(self.outputs) <= set(names):
            return "every model output is already computed: the tail would compute nothing"
        untyped = [n for n in names if _dtype(self._types.get(n)) is None]
        if untyped:
            return f"no supported tensor type is known for {', '.join(untyped)}"
        # A segment's inputs and outputs must declare a shape (onnx.checker requires it on the main
        # graph); unknown dims are fine, an unknown rank is not.
        rankless = [n for n in names if not self._types[n].tensor_type.HasField("shape")]
        if rankless:
            return f"shape inference could not tell the rank of {', '.join(rankless)}"
        return ""

    def _describe(self, name: str) -> CrossingTensor:
        value_type = self._types[name]
        dtype = _dtype(value_type)
        assert dtype is not None  # checked by _why_not
        shape = tuple(_dim(d) for d in value_type.tensor_type.shape.dim)
        return CrossingTensor(name, dtype, shape, _bytes_per_sample(dtype, shape, self.fixed_batch))


def find_cut_points(
    model: onnx.ModelProto | bytes, *, max_tensors: int = DEFAULT_MAX_TENSORS
) -> list[CutPoint]:
    """The cut points of ``model``: positions where 1..``max_tensors`` non-weight tensors cross."""
    return ModelGraph(model, max_tensors=max_tensors).cut_points


def select_cut_points(cuts: Sequence[CutPoint], limit: int, node_count: int) -> list[CutPoint]:
    """At most ``limit`` cut points, cheap to cross and spread over the graph, in graph order.

    A transformer has a cut point at most positions inside every layer (MiniLM: 112 of 391), too
    many to profile and more than a planner needs. Greedy: cheapest first (bytes per sample, then
    fewest tensors; among equals the later position, so a run of equally cheap positions yields
    the one after the layer's closing LayerNorm), skipping any closer than ``node_count /
    (2 * (limit + 1))`` positions to one already chosen, so the choice is not one crowded layer.
    """
    if limit < 1 or not cuts:
        return []
    gap = node_count / (2 * (limit + 1))
    ranked = sorted(
        cuts, key=lambda c: (c.bytes_per_sample is None, c.bytes_per_sample or 0, len(c.tensors), -c.index)
    )
    chosen: list[CutPoint] = []
    for cut in ranked:
        if len(chosen) == limit:
            break
        if all(abs(cut.index - other.index) >= gap for other in chosen):
            chosen.append(cut)
    return sorted(chosen, key=lambda c: c.index)


def consumed(node: onnx.NodeProto) -> list[str]:
    """Tensors a node reads: its inputs plus outer-scope names its subgraphs (If/Loop/Scan) use."""
    names = [name for name in node.input if name]
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == attr.GRAPH else list(attr.graphs):
            names.extend(_outer_refs(sub))
    return names


def _outer_refs(graph: onnx.GraphProto) -> list[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    refs: list[str] = []
    for node in graph.node:
        refs.extend(name for name in consumed(node) if name not in defined)
        defined.update(node.output)
    refs.extend(v.name for v in graph.output if v.name not in defined)
    return refs


def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    fold_constants(model)
    graph = model.graph
    order = _topological_order(graph)
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)
    weights = {init.name for init in graph.initializer}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in weights and dims and not dims[0].dim_value and not dims[0].dim_param:
            dims[0].dim_param = BATCH_SYMBOL
    try:
        # strict_mode off: an op without a shape function (a custom domain) leaves its outputs
        # unknown instead of failing the whole model; data_prop resolves Reshape targets.
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, ValidationError or RuntimeError
        raise InvalidArgument(f"onnx shape inference failed on the model: {exc}") from exc


def _topological_order(graph: onnx.GraphProto) -> list[int]:
    """Kahn's algorithm, ties broken by the original position: the identity for a sorted graph."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    users: list[list[int]] = [[] for _ in graph.node]
    waiting = [0] * len(graph.node)
    for i, node in enumerate(graph.node):
        deps = {producer[name] for name in consumed(node) if name in producer} - {i}
        waiting[i] = len(deps)
        for dep in deps:
            users[dep].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(graph.node):
        raise InvalidArgument("the model graph has a cycle; it cannot be put in topological order")
    return order


def _live_intervals(
    graph: onnx.GraphProto, inputs: Iterable[str], weights: set[str]
) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """For each non-weight tensor: (first position after which it exists, last position needing it),
    and the set of tensors computed only from input shapes (Shape/Size and what follows from them).

    A tensor crosses cut ``i`` when ``first <= i <= last``. Graph inputs exist from position 0;
    graph outputs are needed up to the end (position ``len(nodes)``). Shape-only tensors matter
    because exporters start with a run of Shape/Gather/Concat nodes: a cut there crosses the inputs
    plus a few shape scalars, which is the whole model on the far side under another name.
    """
    derived = set(inputs)
    shape_only: set[str] = set()
    first = dict.fromkeys(derived, 0)
    last: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        reads = [name for name in consumed(node) if name in derived]
        for name in reads:
            last[name] = position
        # Only tensors downstream of a graph input are activations; the rest are weights.
        if not reads:
            continue
        from_shapes = node.op_type in ("Shape", "Size") or all(name in shape_only for name in reads)
        for name in node.output:
            if name and name not in weights:
                derived.add(name)
                first[name] = position + 1
                if from_shapes:
                    shape_only.add(name)
    for value in graph.output:
        if value.name in derived:
            last[value.name] = len(graph.node)
    return {name: (first[name], last[name]) for name in derived if name in last}, shape_only


def _fixed_batch(graph: onnx.GraphProto, weights: set[str]) -> int:
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in weights and dims and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return 0


def _dtype(value_type: onnx.TypeProto | None) -> DataType | None:
    if value_type is None or value_type.WhichOneof("value") != "tensor_type":
        return None
    try:
        return DataType(onnx.helper.tensor_dtype_to_np_dtype(value_type.tensor_type.elem_type).name)
    except (KeyError, ValueError, TypeError):  # undefined elem type, or one the wire cannot carry
        return None


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or None


def _bytes_per_sample(dtype: DataType, shape: tuple[Dim, ...], fixed_batch: int) -> int | None:
    batched = bool(shape) and (not isinstance(shape[0], int) or shape[0] == fixed_batch)
    dims = shape[1:] if batched else shape
    if not all(isinstance(d, int) for d in dims):
        return None
    return math.prod(d for d in dims if isinstance(d, int)) * dtype.itemsize


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else ''}"
