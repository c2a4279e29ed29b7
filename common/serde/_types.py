"""types.proto: enums shared by every service and the messages built on them (tensors, hardware,
assignments, reported state, models, devices)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

from edgefleet.v1 import types_pb2 as types_pb
from google.protobuf.message import Message as _PbMessage

from common.limits import (
    MAX_LINKS,
    MAX_PROFILE_BATCH,
    MAX_ROUTE_HOPS,
    MAX_SEGMENT_ENDPOINTS,
    MAX_SERVED_SEGMENTS,
    MAX_TEXT_CHARS,
)
from common.serde._validate import (
    _at,
    _batch_size,
    _enum,
    _fail,
    _finite,
    _hardware_class,
    _latency,
    _name,
    _nonempty,
    _required_message,
    _sha256,
    _show,
    _text,
)
from common.types import (
    Assignment,
    AssignmentFailure,
    AssignmentPlan,
    BlockAccuracy,
    BlockProfile,
    CallOverhead,
    ClassBlockProfile,
    ClassCallOverhead,
    CutPoint,
    DataType,
    Device,
    HardwareProfile,
    HopTiming,
    LinkMeasurement,
    Model,
    ModelVariant,
    PlannedSegment,
    RejectedVariant,
    ReportedState,
    SegmentEndpoint,
    ServedSegment,
    Tensor,
    TensorSpec,
)

#: Most dimensions a tensor or tensor spec may have.
MAX_TENSOR_RANK: Final = 64


# --- enums -------------------------------------------------------------------------------------

_DTYPE_TO_PB: Final[dict[DataType, types_pb.DataType]] = {
    DataType.FLOAT32: types_pb.DATA_TYPE_FLOAT32,
    DataType.FLOAT16: types_pb.DATA_TYPE_FLOAT16,
    DataType.FLOAT64: types_pb.DATA_TYPE_FLOAT64,
    DataType.INT8: types_pb.DATA_TYPE_INT8,
    DataType.UINT8: types_pb.DATA_TYPE_UINT8,
    DataType.INT16: types_pb.DATA_TYPE_INT16,
    DataType.INT32: types_pb.DATA_TYPE_INT32,
    DataType.INT64: types_pb.DATA_TYPE_INT64,
    DataType.BOOL: types_pb.DATA_TYPE_BOOL,
}
_DTYPE_FROM_PB: Final[dict[int, DataType]] = {int(v): k for k, v in _DTYPE_TO_PB.items()}

_FAILURE_TO_PB: Final[dict[AssignmentFailure, types_pb.AssignmentFailure]] = {
    AssignmentFailure.CHECKSUM_MISMATCH: types_pb.ASSIGNMENT_FAILURE_CHECKSUM_MISMATCH,
    AssignmentFailure.LOAD_FAILED: types_pb.ASSIGNMENT_FAILURE_LOAD_FAILED,
    AssignmentFailure.SMOKE_TEST_FAILED: types_pb.ASSIGNMENT_FAILURE_SMOKE_TEST_FAILED,
    AssignmentFailure.ARTIFACT_NOT_FOUND: types_pb.ASSIGNMENT_FAILURE_ARTIFACT_NOT_FOUND,
    AssignmentFailure.FETCH_FAILED: types_pb.ASSIGNMENT_FAILURE_FETCH_FAILED,
}
_FAILURE_FROM_PB: Final[dict[int, AssignmentFailure]] = {int(v): k for k, v in _FAILURE_TO_PB.items()}


def data_type_to_pb(dtype: DataType) -> types_pb.DataType:
    return _DTYPE_TO_PB[dtype]


def data_type_from_pb(value: int, *, path: str = "dtype") -> DataType:
    return _enum(path, value, _DTYPE_FROM_PB)


def assignment_failure_to_pb(failure: AssignmentFailure | None) -> types_pb.AssignmentFailure:
    return types_pb.ASSIGNMENT_FAILURE_UNSPECIFIED if failure is None else _FAILURE_TO_PB[failure]


def assignment_failure_from_pb(value: int, *, path: str = "failure") -> AssignmentFailure | None:
    """UNSPECIFIED means "no failure" (None); unknown numbers are errors."""
    return None if value == 0 else _enum(path, value, _FAILURE_FROM_PB)


# --- types.proto -------------------------------------------------------------------------------


def _shape(label: str, dims: Iterable[int], *, lowest: int) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > MAX_TENSOR_RANK:
        _fail(label, f"shape has {len(shape)} dimensions, at most {MAX_TENSOR_RANK}")
    for i, dim in enumerate(shape):
        if dim < lowest:
            _fail(label, f"shape[{i}] is {dim}, must be >= {lowest}")
    return shape


def tensor_to_pb(tensor: Tensor) -> types_pb.Tensor:
    return types_pb.Tensor(**tensor_fields(tensor))


def tensor_fields(t: Tensor) -> dict[str, Any]:
    """A ``types_pb.Tensor``'s fields, for building one or filling one in place (``add``)."""
    return {
        "name": t.name,
        "dtype": _DTYPE_TO_PB[t.dtype],
        "shape": t.shape,
        "data": t.data,
        "encoding": t.encoding,
    }


