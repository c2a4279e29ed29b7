"""common.serde: domain <-> protobuf round trips, decoder validation, and error <-> gRPC status mapping."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from concurrent import futures
from dataclasses import replace
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import serde
from common.errors import (
    AlreadyExists,
    EdgefleetError,
    InvalidArgument,
    NotFound,
    PermanentError,
    PermissionDenied,
    ResourceExhausted,
    TransientError,
    Unauthenticated,
)
from common.limits import (
    MAX_PROFILE_BATCH,
    MAX_PROFILE_BLOCKS,
    MAX_PROFILE_TIMINGS,
    MAX_TELEMETRY_BATCH,
    MAX_TEXT_CHARS,
)
from common.types import (
    DEFAULT_VARIANT,
    AgentStatus,
    ArtifactChunk,
    ArtifactManifest,
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    AssignResult,
    BlockAccuracy,
    BlockProfile,
    BlockTiming,
    CallOverhead,
    ClassBlockProfile,
    ClassCallOverhead,
    CreatedToken,
    CutPoint,
    DataType,
    Device,
    DeviceEvent,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    ImportModelHeader,
    ImportProgress,
    InferenceRecord,
    InferRequest,
    InferResponse,
    Model,
    ModelVariant,
    Outcome,
    ProfileBlock,
    ProfileReport,
    ProfileRequest,
    ProfileRequestRecord,
    RejectedVariant,
    ReportedState,
    SegmentEvaluation,
    SegmentSpec,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Tensor,
    TensorSpec,
    Welcome,
)

types_pb = serde.types_pb
controller_pb = serde.controller_pb
admin_pb = serde.admin_pb
agent_pb = serde.agent_pb

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4

# --- strategies --------------------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(st.characters(codec="utf-8"), max_size=24)
nonempty_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24)
names = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True)
hardware_classes = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True)
shas = st.binary(min_size=32, max_size=32).map(bytes.hex)
latencies = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
dtypes = st.sampled_from(DataType)


@st.composite
def tensors(draw: st.DrawFn, name: str | None = None) -> Tensor:
    dtype = draw(dtypes)
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    size = math.prod(shape) * dtype.itemsize
    data = draw(st.binary(min_size=size, max_size=size))
    return Tensor(name=name if name is not None else draw(nonempty_text), dtype=dtype, shape=shape, data=data)


def unique_tensors(max_size: int = 3) -> st.SearchStrategy[tuple[Tensor, ...]]:
    return st.lists(nonempty_text, max_size=max_size, unique=True).flatmap(
        lambda ns: st.tuples(*(tensors(n) for n in ns))
    )


tensor_specs = st.builds(
    TensorSpec,
    name=nonempty_text,
    dtype=dtypes,
    shape=st.lists(st.integers(-1, 1024), max_size=4).map(tuple),
)
spec_tuples = st.lists(tensor_specs, max_size=3).map(tuple)

hardware_profiles = st.builds(
    HardwareProfile,
    hardware_class=hardware_classes,
    cpu_cores=u32,
    memory_bytes=u64,
    execution_providers=st.lists(text, max_size=3).map(tuple),
    os=text,
    onnxruntime_version=text,
    agent_version=text,
    labels=st.dictionaries(text, text, max_size=3),
)

assignments = st.one_of(
    st.builds(Assignment, version=u64),
    st.builds(
        Assignment,
        version=u64,
        model_name=names,
        variant=names,
        artifact_sha256=shas,
        artifact_size_bytes=u64,
    ),
)

reported_states = st.builds(
    ReportedState,
    acked_version=u64,
    active_sha256=st.one_of(st.just(""), shas),
    last_known_good_sha256=st.one_of(st.just(""), shas),
    active_model_name=st.one_of(st.just(""), names),
    active_variant=st.one_of(st.just(""), names),
)

failures = st.one_of(st.none(), st.sampled_from(AssignmentFailure))

devices = st.builds(
    Device,
    id=names,
    hardware=hardware_profiles,
    enrolled_at_ms=i64,
    connected=st.booleans(),
    last_seen_ms=i64,
    desired_version=u64,
    acked_version=u64,
    assignment=st.one_of(st.none(), assignments),
    reported=reported_states,
    last_failure=failures,
    last_failure_message=text,
    failed_version=u64,
    records_received=u64,
    last_sequence=u64,
    records_dropped=u64,
)

inference_records = st.builds(
    InferenceRecord,
    model_sha256=st.one_of(st.just(""), shas),
    latency_ms=latencies,
    outcome=st.sampled_from(Outcome),
    error=text,
    assignment_version=u64,
)
device_events = st.builds(DeviceEvent, kind=nonempty_text, message=text, assignment_version=u64)
telemetry_records = st.builds(
    TelemetryRecord,
    sequence=st.integers(min_value=1, max_value=2**64 - 1),
    timestamp_ms=i64,
    body=st.one_of(inference_records, device_events),
)

hellos = st.builds(
    Hello, hardware=hardware_profiles, reported=reported_states, telemetry_watermark=u64, records_dropped=u64
)
heartbeats = st.builds(Heartbeat, sent_at_ms=i64)
telemetry_batches = st.builds(TelemetryBatch, records=st.lists(telemetry_records, max_size=4).map(tuple))
assignment_acks = st.builds(
    AssignmentAck, version=u64, reported=reported_states, failure=failures, message=text
)
cut_ranges = st.tuples(st.integers(0, 1000), st.integers(0, 1000)).filter(lambda r: r[1] == 0 or r[1] > r[0])
profile_batches = st.integers(1, MAX_PROFILE_BATCH)
block_timings = st.builds(
    lambda r, precision, batch, ms, error: BlockTiming(r[0], r[1], precision, batch, ms, error),
    cut_ranges,
    names,
    profile_batches,
    latencies,
    text,
)
profile_reports = st.builds(
    ProfileReport,
    request_id=names,
    model_name=names,
    timings=st.lists(
        block_timings, max_size=4, unique_by=lambda t: (t.start_cut, t.end_cut, t.precision, t.batch_size)
    ).map(tuple),
    call_overhead=st.lists(
        st.builds(CallOverhead, batch_size=profile_batches, latency_ms=latencies, dispatch_ms=latencies),
        max_size=3,
        unique_by=lambda c: c.batch_size,
    ).map(tuple),
    error=text,
)
profile_blocks = st.builds(
    lambda r, precision, sha, size: ProfileBlock(r[0], r[1], precision, sha, size),
    cut_ranges,
    names,
    shas,
    u64,
)
profile_requests = st.builds(
    ProfileRequest,
    request_id=names,
    model_name=names,
    source_sha256=shas,
    blocks=st.lists(
        profile_blocks, min_size=1, max_size=4, unique_by=lambda b: (b.start_cut, b.end_cut, b.precision)
    ).map(tuple),
    inputs_sha256=shas,
    inputs_size_bytes=u64,
    batch_sizes=st.lists(profile_batches, min_size=1, max_size=4, unique=True).map(tuple),
    runs=st.integers(1, 1000),
)
agent_messages = st.one_of(hellos, heartbeats, telemetry_batches, assignment_acks, profile_reports)

welcomes = st.builds(Welcome, heartbeat_interval_ms=st.integers(1, 2**32 - 1), telemetry_watermark=u64)
telemetry_acks = st.builds(TelemetryAck, up_to_sequence=u64)
controller_messages = st.one_of(welcomes, assignments, telemetry_acks, profile_requests)

durations_ms = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
scores = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
model_variants = st.builds(
    ModelVariant,
    variant=names,
    sha256=shas,
    size_bytes=u64,
    inputs=spec_tuples,
    outputs=spec_tuples,
    created_at_ms=i64,
    precision=st.sampled_from(["", "fp32", "fp16", "int8", "int4"]),
    method=text,
    latency_b1_ms=durations_ms,
    latency_b32_ms=durations_ms,
    accuracy=st.none() | scores,
    agreement=st.none() | scores,
    cosine=st.none() | scores,
)
rejected_variants = st.builds(RejectedVariant, precision=names, method=text, reason=text)
cut_points = st.builds(
    CutPoint,
    index=st.integers(min_value=1, max_value=2**32 - 1),
    tensors=st.lists(tensor_specs, max_size=3).map(tuple),
    bytes_per_sample=st.integers(min_value=-1, max_value=2**63 - 1),
)
artifact_refs = st.one_of(st.just(("", 0)), st.tuples(shas, u64))
block_profiles = st.builds(
    lambda r, precision, batch, ms, error, artifact: BlockProfile(
        r[0], r[1], precision, batch, ms, error, artifact[0], artifact[1]
    ),
    cut_ranges,
    names,
    st.integers(min_value=1, max_value=2**32 - 1),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    text,
    artifact_refs,
)
block_accuracies = st.builds(
    lambda r, precision, accuracy, cosine, agreement, error: BlockAccuracy(
        r[0], r[1], precision, accuracy, cosine, agreement, error
    ),
    cut_ranges,
    names,
    st.none() | scores,
    st.none() | scores,
    st.none() | scores,
    text,
)
class_block_profiles = st.builds(
    lambda hw, r, precision, batch, ms, devices, error: ClassBlockProfile(
        hw, r[0], r[1], precision, batch, ms, devices, error
    ),
    hardware_classes,
    cut_ranges,
    names,
    st.integers(min_value=1, max_value=2**32 - 1),
    durations_ms,
    u32,
    text,
)
models = st.builds(
    lambda base, inputs, eval_data: replace(
        base,
        profile_inputs_sha256=inputs[0],
        profile_inputs_size_bytes=inputs[1],
        eval_data_sha256=eval_data[0],
        eval_data_size_bytes=eval_data[1],
    ),
    st.builds(
        Model,
        name=names,
        variants=st.lists(model_variants, max_size=3, unique_by=lambda v: v.variant).map(tuple),
        created_at_ms=i64,
        rejected=st.lists(rejected_variants, max_size=3).map(tuple),
        cut_points=st.lists(cut_points, max_size=3).map(tuple),
        block_profiles=st.lists(block_profiles, max_size=4).map(tuple),
        block_accuracy=st.lists(block_accuracies, max_size=3).map(tuple),
        class_profiles=st.lists(class_block_profiles, max_size=3).map(tuple),
        call_overhead=st.lists(
            st.builds(CallOverhead, st.integers(min_value=1, max_value=256), durations_ms, durations_ms),
            max_size=2,
        ).map(tuple),
        class_call_overhead=st.lists(
            st.builds(
                ClassCallOverhead,
                hardware_classes,
                st.integers(min_value=1, max_value=256),
                durations_ms,
                u32,
                durations_ms,
            ),
            max_size=2,
        ).map(tuple),
    ),
    artifact_refs,
    artifact_refs,
)
import_progress = st.builds(ImportProgress, step=u32, total=u32, message=text)


# --- round trips -------------------------------------------------------------------------------


def wire(pb: Any) -> Any:
    """Serialize and parse again, as the peer would see it."""
    return type(pb).FromString(pb.SerializeToString())


def roundtrip(value: Any, to_pb: Callable[[Any], Any], from_pb: Callable[[Any], Any]) -> None:
    assert from_pb(wire(to_pb(value))) == value


@PROPERTY
@given(tensors())
def test_tensor_roundtrip(tensor: Tensor) -> None:
    roundtrip(tensor, serde.tensor_to_pb, serde.tensor_from_pb)


@PROPERTY
@given(tensor_specs)
def test_tensor_spec_roundtrip(spec: TensorSpec) -> None:
    roundtrip(spec, serde.tensor_spec_to_pb, serde.tensor_spec_from_pb)


@PROPERTY
@given(hardware_profiles)
def test_hardware_profile_roundtrip(hw: HardwareProfile) -> None:
    roundtrip(hw, serde.hardware_profile_to_pb, serde.hardware_profile_from_pb)


@PROPERTY
@given(assignments)
def test_assignment_roundtrip(a: Assignment) -> None:
    roundtrip(a, serde.assignment_to_pb, serde.assignment_from_pb)


@PROPERTY
@given(devices)
def test_device_roundtrip(d: Device) -> None:
    roundtrip(d, serde.device_to_pb, serde.device_from_pb)


@PROPERTY
@given(telemetry_records)
def test_telemetry_record_roundtrip(r: TelemetryRecord) -> None:
    roundtrip(r, serde.telemetry_record_to_pb, serde.telemetry_record_from_pb)


@PROPERTY
@given(agent_messages)
def test_agent_message_roundtrip(msg: Any) -> None:
    roundtrip(msg, serde.agent_message_to_pb, serde.agent_message_from_pb)


@PROPERTY
@given(controller_messages)
def test_controller_message_roundtrip(msg: Any) -> None:
    roundtrip(msg, serde.controller_message_to_pb, serde.controller_message_from_pb)


@pytest.mark.parametrize(
    "msg",
    [
        Heartbeat(sent_at_ms=0),
        TelemetryBatch(records=()),
        Hello(hardware=HardwareProfile("phone-cpu"), reported=ReportedState()),
        AssignmentAck(version=0, reported=ReportedState()),
    ],
)
def test_agent_message_all_defaults_keeps_its_variant(msg: Any) -> None:
    roundtrip(msg, serde.agent_message_to_pb, serde.agent_message_from_pb)


@pytest.mark.parametrize("msg", [Assignment(version=0), TelemetryAck(up_to_sequence=0)])
def test_controller_message_all_defaults_keeps_its_variant(msg: Any) -> None:
    roundtrip(msg, serde.controller_message_to_pb, serde.controller_message_from_pb)


def test_device_assignment_none_vs_empty() -> None:
    base = Device(id="dev-1", hardware=HardwareProfile("edge-npu"))
    roundtrip(base, serde.device_to_pb, serde.device_from_pb)
    assert not serde.device_to_pb(base).HasField("assignment")
    empty = Device(id="dev-1", hardware=HardwareProfile("edge-npu"), assignment=Assignment(version=0))
    roundtrip(empty, serde.device_to_pb, serde.device_from_pb)


@PROPERTY
@given(models)
def test_model_roundtrip(m: Model) -> None:
    roundtrip(m, serde.model_to_pb, serde.model_from_pb)
    roundtrip((m,), serde.list_models_response_to_pb, serde.list_models_response_from_pb)


@PROPERTY
@given(
    st.builds(
        InferRequest, inputs=unique_tensors(), output_names=st.lists(nonempty_text, unique=True).map(tuple)
    ),
    st.builds(InferResponse, outputs=unique_tensors(), model_sha256=shas, latency_ms=latencies),
)
def test_infer_roundtrip(req: InferRequest, resp: InferResponse) -> None:
    roundtrip(req, serde.infer_request_to_pb, serde.infer_request_from_pb)
    roundtrip(resp, serde.infer_response_to_pb, serde.infer_response_from_pb)


@PROPERTY
@given(
    st.builds(
        AgentStatus,
        device_id=st.one_of(st.just(""), names),
        hardware_class=st.one_of(st.just(""), hardware_classes),
        connected=st.booleans(),
        reported=reported_states,
        inputs=spec_tuples,
        outputs=spec_tuples,
        pending_telemetry=u64,
    )
)
def test_agent_status_roundtrip(s: AgentStatus) -> None:
    roundtrip(s, serde.agent_status_to_pb, serde.agent_status_from_pb)


@settings(PROPERTY, max_examples=25)
@given(devices, st.booleans(), hardware_profiles, names, st.binary(max_size=64))
def test_admin_and_enroll_roundtrips(
    d: Device, changed: bool, hw: HardwareProfile, name: str, data: bytes
) -> None:
    roundtrip(
        AssignResult(device=d, changed=changed), serde.assign_response_to_pb, serde.assign_response_from_pb
    )
    roundtrip((d, d), serde.list_devices_response_to_pb, serde.list_devices_response_from_pb)
    roundtrip(
        ImportModelHeader(name=name, variant=name, size_bytes=len(data)),
        serde.import_model_request_to_pb,
        serde.import_model_request_from_pb,
    )
    roundtrip(data, serde.import_model_request_to_pb, serde.import_model_request_from_pb)
    credential = "c" * 43
    assert serde.enroll_request_from_pb(wire(serde.enroll_request_to_pb("tok", hw, name, credential))) == (
        "tok",
        hw,
        name,
        credential,
    )
    assert serde.enroll_request_from_pb(wire(serde.enroll_request_to_pb("tok", hw))) == ("tok", hw, "", "")
    with pytest.raises(InvalidArgument, match="device_credential"):
        serde.enroll_request_from_pb(wire(serde.enroll_request_to_pb("tok", hw, name, "short")))


@settings(PROPERTY, max_examples=25)
@given(models, import_progress, names, st.lists(names, max_size=4), u64)
def test_import_event_roundtrips(
    model: Model, progress: ImportProgress, name: str, precisions: list[str], size: int
) -> None:
    roundtrip(model, serde.import_model_event_to_pb, serde.import_model_event_from_pb)
    roundtrip(progress, serde.import_model_event_to_pb, serde.import_model_event_from_pb)
    roundtrip(progress, serde.import_progress_to_pb, serde.import_progress_from_pb)
    for r in model.rejected:
        roundtrip(r, serde.rejected_variant_to_pb, serde.rejected_variant_from_pb)
    header = ImportModelHeader(
        name=name, precisions=tuple(precisions), size_bytes=size % 1000, eval_data_size_bytes=size % 999
    )
    roundtrip(header, serde.import_model_request_to_pb, serde.import_model_request_from_pb)
    roundtrip(header, serde.import_model_header_to_pb, serde.import_model_header_from_pb)
    chunk = serde.EvalDataChunk(name.encode())
    roundtrip(chunk, serde.import_model_request_to_pb, serde.import_model_request_from_pb)
    assert serde.get_model_request_from_pb(wire(serde.get_model_request_to_pb(name))) == name


def test_import_messages_refuse_what_a_peer_could_get_wrong() -> None:
    with pytest.raises(InvalidArgument, match=r"header.precisions\[1\]"):
        serde.import_model_header_from_pb(admin_pb.ImportModelHeader(name="m", precisions=["int8", "INT 4"]))
    with pytest.raises(InvalidArgument, match="import model event: empty"):
        serde.import_model_event_from_pb(admin_pb.ImportModelEvent())
    bad = types_pb.ModelVariant(variant="fp32", sha256=SHA_A, latency_b1_ms=-1.0)
    with pytest.raises(InvalidArgument, match=r"variant\.latency_b1_ms"):
        serde.model_variant_from_pb(bad)
    with pytest.raises(InvalidArgument, match=r"variant\.cosine"):
        serde.model_variant_from_pb(types_pb.ModelVariant(variant="fp32", sha256=SHA_A, cosine=math.nan))
    unset = serde.model_variant_from_pb(types_pb.ModelVariant(variant="fp32", sha256=SHA_A))
    assert (unset.accuracy, unset.agreement, unset.cosine) == (None, None, None)
    with pytest.raises(InvalidArgument, match=r"model.rejected\[0\].precision"):
        serde.model_from_pb(types_pb.Model(name="m", rejected=[types_pb.RejectedVariant(reason="x")]))


def test_cut_points_and_block_profiles_roundtrip_and_are_checked() -> None:
    cut = CutPoint(9, (TensorSpec("h", DataType.FLOAT32, (-1, 64)),), 256)
    unknown = CutPoint(12, (TensorSpec("s", DataType.INT64, (-1, -1)),), -1)
    blocks = (
        BlockProfile(0, 9, "fp32", 1, 0.02),
        BlockProfile(9, 0, "int8", 32, 0.0, "failed to run: x"),
    )
    m = Model("digits", cut_points=(cut, unknown), block_profiles=blocks)
    roundtrip(m, serde.model_to_pb, serde.model_from_pb)
    roundtrip(cut, serde.cut_point_to_pb, serde.cut_point_from_pb)
    roundtrip(blocks[1], serde.block_profile_to_pb, serde.block_profile_from_pb)
    with pytest.raises(InvalidArgument, match=r"model.cut_points\[0\].index"):
        serde.model_from_pb(types_pb.Model(name="m", cut_points=[types_pb.CutPoint(index=0)]))
    with pytest.raises(InvalidArgument, match=r"cut_point.bytes_per_sample"):
        serde.cut_point_from_pb(types_pb.CutPoint(index=1, bytes_per_sample=-2))
    with pytest.raises(InvalidArgument, match=r"model.block_profiles\[0\]: end_cut 3 is not after"):
        serde.model_from_pb(
            types_pb.Model(
                name="m",
                block_profiles=[
                    types_pb.BlockProfile(start_cut=5, end_cut=3, precision="fp32", batch_size=1)
                ],
            )
        )
    with pytest.raises(InvalidArgument, match=r"block_profile.latency_ms"):
        serde.block_profile_from_pb(types_pb.BlockProfile(precision="fp32", batch_size=1, latency_ms=-1.0))
    with pytest.raises(InvalidArgument, match=r"block_profile.batch_size"):
        serde.block_profile_from_pb(types_pb.BlockProfile(precision="fp32"))


SEGMENTS = (SegmentSpec(0, 34, "int8"), SegmentSpec(34, 0, "fp32"))


@settings(PROPERTY, max_examples=25)
@given(profile_requests, profile_reports, names, st.lists(names, min_size=1, max_size=3, unique=True))
def test_profile_and_evaluation_roundtrips(
    request: ProfileRequest, report: ProfileReport, name: str, device_ids: list[str]
) -> None:
    roundtrip(request, serde.profile_request_to_pb, serde.profile_request_from_pb)
    roundtrip(report, serde.profile_report_to_pb, serde.profile_report_from_pb)
    for b in request.blocks:
        roundtrip(b, serde.profile_block_to_pb, serde.profile_block_from_pb)
    assert serde.request_profile_request_from_pb(
        wire(serde.request_profile_request_to_pb(name, device_ids, runs=7))
    ) == (name, tuple(device_ids), "", 7)
    assert serde.request_profile_request_from_pb(
        wire(serde.request_profile_request_to_pb(name, hardware_class="edge-npu"))
    ) == (name, (), "edge-npu", 0)
    records = tuple(
        ProfileRequestRecord(d, name, f"prof-{i}", request.batch_sizes, request.runs, 17)
        for i, d in enumerate(device_ids)
    )
    roundtrip_args = serde.request_profile_response_from_pb(
        wire(serde.request_profile_response_to_pb(name, records))
    )
    assert roundtrip_args == records
    assert serde.evaluate_segments_request_from_pb(
        wire(serde.evaluate_segments_request_to_pb(name, SEGMENTS))
    ) == (
        name,
        SEGMENTS,
    )
    evaluation = SegmentEvaluation(name, SEGMENTS, 450, 0.97, None, 0.99, 0.96, None, None)
    roundtrip(evaluation, serde.evaluate_segments_response_to_pb, serde.evaluate_segments_response_from_pb)


def test_profile_messages_refuse_what_a_peer_could_get_wrong() -> None:
    block = controller_pb.ProfileBlock(start_cut=0, end_cut=5, precision="fp32", artifact_sha256=SHA_A)
    good = controller_pb.ProfileRequest(
        request_id="prof-1",
        model_name="m",
        source_sha256=SHA_A,
        blocks=[block],
        inputs_sha256=SHA_B,
        batch_sizes=[1, 32],
        runs=5,
    )
    serde.profile_request_from_pb(good)

    def bad(**changes: Any) -> Any:
        pb = controller_pb.ProfileRequest()
        pb.CopyFrom(good)
        for key, value in changes.items():
            pb.ClearField(key)
            if isinstance(value, list):
                getattr(pb, key).extend(value)
            else:
                setattr(pb, key, value)
        return pb

    cases = [
        (bad(blocks=[]), "profile_request.blocks: empty"),
        (bad(blocks=[block, block]), "profile_request.blocks[1]: block 0..5 at fp32 listed twice"),
        (bad(blocks=[block] * (MAX_PROFILE_BLOCKS + 1)), "profile_request.blocks: 257 entries"),
        (bad(batch_sizes=[]), "profile_request.batch_sizes: empty"),
        (bad(batch_sizes=[1, 1]), "profile_request.batch_sizes[1]: 1 listed twice"),
        (bad(batch_sizes=[MAX_PROFILE_BATCH + 1]), "profile_request.batch_sizes[0]: 1025 is not within"),
        (bad(runs=0), "profile_request.runs: 0 is not within 1..1000"),
        (bad(inputs_sha256="xyz"), "profile_request.inputs_sha256"),
        (
            bad(
                blocks=[
                    controller_pb.ProfileBlock(
                        start_cut=5, end_cut=3, precision="fp32", artifact_sha256=SHA_A
                    )
                ]
            ),
            "profile_request.blocks[0]: end_cut 3 is not after start_cut 5",
        ),
        (
            bad(blocks=[controller_pb.ProfileBlock(precision="fp32")]),
            "profile_request.blocks[0].artifact_sha256: empty",
        ),
    ]
    for pb, expected in cases:
        with pytest.raises(InvalidArgument) as info:
            serde.controller_message_from_pb(controller_pb.ControllerMessage(profile_request=pb))
        assert str(info.value).startswith(expected), str(info.value)

    timing = controller_pb.BlockTiming(start_cut=0, end_cut=0, precision="fp32", batch_size=1, latency_ms=1.0)
    reports = [
        (
            controller_pb.ProfileReport(request_id="prof-1", model_name="m", timings=[timing, timing]),
            "timings[1]: block 0..0",
        ),
        (
            controller_pb.ProfileReport(
                request_id="prof-1", model_name="m", timings=[timing] * (MAX_PROFILE_TIMINGS + 1)
            ),
            "profile_report.timings: 2049 entries",
        ),
        (
            controller_pb.ProfileReport(
                request_id="prof-1",
                model_name="m",
                timings=[controller_pb.BlockTiming(precision="fp32", batch_size=0)],
            ),
            "profile_report.timings[0].batch_size: 0 is not within",
        ),
        (
            controller_pb.ProfileReport(
                request_id="prof-1",
                model_name="m",
                timings=[controller_pb.BlockTiming(precision="fp32", batch_size=1, latency_ms=math.inf)],
            ),
            "profile_report.timings[0].latency_ms",
        ),
        (
            controller_pb.ProfileReport(
                request_id="prof-1",
                model_name="m",
                call_overhead=[
                    types_pb.CallOverhead(batch_size=1),
                    types_pb.CallOverhead(batch_size=1),
                ],
            ),
            "profile_report.call_overhead[1].batch_size: batch 1 reported twice",
        ),
        (controller_pb.ProfileReport(model_name="m"), "profile_report.request_id: empty"),
    ]
    for pb, expected in reports:
        with pytest.raises(InvalidArgument) as info:
            serde.agent_message_from_pb(controller_pb.AgentMessage(profile_report=pb))
        assert expected in str(info.value), str(info.value)

    with pytest.raises(InvalidArgument, match="either device ids or a hardware class"):
        serde.request_profile_request_from_pb(admin_pb.RequestProfileRequest(model_name="m"))
    with pytest.raises(InvalidArgument, match="either device ids or a hardware class"):
        serde.request_profile_request_from_pb(
            admin_pb.RequestProfileRequest(model_name="m", device_ids=["d"], hardware_class="edge-npu")
        )
    with pytest.raises(InvalidArgument, match=r"device_ids\[1\]: invalid name"):
        serde.request_profile_request_from_pb(
            admin_pb.RequestProfileRequest(model_name="m", device_ids=["d", "D!"])
        )
    with pytest.raises(InvalidArgument, match=r"^segments: empty"):
        serde.evaluate_segments_request_from_pb(admin_pb.EvaluateSegmentsRequest(model_name="m"))
    with pytest.raises(InvalidArgument, match=r"segments\[0\].precision"):
        serde.evaluate_segments_request_from_pb(
            admin_pb.EvaluateSegmentsRequest(
                model_name="m", segments=[admin_pb.SegmentSpec(precision="INT 8")]
            )
        )


def test_block_artifacts_accuracy_and_class_profiles_roundtrip_and_are_checked() -> None:
    m = Model(
        "digits",
        block_profiles=(BlockProfile(0, 9, "int8", 1, 0.02, "", SHA_A, 1234),),
        block_accuracy=(
            BlockAccuracy(0, 0, "fp32", 0.97, 1.0, 1.0),
            BlockAccuracy(0, 9, "int8", 0.96, None, 0.99),
        ),
        profile_inputs_sha256=SHA_A,
        profile_inputs_size_bytes=10,
        eval_data_sha256=SHA_B,
        eval_data_size_bytes=20,
        class_profiles=(ClassBlockProfile("phone-cpu", 0, 9, "int8", 1, 0.5, 2),),
    )
    roundtrip(m, serde.model_to_pb, serde.model_from_pb)
    with pytest.raises(InvalidArgument, match=r"block_profile.artifact_size_bytes: 5 without"):
        serde.block_profile_from_pb(
            types_pb.BlockProfile(precision="fp32", batch_size=1, artifact_size_bytes=5)
        )
    with pytest.raises(InvalidArgument, match=r"model.block_accuracy\[0\].cosine"):
        serde.model_from_pb(
            types_pb.Model(
                name="m", block_accuracy=[types_pb.BlockAccuracy(precision="int8", cosine=math.nan)]
            )
        )
    with pytest.raises(InvalidArgument, match=r"model.class_profiles\[0\].hardware_class"):
        serde.model_from_pb(
            types_pb.Model(
                name="m", class_profiles=[types_pb.ClassBlockProfile(precision="int8", batch_size=1)]
            )
        )
    with pytest.raises(InvalidArgument, match=r"model.eval_data_sha256"):
        serde.model_from_pb(types_pb.Model(name="m", eval_data_sha256="nope"))
    with pytest.raises(InvalidArgument, match=r"model.call_overhead\[0\].batch_size"):
        serde.model_from_pb(types_pb.Model(name="m", call_overhead=[types_pb.CallOverhead(batch_size=0)]))
    with pytest.raises(InvalidArgument, match=r"model.class_call_overhead\[0\].hardware_class"):
        serde.model_from_pb(
            types_pb.Model(name="m", class_call_overhead=[types_pb.ClassCallOverhead(batch_size=1)])
        )


def test_small_request_roundtrips() -> None:
    roundtrip(DeviceIdentity("dev-1", "secret"), serde.enroll_response_to_pb, serde.enroll_response_from_pb)
    roundtrip(DeviceIdentity("dev-1", "secret"), serde.device_identity_to_pb, serde.device_identity_from_pb)
    token = CreatedToken(token_id="t1", token="s3cret", expires_at_ms=123, uses=2)
    roundtrip(token, serde.create_token_response_to_pb, serde.create_token_response_from_pb)
    assert serde.create_token_request_from_pb(wire(serde.create_token_request_to_pb(60, 3, "lab"))) == (
        60,
        3,
        "lab",
    )
    assert serde.fetch_artifact_request_from_pb(wire(serde.fetch_artifact_request_to_pb(SHA_A, 7))) == (
        SHA_A,
        7,
    )
    assert serde.get_device_request_from_pb(wire(serde.get_device_request_to_pb("dev-1"))) == "dev-1"
    assert serde.assign_request_from_pb(wire(serde.assign_request_to_pb("dev-1", "digits", "int8"))) == (
        "dev-1",
        "digits",
        "int8",
    )
    assert serde.assign_request_from_pb(admin_pb.AssignRequest(device_id="d", model_name="m")) == (
        "d",
        "m",
        DEFAULT_VARIANT,
    )
    header = serde.import_model_request_from_pb(
        admin_pb.ImportModelRequest(header=admin_pb.ImportModelHeader(name="m"))
    )
    assert header == ImportModelHeader(name="m", variant=DEFAULT_VARIANT)
    first = ArtifactChunk(offset=0, data=b"abc", manifest=ArtifactManifest(SHA_B, 10))
    roundtrip(first, serde.artifact_chunk_to_pb, serde.artifact_chunk_from_pb)
    roundtrip(ArtifactChunk(offset=3, data=b"def"), serde.artifact_chunk_to_pb, serde.artifact_chunk_from_pb)
    assert serde.list_devices_request_to_pb() == admin_pb.ListDevicesRequest()
    assert serde.list_models_request_to_pb() == admin_pb.ListModelsRequest()
    assert serde.get_status_request_to_pb() == agent_pb.GetStatusRequest()


def test_enums() -> None:
    for dtype in DataType:
        assert serde.data_type_from_pb(serde.data_type_to_pb(dtype)) is dtype
    for outcome in Outcome:
        assert serde.outcome_from_pb(serde.outcome_to_pb(outcome)) is outcome
    for failure in [None, *AssignmentFailure]:
        assert serde.assignment_failure_from_pb(serde.assignment_failure_to_pb(failure)) is failure
    assert serde.assignment_failure_to_pb(None) == types_pb.ASSIGNMENT_FAILURE_UNSPECIFIED
    with pytest.raises(InvalidArgument, match=r"^dtype: unspecified$"):
        serde.data_type_from_pb(0)
    with pytest.raises(InvalidArgument, match=r"^outcome: unknown value 99$"):
        serde.outcome_from_pb(99)
    with pytest.raises(InvalidArgument, match=r"^failure: unknown value 99$"):
        serde.assignment_failure_from_pb(99)


# --- validation --------------------------------------------------------------------------------

HW = types_pb.HardwareProfile(hardware_class="phone-cpu")


def _record(seq: int, **body: Any) -> Any:
    return controller_pb.TelemetryRecord(sequence=seq, timestamp_ms=1, **body)


def _inference(**kw: Any) -> Any:
    return controller_pb.InferenceRecord(**{"outcome": controller_pb.OUTCOME_OK, **kw})


def _agent(**kw: Any) -> Any:
    return controller_pb.AgentMessage(**kw)


def _batch(*records: Any) -> Any:
    return _agent(telemetry=controller_pb.TelemetryBatch(records=list(records)))


def _tensor(
    name: str = "input",
    dtype: Any = types_pb.DATA_TYPE_UINT8,
    shape: tuple[int, ...] = (2,),
    data: bytes = b"ab",
) -> Any:
    return types_pb.Tensor(name=name, dtype=dtype, shape=shape, data=data)


def _infer(*tensors: Any, output_names: tuple[str, ...] = ()) -> Any:
    return agent_pb.InferRequest(inputs=list(tensors), output_names=output_names)


def _dev(**kw: Any) -> Any:
    return types_pb.Device(**{"id": "dev-1", "hardware": HW, **kw})


INVALID: list[tuple[str, Callable[[Any], Any], Any, str]] = [
    # control stream, agent -> controller
    ("empty agent message", serde.agent_message_from_pb, _agent(), "agent message: empty (no body set)"),
    (
        "hello without hardware",
        serde.agent_message_from_pb,
        _agent(hello=controller_pb.Hello()),
        "hello.hardware: missing",
    ),
    (
        "hello with empty hardware class",
        serde.agent_message_from_pb,
        _agent(hello=controller_pb.Hello(hardware=types_pb.HardwareProfile(os="android"))),
        "hello.hardware.hardware_class: empty",
    ),
    (
        "hello with bad hardware class",
        serde.agent_message_from_pb,
        _agent(hello=controller_pb.Hello(hardware=types_pb.HardwareProfile(hardware_class="Phone CPU"))),
        "hello.hardware.hardware_class: invalid hardware class 'Phone CPU'",
    ),
    (
        "hello with bad reported sha",
        serde.agent_message_from_pb,
        _agent(hello=controller_pb.Hello(hardware=HW, reported=types_pb.ReportedState(active_sha256="ABC"))),
        "hello.reported.active_sha256: 'ABC' is not a lowercase hex sha256",
    ),
    (
        "record without body",
        serde.agent_message_from_pb,
        _batch(*(_record(i, inference=_inference()) for i in (1, 2, 3)), _record(4)),
        "telemetry.records[3].body: missing",
    ),
    (
        "record sequence 0",
        serde.agent_message_from_pb,
        _batch(_record(0, inference=_inference())),
        "telemetry.records[0].sequence: must be >= 1",
    ),
    (
        "outcome unspecified",
        serde.agent_message_from_pb,
        _batch(_record(1, inference=controller_pb.InferenceRecord())),
        "telemetry.records[0].inference.outcome: unspecified",
    ),
    (
        "outcome unknown",
        serde.agent_message_from_pb,
        _batch(_record(1, inference=_inference(outcome=42))),
        "telemetry.records[0].inference.outcome: unknown value 42",
    ),
    (
        "latency NaN",
        serde.agent_message_from_pb,
        _batch(_record(1, inference=_inference(latency_ms=math.nan))),
        "telemetry.records[0].inference.latency_ms: nan is not a finite non-negative number",
    ),
    (
        "latency negative",
        serde.agent_message_from_pb,
        _batch(_record(1, inference=_inference(latency_ms=-1.0))),
        "telemetry.records[0].inference.latency_ms: -1.0",
    ),
    (
        "event without kind",
        serde.agent_message_from_pb,
        _batch(_record(1, event=controller_pb.DeviceEvent(message="x"))),
        "telemetry.records[0].event.kind: empty",
    ),
    (
        "batch too large",
        serde.agent_message_from_pb,
        _batch(*(_record(i + 1, inference=_inference()) for i in range(MAX_TELEMETRY_BATCH + 1))),
        f"telemetry.records: {MAX_TELEMETRY_BATCH + 1} records, at most {MAX_TELEMETRY_BATCH}",
    ),
    (
        "ack with unknown failure",
        serde.agent_message_from_pb,
        _agent(assignment_ack=controller_pb.AssignmentAck(version=1, failure=cast(Any, 9))),
        "assignment_ack.failure: unknown value 9",
    ),
    # control stream, controller -> agent
    (
        "empty controller message",
        serde.controller_message_from_pb,
        controller_pb.ControllerMessage(),
        "controller message: empty (no body set)",
    ),
    (
        "welcome without heartbeat interval",
        serde.controller_message_from_pb,
        controller_pb.ControllerMessage(welcome=controller_pb.Welcome()),
        "welcome.heartbeat_interval_ms: must be > 0",
    ),
    (
        "assignment without sha",
        serde.controller_message_from_pb,
        controller_pb.ControllerMessage(
            assignment=types_pb.Assignment(version=1, model_name="m", variant="fp32")
        ),
        "assignment.artifact_sha256: empty",
    ),
    (
        "assignment without variant",
        serde.controller_message_from_pb,
        controller_pb.ControllerMessage(
            assignment=types_pb.Assignment(version=1, model_name="m", artifact_sha256=SHA_A)
        ),
        "assignment.variant: empty",
    ),
    (
        "assignment with bad model name",
        serde.controller_message_from_pb,
        controller_pb.ControllerMessage(
            assignment=types_pb.Assignment(version=1, model_name="../etc", variant="fp32")
        ),
        "assignment.model_name: invalid name '../etc'",
    ),
    # enrollment
    (
        "enroll without token",
        serde.enroll_request_from_pb,
        controller_pb.EnrollRequest(hardware=HW),
        "bootstrap_token: empty",
    ),
    (
        "enroll without hardware",
        serde.enroll_request_from_pb,
        controller_pb.EnrollRequest(bootstrap_token="t"),
        "hardware: missing",
    ),
    (
        "enroll with bad device id",
        serde.enroll_request_from_pb,
        controller_pb.EnrollRequest(bootstrap_token="t", hardware=HW, requested_device_id="Dev 1"),
        "requested_device_id: invalid name 'Dev 1'",
    ),
    (
        "enroll with newline in device id",
        serde.enroll_request_from_pb,
        controller_pb.EnrollRequest(bootstrap_token="t", hardware=HW, requested_device_id="dev\n"),
        "requested_device_id: invalid name",
    ),
    (
        "enroll response without credential",
        serde.enroll_response_from_pb,
        controller_pb.EnrollResponse(device_id="d"),
        "device_credential: empty",
    ),
    # artifacts
    (
        "fetch without sha",
        serde.fetch_artifact_request_from_pb,
        controller_pb.FetchArtifactRequest(),
        "sha256: empty",
    ),
    (
        "fetch with uppercase sha",
        serde.fetch_artifact_request_from_pb,
        controller_pb.FetchArtifactRequest(sha256="A" * 64),
        "sha256: 'AAAA",
    ),
    (
        "chunk past manifest size",
        serde.artifact_chunk_from_pb,
        controller_pb.ArtifactChunk(
            manifest=controller_pb.ArtifactManifest(sha256=SHA_A, size_bytes=2), offset=1, data=b"xy"
        ),
        "chunk: bytes 1..3 run past size_bytes 2",
    ),
    (
        "chunk manifest without sha",
        serde.artifact_chunk_from_pb,
        controller_pb.ArtifactChunk(manifest=controller_pb.ArtifactManifest(size_bytes=2)),
        "chunk.manifest.sha256: empty",
    ),
    # inference
    (
        "tensor dtype unspecified",
        serde.infer_request_from_pb,
        _infer(_tensor(dtype=0)),
        "tensor 'input': dtype unspecified",
    ),
    (
        "tensor dtype unknown",
        serde.infer_request_from_pb,
        _infer(_tensor(dtype=77)),
        "tensor 'input': dtype 77 unknown",
    ),
    ("tensor without name", serde.infer_request_from_pb, _infer(_tensor(name="")), "inputs[0].name: empty"),
    (
        "tensor data size mismatch",
        serde.infer_request_from_pb,
        _infer(_tensor(dtype=types_pb.DATA_TYPE_FLOAT32, shape=(1, 3), data=b"abc")),
        "tensor 'input': data is 3 bytes but shape [1, 3] of float32 needs 12",
    ),
    (
        "tensor negative dim",
        serde.infer_request_from_pb,
        _infer(_tensor(shape=(2, -1))),
        "tensor 'input': shape[1] is -1, must be >= 0",
    ),
    (
        "tensor rank too high",
        serde.infer_request_from_pb,
        _infer(_tensor(shape=(1,) * 65, data=b"a")),
        "tensor 'input': shape has 65",
    ),
    (
        "duplicate inputs",
        serde.infer_request_from_pb,
        _infer(_tensor(), _tensor()),
        "inputs[1]: duplicate tensor name 'input'",
    ),
    ("empty output name", serde.infer_request_from_pb, _infer(output_names=("",)), "output_names[0]: empty"),
    (
        "duplicate output name",
        serde.infer_request_from_pb,
        _infer(output_names=("y", "y")),
        "output_names[1]: duplicate 'y'",
    ),
    (
        "response without model sha",
        serde.infer_response_from_pb,
        agent_pb.InferResponse(),
        "model_sha256: empty",
    ),
    (
        "status spec dtype unspecified",
        serde.agent_status_from_pb,
        agent_pb.AgentStatus(outputs=[types_pb.TensorSpec(name="probs")]),
        "outputs[0] (tensor 'probs'): dtype unspecified",
    ),
    (
        "status spec dim below -1",
        serde.agent_status_from_pb,
        agent_pb.AgentStatus(
            inputs=[types_pb.TensorSpec(name="x", dtype=types_pb.DATA_TYPE_INT64, shape=[-2])]
        ),
        "inputs[0] (tensor 'x'): shape[0] is -2, must be >= -1",
    ),
    # admin
    (
        "import request empty",
        serde.import_model_request_from_pb,
        admin_pb.ImportModelRequest(),
        "import model request: empty (no body set)",
    ),
    (
        "import header without name",
        serde.import_model_request_from_pb,
        admin_pb.ImportModelRequest(header=admin_pb.ImportModelHeader(variant="fp32")),
        "header.name: empty",
    ),
    (
        "import header too large",
        serde.import_model_request_from_pb,
        admin_pb.ImportModelRequest(header=admin_pb.ImportModelHeader(name="m", size_bytes=2**40)),
        "header.size_bytes: 1099511627776 bytes, at most",
    ),
    (
        "assign without device",
        serde.assign_request_from_pb,
        admin_pb.AssignRequest(model_name="m"),
        "device_id: empty",
    ),
    (
        "assign with bad variant",
        serde.assign_request_from_pb,
        admin_pb.AssignRequest(device_id="d", model_name="m", variant="FP32"),
        "variant: invalid name 'FP32'",
    ),
    (
        "assign response without device",
        serde.assign_response_from_pb,
        admin_pb.AssignResponse(changed=True),
        "device: missing",
    ),
    (
        "get device without id",
        serde.get_device_request_from_pb,
        admin_pb.GetDeviceRequest(),
        "device_id: empty",
    ),
    (
        "token response without token",
        serde.create_token_response_from_pb,
        admin_pb.CreateTokenResponse(token_id="t"),
        "token: empty",
    ),
    (
        "device list with nameless device",
        serde.list_devices_response_from_pb,
        admin_pb.ListDevicesResponse(devices=[_dev(), _dev(id="")]),
        "devices[1].id: empty",
    ),
    (
        "device with unknown failure",
        serde.device_from_pb,
        _dev(last_failure=12),
        "device.last_failure: unknown value 12",
    ),
    ("device without hardware", serde.device_from_pb, types_pb.Device(id="d"), "device.hardware: missing"),
    (
        "model with duplicate variants",
        serde.list_models_response_from_pb,
        admin_pb.ListModelsResponse(
            models=[
                types_pb.Model(name="m", variants=[types_pb.ModelVariant(variant="fp32", sha256=SHA_A)] * 2)
            ]
        ),
        "models[0].variants[1].variant: duplicate 'fp32'",
    ),
    (
        "model variant spec without dtype",
        serde.model_from_pb,
        types_pb.Model(
            name="m",
            variants=[
                types_pb.ModelVariant(variant="fp32", sha256=SHA_A, inputs=[types_pb.TensorSpec(name="x")])
            ],
        ),
        "model.variants[0].inputs[0] (tensor 'x'): dtype unspecified",
    ),
]


@pytest.mark.parametrize(("decode", "pb", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_decoders_reject_with_field_path(decode: Callable[[Any], Any], pb: Any, expected: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode(wire(pb))
    assert str(info.value).startswith(expected), str(info.value)


def test_long_peer_text_is_truncated() -> None:
    long = "x" * (MAX_TEXT_CHARS * 3)
    hello = serde.agent_message_from_pb(
        _agent(
            hello=controller_pb.Hello(
                hardware=types_pb.HardwareProfile(hardware_class="phone-cpu", os=long, labels={long: long})
            )
        )
    )
    assert isinstance(hello, Hello)
    assert hello.hardware.os == "x" * MAX_TEXT_CHARS
    assert list(hello.hardware.labels.items()) == [("x" * MAX_TEXT_CHARS, "x" * MAX_TEXT_CHARS)]
    batch = serde.agent_message_from_pb(_batch(_record(1, inference=_inference(error=long))))
    assert isinstance(batch, TelemetryBatch)
    body = batch.records[0].body
    assert isinstance(body, InferenceRecord)
    assert len(body.error) == MAX_TEXT_CHARS
    assert (
        serde.create_token_request_from_pb(admin_pb.CreateTokenRequest(description=long))[2]
        == "x" * MAX_TEXT_CHARS
    )


# Every decoder a peer's bytes reach: whatever parses must decode or raise InvalidArgument, nothing else.
DECODERS: list[tuple[Any, Callable[[Any], Any]]] = [
    (controller_pb.AgentMessage, serde.agent_message_from_pb),
    (controller_pb.ControllerMessage, serde.controller_message_from_pb),
    (controller_pb.EnrollRequest, serde.enroll_request_from_pb),
    (controller_pb.EnrollResponse, serde.enroll_response_from_pb),
    (controller_pb.FetchArtifactRequest, serde.fetch_artifact_request_from_pb),
    (controller_pb.ArtifactChunk, serde.artifact_chunk_from_pb),
    (admin_pb.CreateTokenRequest, serde.create_token_request_from_pb),
    (admin_pb.CreateTokenResponse, serde.create_token_response_from_pb),
    (admin_pb.ListDevicesResponse, serde.list_devices_response_from_pb),
    (admin_pb.GetDeviceRequest, serde.get_device_request_from_pb),
    (admin_pb.ImportModelRequest, serde.import_model_request_from_pb),
    (admin_pb.ImportModelEvent, serde.import_model_event_from_pb),
    (admin_pb.GetModelRequest, serde.get_model_request_from_pb),
    (admin_pb.GetArtifactManifestRequest, serde.get_artifact_manifest_request_from_pb),
    (admin_pb.ArtifactManifestDoc, serde.artifact_manifest_doc_from_pb),
    (admin_pb.ListModelsResponse, serde.list_models_response_from_pb),
    (admin_pb.AssignRequest, serde.assign_request_from_pb),
    (admin_pb.AssignResponse, serde.assign_response_from_pb),
    (types_pb.Device, serde.device_from_pb),
    (types_pb.Model, serde.model_from_pb),
    (admin_pb.EvaluateSegmentsRequest, serde.evaluate_segments_request_from_pb),
    (admin_pb.EvaluateSegmentsResponse, serde.evaluate_segments_response_from_pb),
    (admin_pb.RequestProfileRequest, serde.request_profile_request_from_pb),
    (admin_pb.RequestProfileResponse, serde.request_profile_response_from_pb),
    (agent_pb.InferRequest, serde.infer_request_from_pb),
    (agent_pb.InferResponse, serde.infer_response_from_pb),
    (agent_pb.AgentStatus, serde.agent_status_from_pb),
]

# Valid messages to mutate, so the fuzzing reaches past the first field.
SEEDS: list[bytes] = [
    serde.agent_message_to_pb(
        TelemetryBatch(
            (
                TelemetryRecord(1, 2, InferenceRecord(SHA_A, 1.5, Outcome.OK)),
                TelemetryRecord(2, 3, DeviceEvent("swap", "m")),
            )
        )
    ).SerializeToString(),
    serde.agent_message_to_pb(
        Hello(HardwareProfile("phone-cpu", labels={"a": "b"}), ReportedState(1, SHA_A))
    ).SerializeToString(),
    serde.controller_message_to_pb(Assignment(3, "m", "fp32", SHA_B, 10)).SerializeToString(),
    serde.infer_request_to_pb(
        InferRequest((Tensor("x", DataType.FLOAT32, (1, 2), b"\0" * 8),), ("y",))
    ).SerializeToString(),
    serde.device_to_pb(
        Device("d", HardwareProfile("edge-npu"), assignment=Assignment(1, "m", "fp32", SHA_A))
    ).SerializeToString(),
    serde.model_to_pb(
        Model("m", (ModelVariant("fp32", SHA_A, 1, (TensorSpec("x", DataType.INT8, (-1, 3)),)),))
    ).SerializeToString(),
    serde.controller_message_to_pb(
        ProfileRequest("prof-1", "m", SHA_A, (ProfileBlock(0, 5, "fp32", SHA_B, 9),), SHA_A, 3, (1, 32), 5)
    ).SerializeToString(),
    serde.agent_message_to_pb(
        ProfileReport("prof-1", "m", (BlockTiming(0, 5, "fp32", 1, 0.5),), (CallOverhead(1, 0.01),))
    ).SerializeToString(),
]


@st.composite
def peer_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    seed = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(seed) - 1))
        seed[i] = draw(st.integers(0, 255))
    return bytes(seed)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(peer_bytes())
def test_decoders_raise_only_invalid_argument(data: bytes) -> None:
    for cls, decode in DECODERS:
        try:
            pb = cls.FromString(data)
        except DecodeError:
            continue
        with contextlib.suppress(InvalidArgument):
            decode(pb)


# --- service plumbing --------------------------------------------------------------------------


def test_service_plumbing_is_reexported() -> None:
    for name in ("Controller", "Admin", "Agent"):
        assert isinstance(getattr(serde, f"{name}ServiceServicer"), type)
        assert isinstance(getattr(serde, f"{name}ServiceStub"), type)
        assert callable(getattr(serde, f"add_{name}ServiceServicer_to_server"))


# --- errors <-> gRPC status --------------------------------------------------------------------

STATUS_CASES: list[tuple[EdgefleetError, grpc.StatusCode, type[EdgefleetError]]] = [
    (InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (NotFound("gone"), grpc.StatusCode.NOT_FOUND, NotFound),
    (AlreadyExists("dup"), grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
    (Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (ResourceExhausted("full", retry_after=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    (TransientError("later", retry_after=1.0), grpc.StatusCode.UNAVAILABLE, TransientError),
    (PermanentError("never"), grpc.StatusCode.FAILED_PRECONDITION, PermanentError),
    (EdgefleetError("bug"), grpc.StatusCode.INTERNAL, TransientError),
]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...]) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def _through_fake(exc: BaseException) -> EdgefleetError:
    return serde.error_from_rpc_error(
        FakeRpcError(serde.error_to_status(exc), serde.error_details(exc), serde.error_trailers(exc))
    )


@pytest.mark.parametrize(
    ("exc", "status", "cls"), STATUS_CASES, ids=[type(c[0]).__name__ for c in STATUS_CASES]
)
def test_error_status_mapping_roundtrip(
    exc: EdgefleetError, status: grpc.StatusCode, cls: type[EdgefleetError]
) -> None:
    assert serde.error_to_status(exc) == status
    back = _through_fake(exc)
    assert type(back) is cls
    assert back.code == exc.code
    assert back.message == exc.message
    if isinstance(exc, TransientError):
        assert isinstance(back, TransientError)
        assert back.retry_after == exc.retry_after


def test_token_expired_survives_the_fake_rpc_error() -> None:
    back = _through_fake(Unauthenticated("bootstrap token expired", code="token_expired"))
    assert isinstance(back, Unauthenticated)
    assert back.code == "token_expired"
    assert back.message == "bootstrap token expired"


def test_status_to_error_classifies_codes() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        err = serde.status_to_error(code, "x", 3.0)
        assert isinstance(err, TransientError)
        assert err.retry_after == 3.0
    assert serde.status_to_error(grpc.StatusCode.DEADLINE_EXCEEDED, None, None).code == "deadline_exceeded"
    assert isinstance(serde.status_to_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", None), ResourceExhausted)
    # A server bug or a race is worth retrying with backoff; a missing method is not.
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED):
        err = serde.status_to_error(code, "", None)
        assert isinstance(err, TransientError)
        assert err.code == code.name.lower()
    for code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS):
        err = serde.status_to_error(code, "", None)
        assert isinstance(err, PermanentError)
        assert err.code == code.name.lower()
    assert isinstance(serde.status_to_error(grpc.StatusCode.OUT_OF_RANGE, "x", None), InvalidArgument)


def test_unexpected_exceptions_do_not_leak() -> None:
    exc = RuntimeError("secret path /etc/x")
    assert serde.error_to_status(exc) == grpc.StatusCode.INTERNAL
    back = _through_fake(exc)
    assert isinstance(back, TransientError)
    assert back.code == "internal"
    assert "secret" not in back.message


def test_garbage_trailers_are_ignored() -> None:
    err = serde.error_from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.UNAVAILABLE,
            "down",
            (("x-edgefleet-error-code", "NOT A CODE!"), ("retry-after", "soon")),
        )
    )
    assert isinstance(err, TransientError)
    assert err.code == "unavailable"
    assert err.retry_after is None
    for bad in ("-1", "nan", "inf"):
        err = serde.error_from_rpc_error(
            FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", (("retry-after", bad),))
        )
        assert isinstance(err, TransientError)
        assert err.retry_after is None
    assert isinstance(serde.error_from_rpc_error(grpc.RpcError("no call info")), TransientError)


WIRE_ERRORS: dict[bytes, BaseException] = {
    b"expired": Unauthenticated("bootstrap token expired", code="token_expired"),
    b"busy": ResourceExhausted("too many devices enrolling", retry_after=1.5, code="enroll_rate_limited"),
    b"bug": RuntimeError("boom"),
}


def _abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    serde.abort_with_error(context, WIRE_ERRORS[request])


async def _abort_async(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await serde.abort_with_error_async(context, WIRE_ERRORS[request])


def _check_wire_error(key: bytes, err: EdgefleetError) -> None:
    if key == b"expired":
        assert isinstance(err, Unauthenticated)
        assert (err.code, err.message) == ("token_expired", "bootstrap token expired")
    elif key == b"busy":
        assert isinstance(err, ResourceExhausted)
        assert (err.code, err.retry_after) == ("enroll_rate_limited", 1.5)
    else:
        assert isinstance(err, TransientError)
        assert (err.code, err.message) == ("internal", "internal error")


def test_errors_survive_a_real_grpc_call() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    channel: grpc.Channel | None = None
    try:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Errors", {"Fail": grpc.unary_unary_rpc_method_handler(_abort)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        fail = channel.unary_unary("/test.Errors/Fail", request_serializer=None, response_deserializer=None)
        for key in WIRE_ERRORS:
            with pytest.raises(grpc.RpcError) as info:
                fail(key, timeout=5)
            _check_wire_error(key, serde.error_from_rpc_error(info.value))
    finally:
        if channel is not None:
            channel.close()
        server.stop(None)


def test_errors_survive_a_real_asyncio_grpc_call() -> None:
    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Errors", {"Fail": grpc.unary_unary_rpc_method_handler(_abort_async)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                fail = channel.unary_unary(
                    "/test.Errors/Fail", request_serializer=None, response_deserializer=None
                )
                for key in WIRE_ERRORS:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await fail(key, timeout=5)
                    _check_wire_error(key, serde.error_from_rpc_error(info.value))
                # The re-exported stub works on asyncio channels too (no ControllerService here).
                stub = serde.ControllerServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Enroll(
                        serde.enroll_request_to_pb("t", HardwareProfile("phone-cpu")), timeout=5
                    )
                err = serde.error_from_rpc_error(info.value)
                assert isinstance(err, PermanentError)
                assert err.code == "unimplemented"
        finally:
            await server.stop(None)

    asyncio.run(main())


class _Controller(serde.ControllerServiceServicer):
    def Enroll(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            token, hardware, requested, _ = serde.enroll_request_from_pb(request)
            if token == "expired":
                raise Unauthenticated("bootstrap token expired", code="token_expired")
            return serde.enroll_response_to_pb(DeviceIdentity(requested or hardware.hardware_class, "cred"))
        except EdgefleetError as exc:
            serde.abort_with_error(context, exc)


def test_servicer_and_stub_over_the_wire() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    channel: grpc.Channel | None = None
    try:
        serde.add_ControllerServiceServicer_to_server(_Controller(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = serde.ControllerServiceStub(channel)
        hw = HardwareProfile("phone-cpu")
        reply = stub.Enroll(serde.enroll_request_to_pb("good", hw, "dev-7"), timeout=5)
        assert serde.enroll_response_from_pb(reply) == DeviceIdentity("dev-7", "cred")
        for request, cls, code in [
            (serde.enroll_request_to_pb("expired", hw), Unauthenticated, "token_expired"),
            (
                controller_pb.EnrollRequest(hardware=types_pb.HardwareProfile()),
                InvalidArgument,
                "invalid_argument",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                stub.Enroll(request, timeout=5)
            err = serde.error_from_rpc_error(info.value)
            assert isinstance(err, cls)
            assert err.code == code
        assert "bootstrap_token: empty" in str(err)
    finally:
        if channel is not None:
            channel.close()
        server.stop(None)