#: Tensor encodings peers may use; the bytes of an encoded tensor are checked when decoded (where
#: the decoded size is bounded), not here.
TENSOR_ENCODINGS = ("", "raw", "zlib", "shuffle2-zlib", "shuffle4-zlib", "shuffle8-zlib")


def tensor_from_pb(pb: types_pb.Tensor, *, path: str = "tensor") -> Tensor:
    """Errors name the tensor (``tensor 'input': dtype unspecified``); a nameless one is ``<path>.name: empty``."""
    # Each field is read once: every read of a protobuf field makes a new Python object (``data``
    # a copy of the bytes), and this runs for every tensor of every served request.
    name = pb.name
    if not name or len(name) > MAX_TEXT_CHARS:
        _nonempty(_at(path, "name"), name)  # raises, saying which
    code = pb.dtype
    dtype = _DTYPE_FROM_PB.get(code)
    if dtype is None:
        _fail(_tensor_label(name), "dtype unspecified" if code == 0 else f"dtype {code} unknown")
    shape = tuple(pb.shape)
    if len(shape) > MAX_TENSOR_RANK or (shape and min(shape) < 0):
        _shape(_tensor_label(name), shape, lowest=0)  # raises, naming the dimension
    encoding = pb.encoding
    data = pb.data
    if encoding in _RAW_ENCODINGS:
        expected = math.prod(shape) * _ITEMSIZE_BY_CODE[code]
        if len(data) != expected:
            _fail(
                _tensor_label(name),
                f"data is {len(data)} bytes but shape {list(shape)} of {dtype.value} needs {expected}",
            )
        encoding = ""
    elif encoding not in TENSOR_ENCODINGS:
        _fail(
            _tensor_label(name),
            f"unknown encoding {_show(encoding)}: one of {', '.join(e or '(raw)' for e in TENSOR_ENCODINGS)}",
        )
    return Tensor(name, dtype, shape, data, encoding)


_RAW_ENCODINGS = ("", "raw")
#: Keyed by the wire's enum number: an int hashes faster than an Enum member.
_ITEMSIZE_BY_CODE: Final[dict[int, int]] = {code: dt.itemsize for code, dt in _DTYPE_FROM_PB.items()}


def _tensor_label(name: str) -> str:
    return f"tensor {_show(name)}"


def tensor_spec_to_pb(spec: TensorSpec) -> types_pb.TensorSpec:
    return types_pb.TensorSpec(name=spec.name, dtype=_DTYPE_TO_PB[spec.dtype], shape=spec.shape)


def tensor_spec_from_pb(pb: types_pb.TensorSpec, *, path: str = "tensor_spec") -> TensorSpec:
    name = _nonempty(_at(path, "name"), pb.name)
    label = f"{path} (tensor {_show(name)})"
    if pb.dtype == 0:
        _fail(label, "dtype unspecified")
    dtype = _DTYPE_FROM_PB.get(pb.dtype)
    if dtype is None:
        _fail(label, f"dtype {pb.dtype} unknown")
    return TensorSpec(name=name, dtype=dtype, shape=_shape(label, pb.shape, lowest=-1))


def _specs(path: str, pbs: Iterable[types_pb.TensorSpec]) -> tuple[TensorSpec, ...]:
    return tuple(tensor_spec_from_pb(s, path=f"{path}[{i}]") for i, s in enumerate(pbs))


def hardware_profile_to_pb(hw: HardwareProfile) -> types_pb.HardwareProfile:
    return types_pb.HardwareProfile(
        hardware_class=hw.hardware_class,
        cpu_cores=hw.cpu_cores,
        memory_bytes=hw.memory_bytes,
        execution_providers=hw.execution_providers,
        os=hw.os,
        onnxruntime_version=hw.onnxruntime_version,
        agent_version=hw.agent_version,
        labels=dict(hw.labels),
    )


def hardware_profile_from_pb(pb: types_pb.HardwareProfile, *, path: str = "hardware") -> HardwareProfile:
    return HardwareProfile(
        hardware_class=_hardware_class(_at(path, "hardware_class"), pb.hardware_class),
        cpu_cores=pb.cpu_cores,
        memory_bytes=pb.memory_bytes,
        execution_providers=tuple(_text(p) for p in pb.execution_providers),
        os=_text(pb.os),
        onnxruntime_version=_text(pb.onnxruntime_version),
        agent_version=_text(pb.agent_version),
        labels={_text(k): _text(v) for k, v in pb.labels.items()},
    )


def assignment_to_pb(a: Assignment) -> types_pb.Assignment:
    pb = types_pb.Assignment(
        version=a.version,
        model_name=a.model_name,
        variant=a.variant,
        artifact_sha256=a.artifact_sha256,
        artifact_size_bytes=a.artifact_size_bytes,
    )
    if a.plan is not None:
        pb.plan.CopyFrom(assignment_plan_to_pb(a.plan))
    pb.serve.extend(served_segment_to_pb(x) for x in a.serve)
    return pb


def assignment_from_pb(pb: types_pb.Assignment, *, path: str = "assignment") -> Assignment:
    """An empty model_name means "run nothing"; otherwise variant and artifact_sha256 are required."""
    runs_model = bool(pb.model_name)
    return Assignment(
        version=pb.version,
        model_name=_name(_at(path, "model_name"), pb.model_name, required=False),
        variant=_name(_at(path, "variant"), pb.variant, required=runs_model),
        artifact_sha256=_sha256(_at(path, "artifact_sha256"), pb.artifact_sha256, required=runs_model),
        artifact_size_bytes=pb.artifact_size_bytes,
        plan=assignment_plan_from_pb(pb.plan, path=_at(path, "plan")) if pb.HasField("plan") else None,
        serve=_served(pb.serve, path=_at(path, "serve")),
    )


def served_segment_to_pb(s: ServedSegment) -> types_pb.ServedSegment:
    return types_pb.ServedSegment(
        artifact_sha256=s.artifact_sha256,
        artifact_size_bytes=s.artifact_size_bytes,
        model_name=s.model_name,
        start_cut=s.start_cut,
        end_cut=s.end_cut,
        precision=s.precision,
        max_batch_size=s.max_batch_size,
        max_queue_delay_ms=s.max_queue_delay_ms,
    )


def _served(items: Sequence[types_pb.ServedSegment], *, path: str) -> tuple[ServedSegment, ...]:
    if len(items) > MAX_SERVED_SEGMENTS:
        _fail(path, f"{len(items)} segments, at most {MAX_SERVED_SEGMENTS}")
    out: list[ServedSegment] = []
    for i, pb in enumerate(items):
        at = f"{path}[{i}]"
        if not 1 <= pb.max_batch_size <= MAX_PROFILE_BATCH:
            _fail(_at(at, "max_batch_size"), f"{pb.max_batch_size}: must be 1..{MAX_PROFILE_BATCH}")
        out.append(
            ServedSegment(
                artifact_sha256=_sha256(_at(at, "artifact_sha256"), pb.artifact_sha256),
                artifact_size_bytes=pb.artifact_size_bytes,
                model_name=_name(_at(at, "model_name"), pb.model_name),
                start_cut=pb.start_cut,
                end_cut=pb.end_cut,
                precision=_name(_at(at, "precision"), pb.precision),
                max_batch_size=pb.max_batch_size,
                max_queue_delay_ms=_latency(_at(at, "max_queue_delay_ms"), pb.max_queue_delay_ms),
            )
        )
    if len({s.artifact_sha256 for s in out}) != len(out):
        _fail(path, "a segment is listed twice")
    return tuple(out)


def segment_endpoint_to_pb(e: SegmentEndpoint) -> types_pb.SegmentEndpoint:
    return types_pb.SegmentEndpoint(device_id=e.device_id, address=e.address, weight=e.weight)


def segment_endpoints_from_pb(
    items: Sequence[types_pb.SegmentEndpoint], *, path: str
) -> tuple[SegmentEndpoint, ...]:
    if len(items) > MAX_SEGMENT_ENDPOINTS:
        _fail(path, f"{len(items)} endpoints, at most {MAX_SEGMENT_ENDPOINTS}")
    out: list[SegmentEndpoint] = []
    for i, pb in enumerate(items):
        at = f"{path}[{i}]"
        weight = _finite(_at(at, "weight"), pb.weight)
        if weight <= 0:
            _fail(_at(at, "weight"), f"{weight} is not positive")
        out.append(
            SegmentEndpoint(
                device_id=_name(_at(at, "device_id"), pb.device_id),
                address=address(_at(at, "address"), pb.address),
                weight=weight,
            )
        )
    return tuple(out)


def address(path: str, value: str) -> str:
    """HOST:PORT with a port in 1..65535."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(value) > 255:
        _fail(path, f"{_show(value)} is not HOST:PORT")
    return value


PLAN_PATTERNS = ("local", "device+edge", "device+cloud", "device+edge+cloud")
SEGMENT_TIERS = ("device", "edge", "cloud")
#: A plan has at most one segment per tier.
MAX_PLANNED_SEGMENTS = len(SEGMENT_TIERS)


def assignment_plan_to_pb(p: AssignmentPlan) -> types_pb.AssignmentPlan:
    return types_pb.AssignmentPlan(
        deployment=p.deployment,
        pattern=p.pattern,
        segments=[
            types_pb.PlannedSegment(
                tier=s.tier,
                start_cut=s.start_cut,
                end_cut=s.end_cut,
                precision=s.precision,
                where=s.where,
                artifact_sha256=s.artifact_sha256,
                artifact_size_bytes=s.artifact_size_bytes,
                endpoints=[segment_endpoint_to_pb(e) for e in s.endpoints],
                predicted_compute_ms=s.predicted_compute_ms,
                predicted_queue_ms=s.predicted_queue_ms,
                predicted_transfer_ms=s.predicted_transfer_ms,
                profiled_compute_ms=s.profiled_compute_ms,
            )
            for s in p.segments
        ],
        edge_pool=p.edge_pool,
        edge_node=p.edge_node,
        cloud_pool=p.cloud_pool,
        fallback_variant=p.fallback_variant,
        predicted_latency_ms=p.predicted_latency_ms,
        predicted_accuracy=p.predicted_accuracy,
        slo_ms=p.slo_ms,
        percentile=p.percentile,
        priority=p.priority,
    )


def assignment_plan_from_pb(pb: types_pb.AssignmentPlan, *, path: str = "plan") -> AssignmentPlan:
    if pb.pattern not in PLAN_PATTERNS:
        _fail(_at(path, "pattern"), f"unknown pattern {pb.pattern!r}: one of {', '.join(PLAN_PATTERNS)}")
    if not pb.segments or len(pb.segments) > MAX_PLANNED_SEGMENTS:
        _fail(_at(path, "segments"), f"{len(pb.segments)} segments, 1 to {MAX_PLANNED_SEGMENTS} expected")
    segments: list[PlannedSegment] = []
    for i, s in enumerate(pb.segments):
        at = _at(path, f"segments[{i}]")
        if s.tier not in SEGMENT_TIERS:
            _fail(_at(at, "tier"), f"unknown tier {s.tier!r}: one of {', '.join(SEGMENT_TIERS)}")
        segments.append(
            PlannedSegment(
                tier=s.tier,
                start_cut=s.start_cut,
                end_cut=s.end_cut,
                precision=_name(_at(at, "precision"), s.precision),
                where=_name(_at(at, "where"), s.where),
                artifact_sha256=_sha256(_at(at, "artifact_sha256"), s.artifact_sha256, required=False),
                artifact_size_bytes=s.artifact_size_bytes,
                endpoints=segment_endpoints_from_pb(s.endpoints, path=_at(at, "endpoints")),
                predicted_compute_ms=_latency(_at(at, "predicted_compute_ms"), s.predicted_compute_ms),
                predicted_queue_ms=_latency(_at(at, "predicted_queue_ms"), s.predicted_queue_ms),
                predicted_transfer_ms=_latency(_at(at, "predicted_transfer_ms"), s.predicted_transfer_ms),
                profiled_compute_ms=_latency(_at(at, "profiled_compute_ms"), s.profiled_compute_ms),
            )
        )
    return AssignmentPlan(
        deployment=_name(_at(path, "deployment"), pb.deployment),
        pattern=pb.pattern,
        segments=tuple(segments),
        edge_pool=_name(_at(path, "edge_pool"), pb.edge_pool, required=False),
        edge_node=_name(_at(path, "edge_node"), pb.edge_node, required=False),
        cloud_pool=_name(_at(path, "cloud_pool"), pb.cloud_pool, required=False),
        fallback_variant=_name(_at(path, "fallback_variant"), pb.fallback_variant, required=False),
        predicted_latency_ms=_latency(_at(path, "predicted_latency_ms"), pb.predicted_latency_ms),
        predicted_accuracy=_finite(_at(path, "predicted_accuracy"), pb.predicted_accuracy),
        slo_ms=_latency(_at(path, "slo_ms"), pb.slo_ms),
        percentile=_percentile(_at(path, "percentile"), pb.percentile),
        priority=pb.priority,
    )


def _percentile(path: str, value: float) -> float:
    value = _finite(path, value)
    if not 0.0 <= value < 100.0:
        _fail(path, f"{value} is not within 0..100")
    return value


TIERS = ("device", "edge", "cloud")


def hop_timing_to_pb(h: HopTiming) -> types_pb.HopTiming:
    return types_pb.HopTiming(**hop_timing_fields(h))


def hop_timing_fields(h: HopTiming) -> dict[str, Any]:
    """A ``types_pb.HopTiming``'s fields, for building one or filling one in place (``add``)."""
    return {
        "device_id": h.device_id,
        "tier": h.tier,
        "queue_ms": h.queue_ms,
        "compute_ms": h.compute_ms,
        "transfer_ms": h.transfer_ms,
        "batch_size": h.batch_size,
    }


def hops_from_pb(path: str, pbs: Sequence[types_pb.HopTiming]) -> tuple[HopTiming, ...]:
    if len(pbs) > MAX_ROUTE_HOPS + 1:
        _fail(path, f"{len(pbs)} hops, at most {MAX_ROUTE_HOPS + 1}")
    out: list[HopTiming] = []
    for i, h in enumerate(pbs):
        at = f"{path}[{i}]"
        if h.tier not in TIERS:
            _fail(f"{at}.tier", f"unknown tier {_show(h.tier)}")
        out.append(
            HopTiming(
                device_id=_name(f"{at}.device_id", h.device_id),
                tier=h.tier,
                queue_ms=_latency(f"{at}.queue_ms", h.queue_ms),
                compute_ms=_latency(f"{at}.compute_ms", h.compute_ms),
                transfer_ms=_latency(f"{at}.transfer_ms", h.transfer_ms),
                batch_size=h.batch_size or 1,
            )
        )
    return tuple(out)


def link_measurement_to_pb(m: LinkMeasurement) -> types_pb.LinkMeasurement:
    return types_pb.LinkMeasurement(
        pool=m.pool, bandwidth_mbps=m.bandwidth_mbps, rtt_ms=m.rtt_ms, rtt_p95_ms=m.rtt_p95_ms
    )


def link_measurement_from_pb(pb: types_pb.LinkMeasurement, *, path: str = "link") -> LinkMeasurement:
    bandwidth = _finite(_at(path, "bandwidth_mbps"), pb.bandwidth_mbps)
    if bandwidth <= 0:
        _fail(_at(path, "bandwidth_mbps"), f"{bandwidth} is not positive")
    return LinkMeasurement(
        pool=_name(_at(path, "pool"), pb.pool),
        bandwidth_mbps=bandwidth,
        rtt_ms=_latency(_at(path, "rtt_ms"), pb.rtt_ms),
        rtt_p95_ms=_latency(_at(path, "rtt_p95_ms"), pb.rtt_p95_ms),
    )


def links_from_pb(items: Sequence[types_pb.LinkMeasurement], *, path: str) -> tuple[LinkMeasurement, ...]:
    """A device's links: at most ``MAX_LINKS``, one per pool."""
    if len(items) > MAX_LINKS:
        _fail(path, f"{len(items)} links, at most {MAX_LINKS}")
    links = tuple(link_measurement_from_pb(m, path=f"{path}[{i}]") for i, m in enumerate(items))
    pools = [m.pool for m in links]
    if len(set(pools)) != len(pools):
        _fail(path, "a pool is listed twice")
    return links


def reported_state_to_pb(r: ReportedState) -> types_pb.ReportedState:
    return types_pb.ReportedState(
        acked_version=r.acked_version,
        active_sha256=r.active_sha256,
        last_known_good_sha256=r.last_known_good_sha256,
        active_model_name=r.active_model_name,
        active_variant=r.active_variant,
    )


def reported_state_from_pb(pb: types_pb.ReportedState, *, path: str = "reported") -> ReportedState:
    """An unset ReportedState submessage reads as the all-defaults state (nothing running yet)."""
    return ReportedState(
        acked_version=pb.acked_version,
        active_sha256=_sha256(_at(path, "active_sha256"), pb.active_sha256, required=False),
        last_known_good_sha256=_sha256(
            _at(path, "last_known_good_sha256"), pb.last_known_good_sha256, required=False
        ),
        active_model_name=_name(_at(path, "active_model_name"), pb.active_model_name, required=False),
        active_variant=_name(_at(path, "active_variant"), pb.active_variant, required=False),
    )


def model_variant_to_pb(v: ModelVariant) -> types_pb.ModelVariant:
    return types_pb.ModelVariant(
        variant=v.variant,
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        inputs=[tensor_spec_to_pb(s) for s in v.inputs],
        outputs=[tensor_spec_to_pb(s) for s in v.outputs],
        created_at_ms=v.created_at_ms,
        precision=v.precision,
        method=v.method,
        latency_b1_ms=v.latency_b1_ms,
        latency_b32_ms=v.latency_b32_ms,
        accuracy=v.accuracy,
        agreement=v.agreement,
        cosine=v.cosine,
    )


def model_variant_from_pb(pb: types_pb.ModelVariant, *, path: str = "variant") -> ModelVariant:
    return ModelVariant(
        variant=_name(_at(path, "variant"), pb.variant),
        sha256=_sha256(_at(path, "sha256"), pb.sha256),
        size_bytes=pb.size_bytes,
        inputs=_specs(_at(path, "inputs"), pb.inputs),
        outputs=_specs(_at(path, "outputs"), pb.outputs),
        created_at_ms=pb.created_at_ms,
        precision=_name(_at(path, "precision"), pb.precision, required=False),
        method=_text(pb.method),
        latency_b1_ms=_latency(_at(path, "latency_b1_ms"), pb.latency_b1_ms),
        latency_b32_ms=_latency(_at(path, "latency_b32_ms"), pb.latency_b32_ms),
        accuracy=_finite(_at(path, "accuracy"), pb.accuracy) if pb.HasField("accuracy") else None,
        agreement=_finite(_at(path, "agreement"), pb.agreement) if pb.HasField("agreement") else None,
        cosine=_finite(_at(path, "cosine"), pb.cosine) if pb.HasField("cosine") else None,
    )


def rejected_variant_to_pb(r: RejectedVariant) -> types_pb.RejectedVariant:
    return types_pb.RejectedVariant(precision=r.precision, method=r.method, reason=r.reason)


def rejected_variant_from_pb(pb: types_pb.RejectedVariant, *, path: str = "rejected") -> RejectedVariant:
    return RejectedVariant(
        precision=_name(_at(path, "precision"), pb.precision),
        method=_text(pb.method),
        reason=_text(pb.reason),
    )


def cut_point_to_pb(c: CutPoint) -> types_pb.CutPoint:
    return types_pb.CutPoint(
        index=c.index,
        tensors=[tensor_spec_to_pb(t) for t in c.tensors],
        bytes_per_sample=c.bytes_per_sample,
    )


def cut_point_from_pb(pb: types_pb.CutPoint, *, path: str = "cut_point") -> CutPoint:
    if pb.index == 0:
        _fail(_at(path, "index"), "must be positive")
    if pb.bytes_per_sample < -1:
        _fail(_at(path, "bytes_per_sample"), f"must be >= 0, or -1 for unknown; got {pb.bytes_per_sample}")
    return CutPoint(
        index=pb.index,
        tensors=_specs(_at(path, "tensors"), pb.tensors),
        bytes_per_sample=pb.bytes_per_sample,
    )


def block_range(path: str, start_cut: int, end_cut: int) -> None:
    """A block or segment range: end_cut 0 is the model outputs, anything else must follow start_cut."""
    if end_cut and end_cut <= start_cut:
        _fail(path, f"end_cut {end_cut} is not after start_cut {start_cut}")


def block_profile_to_pb(b: BlockProfile) -> types_pb.BlockProfile:
    return types_pb.BlockProfile(
        start_cut=b.start_cut,
        end_cut=b.end_cut,
        precision=b.precision,
        batch_size=b.batch_size,
        latency_ms=b.latency_ms,
        error=b.error,
        artifact_sha256=b.artifact_sha256,
        artifact_size_bytes=b.artifact_size_bytes,
    )


def block_profile_from_pb(pb: types_pb.BlockProfile, *, path: str = "block_profile") -> BlockProfile:
    """An empty ``artifact_sha256`` means the block has no artifact (it failed to build, or the model
    was profiled before block artifacts were stored)."""
    block_range(path, pb.start_cut, pb.end_cut)
    if pb.batch_size == 0:
        _fail(_at(path, "batch_size"), "must be positive")
    sha256 = _sha256(_at(path, "artifact_sha256"), pb.artifact_sha256, required=False)
    if not sha256 and pb.artifact_size_bytes:
        _fail(_at(path, "artifact_size_bytes"), f"{pb.artifact_size_bytes} without an artifact_sha256")
    return BlockProfile(
        start_cut=pb.start_cut,
        end_cut=pb.end_cut,
        precision=_name(_at(path, "precision"), pb.precision),
        batch_size=pb.batch_size,
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        error=_text(pb.error),
        artifact_sha256=sha256,
        artifact_size_bytes=pb.artifact_size_bytes,
    )


def block_accuracy_to_pb(b: BlockAccuracy) -> types_pb.BlockAccuracy:
    return types_pb.BlockAccuracy(
        start_cut=b.start_cut,
        end_cut=b.end_cut,
        precision=b.precision,
        accuracy=b.accuracy,
        cosine=b.cosine,
        agreement=b.agreement,
        error=b.error,
    )


def block_accuracy_from_pb(pb: types_pb.BlockAccuracy, *, path: str = "block_accuracy") -> BlockAccuracy:
    block_range(path, pb.start_cut, pb.end_cut)
    return BlockAccuracy(
        start_cut=pb.start_cut,
        end_cut=pb.end_cut,
        precision=_name(_at(path, "precision"), pb.precision),
        accuracy=_optional_finite(pb, "accuracy", path),
        cosine=_optional_finite(pb, "cosine", path),
        agreement=_optional_finite(pb, "agreement", path),
        error=_text(pb.error),
    )


def class_block_profile_to_pb(c: ClassBlockProfile) -> types_pb.ClassBlockProfile:
    return types_pb.ClassBlockProfile(
        hardware_class=c.hardware_class,
        start_cut=c.start_cut,
        end_cut=c.end_cut,
        precision=c.precision,
        batch_size=c.batch_size,
        latency_ms=c.latency_ms,
        devices=c.devices,
        error=c.error,
    )


def class_block_profile_from_pb(
    pb: types_pb.ClassBlockProfile, *, path: str = "class_profile"
) -> ClassBlockProfile:
    block_range(path, pb.start_cut, pb.end_cut)
    if pb.batch_size == 0:
        _fail(_at(path, "batch_size"), "must be positive")
    return ClassBlockProfile(
        hardware_class=_hardware_class(_at(path, "hardware_class"), pb.hardware_class),
        start_cut=pb.start_cut,
        end_cut=pb.end_cut,
        precision=_name(_at(path, "precision"), pb.precision),
        batch_size=pb.batch_size,
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        devices=pb.devices,
        error=_text(pb.error),
    )


def _optional_finite(pb: _PbMessage, field: str, path: str) -> float | None:
    """An ``optional double``: None when unset, else a finite number."""
    return _finite(_at(path, field), getattr(pb, field)) if pb.HasField(field) else None


def model_to_pb(m: Model) -> types_pb.Model:
    return types_pb.Model(
        name=m.name,
        variants=[model_variant_to_pb(v) for v in m.variants],
        created_at_ms=m.created_at_ms,
        rejected=[rejected_variant_to_pb(r) for r in m.rejected],
        cut_points=[cut_point_to_pb(c) for c in m.cut_points],
        block_profiles=[block_profile_to_pb(b) for b in m.block_profiles],
        block_accuracy=[block_accuracy_to_pb(b) for b in m.block_accuracy],
        profile_inputs_sha256=m.profile_inputs_sha256,
        profile_inputs_size_bytes=m.profile_inputs_size_bytes,
        eval_data_sha256=m.eval_data_sha256,
        eval_data_size_bytes=m.eval_data_size_bytes,
        class_profiles=[class_block_profile_to_pb(c) for c in m.class_profiles],
        call_overhead=[call_overhead_to_pb(c) for c in m.call_overhead],
        class_call_overhead=[class_call_overhead_to_pb(c) for c in m.class_call_overhead],
    )


def call_overhead_to_pb(c: CallOverhead) -> types_pb.CallOverhead:
    return types_pb.CallOverhead(batch_size=c.batch_size, latency_ms=c.latency_ms, dispatch_ms=c.dispatch_ms)


def call_overhead_from_pb(pb: types_pb.CallOverhead, *, path: str = "call_overhead") -> CallOverhead:
    _batch_size(_at(path, "batch_size"), pb.batch_size)
    return CallOverhead(
        batch_size=pb.batch_size,
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        dispatch_ms=_latency(_at(path, "dispatch_ms"), pb.dispatch_ms),
    )


def class_call_overhead_to_pb(c: ClassCallOverhead) -> types_pb.ClassCallOverhead:
    return types_pb.ClassCallOverhead(
        hardware_class=c.hardware_class,
        batch_size=c.batch_size,
        latency_ms=c.latency_ms,
        devices=c.devices,
        dispatch_ms=c.dispatch_ms,
    )


def class_call_overhead_from_pb(pb: types_pb.ClassCallOverhead, *, path: str) -> ClassCallOverhead:
    _batch_size(_at(path, "batch_size"), pb.batch_size)
    return ClassCallOverhead(
        hardware_class=_name(_at(path, "hardware_class"), pb.hardware_class),
        batch_size=pb.batch_size,
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        devices=pb.devices,
        dispatch_ms=_latency(_at(path, "dispatch_ms"), pb.dispatch_ms),
    )


def model_from_pb(pb: types_pb.Model, *, path: str = "model") -> Model:
    variants: list[ModelVariant] = []
    for i, v in enumerate(pb.variants):
        vpath = _at(path, f"variants[{i}]")
        variant = model_variant_from_pb(v, path=vpath)
        if any(seen.variant == variant.variant for seen in variants):
            _fail(_at(vpath, "variant"), f"duplicate {_show(variant.variant)}")
        variants.append(variant)
    return Model(
        name=_name(_at(path, "name"), pb.name),
        variants=tuple(variants),
        created_at_ms=pb.created_at_ms,
        rejected=tuple(
            rejected_variant_from_pb(r, path=_at(path, f"rejected[{i}]")) for i, r in enumerate(pb.rejected)
        ),
        cut_points=tuple(
            cut_point_from_pb(c, path=_at(path, f"cut_points[{i}]")) for i, c in enumerate(pb.cut_points)
        ),
        block_profiles=tuple(
            block_profile_from_pb(b, path=_at(path, f"block_profiles[{i}]"))
            for i, b in enumerate(pb.block_profiles)
        ),
        block_accuracy=tuple(
            block_accuracy_from_pb(b, path=_at(path, f"block_accuracy[{i}]"))
            for i, b in enumerate(pb.block_accuracy)
        ),
        profile_inputs_sha256=_sha256(
            _at(path, "profile_inputs_sha256"), pb.profile_inputs_sha256, required=False
        ),
        profile_inputs_size_bytes=pb.profile_inputs_size_bytes,
        eval_data_sha256=_sha256(_at(path, "eval_data_sha256"), pb.eval_data_sha256, required=False),
        eval_data_size_bytes=pb.eval_data_size_bytes,
        class_profiles=tuple(
            class_block_profile_from_pb(c, path=_at(path, f"class_profiles[{i}]"))
            for i, c in enumerate(pb.class_profiles)
        ),
        call_overhead=tuple(
            call_overhead_from_pb(c, path=_at(path, f"call_overhead[{i}]"))
            for i, c in enumerate(pb.call_overhead)
        ),
        class_call_overhead=tuple(
            class_call_overhead_from_pb(c, path=_at(path, f"class_call_overhead[{i}]"))
            for i, c in enumerate(pb.class_call_overhead)
        ),
    )


def device_to_pb(d: Device) -> types_pb.Device:
    pb = types_pb.Device(
        id=d.id,
        hardware=hardware_profile_to_pb(d.hardware),
        connected=d.connected,
        last_seen_ms=d.last_seen_ms,
        desired_version=d.desired_version,
        acked_version=d.acked_version,
        reported=reported_state_to_pb(d.reported),
        enrolled_at_ms=d.enrolled_at_ms,
        last_failure=assignment_failure_to_pb(d.last_failure),
        last_failure_message=d.last_failure_message,
        failed_version=d.failed_version,
        records_received=d.records_received,
        last_sequence=d.last_sequence,
        records_dropped=d.records_dropped,
        links=[link_measurement_to_pb(m) for m in d.links],
        endpoint=d.endpoint,
    )
    if d.assignment is not None:
        pb.assignment.CopyFrom(assignment_to_pb(d.assignment))
        pb.assignment.SetInParent()  # presence even when every field is default
    return pb


def device_from_pb(pb: types_pb.Device, *, path: str = "device") -> Device:
    """An unset ``assignment`` reads as None (the device was never assigned anything)."""
    _required_message(pb, "hardware", path)
    return Device(
        id=_name(_at(path, "id"), pb.id),
        hardware=hardware_profile_from_pb(pb.hardware, path=_at(path, "hardware")),
        enrolled_at_ms=pb.enrolled_at_ms,
        connected=pb.connected,
        last_seen_ms=pb.last_seen_ms,
        desired_version=pb.desired_version,
        acked_version=pb.acked_version,
        assignment=assignment_from_pb(pb.assignment, path=_at(path, "assignment"))
        if pb.HasField("assignment")
        else None,
        reported=reported_state_from_pb(pb.reported, path=_at(path, "reported")),
        last_failure=assignment_failure_from_pb(pb.last_failure, path=_at(path, "last_failure")),
        last_failure_message=_text(pb.last_failure_message),
        failed_version=pb.failed_version,
        records_received=pb.records_received,
        last_sequence=pb.last_sequence,
        records_dropped=pb.records_dropped,
        links=links_from_pb(pb.links, path=_at(path, "links")),
        endpoint=address(_at(path, "endpoint"), pb.endpoint) if pb.endpoint else "",
    )
