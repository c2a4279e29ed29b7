"""controller.proto: enrollment, the control stream (both directions) and artifact fetches."""

from __future__ import annotations

from typing import Final

from edgefleet.v1 import controller_pb2 as controller_pb
from google.protobuf.message import DecodeError

from common.errors import InvalidArgument
from common.limits import (
    MAX_PROFILE_BATCH_SIZES,
    MAX_PROFILE_BLOCKS,
    MAX_PROFILE_RUNS,
    MAX_PROFILE_TIMINGS,
    MAX_TELEMETRY_BATCH,
)
from common.serde._types import (
    address,
    assignment_failure_from_pb,
    assignment_failure_to_pb,
    assignment_from_pb,
    assignment_to_pb,
    block_range,
    call_overhead_from_pb,
    call_overhead_to_pb,
    hardware_profile_from_pb,
    hardware_profile_to_pb,
    hop_timing_to_pb,
    hops_from_pb,
    link_measurement_to_pb,
    links_from_pb,
    reported_state_from_pb,
    reported_state_to_pb,
)
from common.serde._validate import (
    _at,
    _batch_size,
    _enum,
    _fail,
    _latency,
    _name,
    _nonempty,
    _required_message,
    _sha256,
    _text,
)
from common.types import (
    AgentMessage,
    ArtifactChunk,
    ArtifactManifest,
    Assignment,
    AssignmentAck,
    BlockTiming,
    CallOverhead,
    ControllerMessage,
    DeviceEvent,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    InferenceRecord,
    Outcome,
    ProfileBlock,
    ProfileReport,
    ProfileRequest,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Welcome,
)

# --- controller.proto: enums -------------------------------------------------------------------

_OUTCOME_TO_PB: Final[dict[Outcome, controller_pb.Outcome]] = {
    Outcome.OK: controller_pb.OUTCOME_OK,
    Outcome.INVALID_INPUT: controller_pb.OUTCOME_INVALID_INPUT,
    Outcome.NO_MODEL: controller_pb.OUTCOME_NO_MODEL,
    Outcome.ERROR: controller_pb.OUTCOME_ERROR,
}
_OUTCOME_FROM_PB: Final[dict[int, Outcome]] = {int(v): k for k, v in _OUTCOME_TO_PB.items()}


def outcome_to_pb(outcome: Outcome) -> controller_pb.Outcome:
    return _OUTCOME_TO_PB[outcome]


def outcome_from_pb(value: int, *, path: str = "outcome") -> Outcome:
    return _enum(path, value, _OUTCOME_FROM_PB)


# --- controller.proto: enrollment --------------------------------------------------------------


def enroll_request_to_pb(
    token: str, hardware: HardwareProfile, requested_device_id: str = "", device_credential: str = ""
) -> controller_pb.EnrollRequest:
    return controller_pb.EnrollRequest(
        bootstrap_token=token,
        hardware=hardware_profile_to_pb(hardware),
        requested_device_id=requested_device_id,
        device_credential=device_credential,
    )


#: Agent-chosen credentials: long enough to be unguessable, short enough to bound what we hash.
_MIN_CREDENTIAL_CHARS, _MAX_CREDENTIAL_CHARS = 32, 256


def enroll_request_from_pb(pb: controller_pb.EnrollRequest) -> tuple[str, HardwareProfile, str, str]:
    """``(bootstrap_token, hardware, requested_device_id, device_credential)``; the id and credential
    are '' when the agent left them to us."""
    token = _nonempty("bootstrap_token", pb.bootstrap_token)
    _required_message(pb, "hardware", "")
    hardware = hardware_profile_from_pb(pb.hardware, path="hardware")
    credential = pb.device_credential
    if credential and not _MIN_CREDENTIAL_CHARS <= len(credential) <= _MAX_CREDENTIAL_CHARS:
        _fail(
            "device_credential",
            f"must be {_MIN_CREDENTIAL_CHARS}-{_MAX_CREDENTIAL_CHARS} characters, got {len(credential)}",
        )
    return token, hardware, _name("requested_device_id", pb.requested_device_id, required=False), credential


def enroll_response_to_pb(identity: DeviceIdentity) -> controller_pb.EnrollResponse:
    return controller_pb.EnrollResponse(device_id=identity.device_id, device_credential=identity.credential)


def enroll_response_from_pb(pb: controller_pb.EnrollResponse) -> DeviceIdentity:
    return DeviceIdentity(
        device_id=_name("device_id", pb.device_id),
        credential=_nonempty("device_credential", pb.device_credential),
    )


# --- controller.proto: control stream, agent -> controller -------------------------------------


def inference_record_to_pb(r: InferenceRecord) -> controller_pb.InferenceRecord:
    return controller_pb.InferenceRecord(
        model_sha256=r.model_sha256,
        latency_ms=r.latency_ms,
        outcome=_OUTCOME_TO_PB[r.outcome],
        error=r.error,
        path=r.path,
        hops=[hop_timing_to_pb(h) for h in r.hops],
        assignment_version=r.assignment_version,
    )


def inference_record_from_pb(
    pb: controller_pb.InferenceRecord, *, path: str = "inference"
) -> InferenceRecord:
    return InferenceRecord(
        model_sha256=_sha256(_at(path, "model_sha256"), pb.model_sha256, required=False),
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        outcome=outcome_from_pb(pb.outcome, path=_at(path, "outcome")),
        error=_text(pb.error),
        path=_path_name(_at(path, "path"), pb.path),
        hops=hops_from_pb(_at(path, "hops"), pb.hops),
        assignment_version=pb.assignment_version,
    )


INFERENCE_PATHS = ("", "local", "partitioned", "fallback")


def _path_name(path: str, value: str) -> str:
    if value not in INFERENCE_PATHS:
        _fail(path, f"unknown inference path {value!r}: local, partitioned or fallback")
    return value


def device_event_to_pb(e: DeviceEvent) -> controller_pb.DeviceEvent:
    return controller_pb.DeviceEvent(kind=e.kind, message=e.message, assignment_version=e.assignment_version)


def device_event_from_pb(pb: controller_pb.DeviceEvent, *, path: str = "event") -> DeviceEvent:
    return DeviceEvent(
        kind=_nonempty(_at(path, "kind"), pb.kind),
        message=_text(pb.message),
        assignment_version=pb.assignment_version,
    )


def telemetry_record_to_pb(r: TelemetryRecord) -> controller_pb.TelemetryRecord:
    if isinstance(r.body, InferenceRecord):
        return controller_pb.TelemetryRecord(
            sequence=r.sequence, timestamp_ms=r.timestamp_ms, inference=inference_record_to_pb(r.body)
        )
    return controller_pb.TelemetryRecord(
        sequence=r.sequence, timestamp_ms=r.timestamp_ms, event=device_event_to_pb(r.body)
    )


def telemetry_record_to_bytes(r: TelemetryRecord) -> bytes:
    """A record as bytes (the agent's outbox stores these)."""
    return bytes(telemetry_record_to_pb(r).SerializeToString())


def telemetry_record_from_bytes(data: bytes) -> TelemetryRecord:
    """InvalidArgument for bytes that are not a record (a corrupt outbox row)."""
    try:
        pb = controller_pb.TelemetryRecord.FromString(data)
    except DecodeError as exc:
        _fail("record", f"not a telemetry record: {exc}")
    return telemetry_record_from_pb(pb)


def telemetry_record_from_pb(pb: controller_pb.TelemetryRecord, *, path: str = "record") -> TelemetryRecord:
    """Sequences start at 1: watermarks and acks use 0 for "nothing yet"."""
    if pb.sequence == 0:
        _fail(_at(path, "sequence"), "must be >= 1")
    which = pb.WhichOneof("body")
    body: InferenceRecord | DeviceEvent
    if which == "inference":
        body = inference_record_from_pb(pb.inference, path=_at(path, "inference"))
    elif which == "event":
        body = device_event_from_pb(pb.event, path=_at(path, "event"))
    else:
        _fail(_at(path, "body"), "missing")
    return TelemetryRecord(sequence=pb.sequence, timestamp_ms=pb.timestamp_ms, body=body)


def hello_to_pb(h: Hello) -> controller_pb.Hello:
    return controller_pb.Hello(
        hardware=hardware_profile_to_pb(h.hardware),
        reported=reported_state_to_pb(h.reported),
        telemetry_watermark=h.telemetry_watermark,
        records_dropped=h.records_dropped,
        links=[link_measurement_to_pb(m) for m in h.links],
        endpoint=h.endpoint,
    )


def hello_from_pb(pb: controller_pb.Hello, *, path: str = "hello") -> Hello:
    _required_message(pb, "hardware", path)
    return Hello(
        hardware=hardware_profile_from_pb(pb.hardware, path=_at(path, "hardware")),
        reported=reported_state_from_pb(pb.reported, path=_at(path, "reported")),
        telemetry_watermark=pb.telemetry_watermark,
        records_dropped=pb.records_dropped,
        links=links_from_pb(pb.links, path=_at(path, "links")),
        endpoint=address(_at(path, "endpoint"), pb.endpoint) if pb.endpoint else "",
    )


def heartbeat_to_pb(h: Heartbeat) -> controller_pb.Heartbeat:
    return controller_pb.Heartbeat(
        sent_at_ms=h.sent_at_ms, links=[link_measurement_to_pb(m) for m in h.links]
    )


def heartbeat_from_pb(pb: controller_pb.Heartbeat, *, path: str = "heartbeat") -> Heartbeat:
    return Heartbeat(sent_at_ms=pb.sent_at_ms, links=links_from_pb(pb.links, path=_at(path, "links")))


def telemetry_batch_to_pb(b: TelemetryBatch) -> controller_pb.TelemetryBatch:
    return controller_pb.TelemetryBatch(records=[telemetry_record_to_pb(r) for r in b.records])


def telemetry_batch_from_pb(pb: controller_pb.TelemetryBatch, *, path: str = "telemetry") -> TelemetryBatch:
    if len(pb.records) > MAX_TELEMETRY_BATCH:
        _fail(_at(path, "records"), f"{len(pb.records)} records, at most {MAX_TELEMETRY_BATCH} per batch")
    return TelemetryBatch(
        records=tuple(
            telemetry_record_from_pb(r, path=_at(path, f"records[{i}]")) for i, r in enumerate(pb.records)
        )
    )


def assignment_ack_to_pb(a: AssignmentAck) -> controller_pb.AssignmentAck:
    return controller_pb.AssignmentAck(
        version=a.version,
        failure=assignment_failure_to_pb(a.failure),
        message=a.message,
        reported=reported_state_to_pb(a.reported),
    )


def assignment_ack_from_pb(pb: controller_pb.AssignmentAck, *, path: str = "assignment_ack") -> AssignmentAck:
    return AssignmentAck(
        version=pb.version,
        reported=reported_state_from_pb(pb.reported, path=_at(path, "reported")),
        failure=assignment_failure_from_pb(pb.failure, path=_at(path, "failure")),
        message=_text(pb.message),
    )


def block_timing_to_pb(t: BlockTiming) -> controller_pb.BlockTiming:
    return controller_pb.BlockTiming(
        start_cut=t.start_cut,
        end_cut=t.end_cut,
        precision=t.precision,
        batch_size=t.batch_size,
        latency_ms=t.latency_ms,
        error=t.error,
    )


def block_timing_from_pb(pb: controller_pb.BlockTiming, *, path: str = "timing") -> BlockTiming:
    block_range(path, pb.start_cut, pb.end_cut)
    _batch_size(_at(path, "batch_size"), pb.batch_size)
    return BlockTiming(
        start_cut=pb.start_cut,
        end_cut=pb.end_cut,
        precision=_name(_at(path, "precision"), pb.precision),
        batch_size=pb.batch_size,
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        error=_text(pb.error),
    )


def profile_report_to_pb(r: ProfileReport) -> controller_pb.ProfileReport:
    return controller_pb.ProfileReport(
        request_id=r.request_id,
        model_name=r.model_name,
        timings=[block_timing_to_pb(t) for t in r.timings],
        call_overhead=[call_overhead_to_pb(c) for c in r.call_overhead],
        error=r.error,
    )


def profile_report_from_pb(pb: controller_pb.ProfileReport, *, path: str = "profile_report") -> ProfileReport:
    """At most ``MAX_PROFILE_TIMINGS`` timings, each (block, precision, batch) once; at most one call
    overhead per batch size."""
    if len(pb.timings) > MAX_PROFILE_TIMINGS:
        _fail(_at(path, "timings"), f"{len(pb.timings)} entries, at most {MAX_PROFILE_TIMINGS}")
    if len(pb.call_overhead) > MAX_PROFILE_BATCH_SIZES:
        _fail(
            _at(path, "call_overhead"), f"{len(pb.call_overhead)} entries, at most {MAX_PROFILE_BATCH_SIZES}"
        )
    timings: list[BlockTiming] = []
    seen: set[tuple[int, int, str, int]] = set()
    for i, t in enumerate(pb.timings):
        tpath = _at(path, f"timings[{i}]")
        timing = block_timing_from_pb(t, path=tpath)
        key = (timing.start_cut, timing.end_cut, timing.precision, timing.batch_size)
        if key in seen:
            _fail(tpath, f"block {key[0]}..{key[1]} at {key[2]}, batch {key[3]} reported twice")
        seen.add(key)
        timings.append(timing)
    overheads: list[CallOverhead] = []
    for i, c in enumerate(pb.call_overhead):
        cpath = _at(path, f"call_overhead[{i}]")
        overhead = call_overhead_from_pb(c, path=cpath)
        if any(o.batch_size == overhead.batch_size for o in overheads):
            _fail(_at(cpath, "batch_size"), f"batch {overhead.batch_size} reported twice")
        overheads.append(overhead)
    return ProfileReport(
        request_id=_name(_at(path, "request_id"), pb.request_id),
        model_name=_name(_at(path, "model_name"), pb.model_name),
        timings=tuple(timings),
        call_overhead=tuple(overheads),
        error=_text(pb.error),
    )


def agent_message_to_pb(msg: AgentMessage) -> controller_pb.AgentMessage:
    if isinstance(msg, Hello):
        return controller_pb.AgentMessage(hello=hello_to_pb(msg))
    if isinstance(msg, Heartbeat):
        return controller_pb.AgentMessage(heartbeat=heartbeat_to_pb(msg))
    if isinstance(msg, TelemetryBatch):
        return controller_pb.AgentMessage(telemetry=telemetry_batch_to_pb(msg))
    if isinstance(msg, ProfileReport):
        return controller_pb.AgentMessage(profile_report=profile_report_to_pb(msg))
    return controller_pb.AgentMessage(assignment_ack=assignment_ack_to_pb(msg))


def agent_message_from_pb(pb: controller_pb.AgentMessage) -> AgentMessage:
    """Paths are the oneof member names: ``hello.hardware.hardware_class: empty``."""
    which = pb.WhichOneof("body")
    if which == "hello":
        return hello_from_pb(pb.hello, path="hello")
    if which == "heartbeat":
        return heartbeat_from_pb(pb.heartbeat, path="heartbeat")
    if which == "telemetry":
        return telemetry_batch_from_pb(pb.telemetry, path="telemetry")
    if which == "assignment_ack":
        return assignment_ack_from_pb(pb.assignment_ack, path="assignment_ack")
    if which == "profile_report":
        return profile_report_from_pb(pb.profile_report, path="profile_report")
    raise InvalidArgument("agent message: empty (no body set)")


# --- controller.proto: control stream, controller -> agent -------------------------------------


def welcome_to_pb(w: Welcome) -> controller_pb.Welcome:
    return controller_pb.Welcome(
        heartbeat_interval_ms=w.heartbeat_interval_ms, telemetry_watermark=w.telemetry_watermark
    )


def welcome_from_pb(pb: controller_pb.Welcome, *, path: str = "welcome") -> Welcome:
    if pb.heartbeat_interval_ms == 0:
        _fail(_at(path, "heartbeat_interval_ms"), "must be > 0")
    return Welcome(heartbeat_interval_ms=pb.heartbeat_interval_ms, telemetry_watermark=pb.telemetry_watermark)


def telemetry_ack_to_pb(a: TelemetryAck) -> controller_pb.TelemetryAck:
    return controller_pb.TelemetryAck(up_to_sequence=a.up_to_sequence)


def telemetry_ack_from_pb(pb: controller_pb.TelemetryAck, *, path: str = "telemetry_ack") -> TelemetryAck:
    return TelemetryAck(up_to_sequence=pb.up_to_sequence)


def profile_block_to_pb(b: ProfileBlock) -> controller_pb.ProfileBlock:
    return controller_pb.ProfileBlock(
        start_cut=b.start_cut,
        end_cut=b.end_cut,
        precision=b.precision,
        artifact_sha256=b.artifact_sha256,
        artifact_size_bytes=b.artifact_size_bytes,
    )


def profile_block_from_pb(pb: controller_pb.ProfileBlock, *, path: str = "block") -> ProfileBlock:
    block_range(path, pb.start_cut, pb.end_cut)
    return ProfileBlock(
        start_cut=pb.start_cut,
        end_cut=pb.end_cut,
        precision=_name(_at(path, "precision"), pb.precision),
        artifact_sha256=_sha256(_at(path, "artifact_sha256"), pb.artifact_sha256),
        artifact_size_bytes=pb.artifact_size_bytes,
    )


def profile_request_to_pb(r: ProfileRequest) -> controller_pb.ProfileRequest:
    return controller_pb.ProfileRequest(
        request_id=r.request_id,
        model_name=r.model_name,
        source_sha256=r.source_sha256,
        blocks=[profile_block_to_pb(b) for b in r.blocks],
        inputs_sha256=r.inputs_sha256,
        inputs_size_bytes=r.inputs_size_bytes,
        batch_sizes=list(r.batch_sizes),
        runs=r.runs,
    )


def profile_request_from_pb(
    pb: controller_pb.ProfileRequest, *, path: str = "profile_request"
) -> ProfileRequest:
    """1..``MAX_PROFILE_BLOCKS`` blocks, each (range, precision) once; 1..``MAX_PROFILE_BATCH_SIZES``
    distinct batch sizes of at most ``MAX_PROFILE_BATCH``; 1..``MAX_PROFILE_RUNS`` runs."""
    if not pb.blocks:
        _fail(_at(path, "blocks"), "empty")
    if len(pb.blocks) > MAX_PROFILE_BLOCKS:
        _fail(_at(path, "blocks"), f"{len(pb.blocks)} entries, at most {MAX_PROFILE_BLOCKS}")
    blocks: list[ProfileBlock] = []
    for i, b in enumerate(pb.blocks):
        bpath = _at(path, f"blocks[{i}]")
        block = profile_block_from_pb(b, path=bpath)
        if any(
            (o.start_cut, o.end_cut, o.precision) == (b.start_cut, b.end_cut, b.precision) for o in blocks
        ):
            _fail(bpath, f"block {b.start_cut}..{b.end_cut} at {b.precision} listed twice")
        blocks.append(block)
    if not pb.batch_sizes:
        _fail(_at(path, "batch_sizes"), "empty")
    if len(pb.batch_sizes) > MAX_PROFILE_BATCH_SIZES:
        _fail(_at(path, "batch_sizes"), f"{len(pb.batch_sizes)} entries, at most {MAX_PROFILE_BATCH_SIZES}")
    for i, batch in enumerate(pb.batch_sizes):
        _batch_size(_at(path, f"batch_sizes[{i}]"), batch)
        if batch in pb.batch_sizes[:i]:
            _fail(_at(path, f"batch_sizes[{i}]"), f"{batch} listed twice")
    if not 1 <= pb.runs <= MAX_PROFILE_RUNS:
        _fail(_at(path, "runs"), f"{pb.runs} is not within 1..{MAX_PROFILE_RUNS}")
    return ProfileRequest(
        request_id=_name(_at(path, "request_id"), pb.request_id),
        model_name=_name(_at(path, "model_name"), pb.model_name),
        source_sha256=_sha256(_at(path, "source_sha256"), pb.source_sha256),
        blocks=tuple(blocks),
        inputs_sha256=_sha256(_at(path, "inputs_sha256"), pb.inputs_sha256),
        inputs_size_bytes=pb.inputs_size_bytes,
        batch_sizes=tuple(pb.batch_sizes),
        runs=pb.runs,
    )


def controller_message_to_pb(msg: ControllerMessage) -> controller_pb.ControllerMessage:
    if isinstance(msg, Welcome):
        return controller_pb.ControllerMessage(welcome=welcome_to_pb(msg))
    if isinstance(msg, Assignment):
        return controller_pb.ControllerMessage(assignment=assignment_to_pb(msg))
    if isinstance(msg, ProfileRequest):
        return controller_pb.ControllerMessage(profile_request=profile_request_to_pb(msg))
    return controller_pb.ControllerMessage(telemetry_ack=telemetry_ack_to_pb(msg))


def controller_message_from_pb(pb: controller_pb.ControllerMessage) -> ControllerMessage:
    which = pb.WhichOneof("body")
    if which == "welcome":
        return welcome_from_pb(pb.welcome, path="welcome")
    if which == "assignment":
        return assignment_from_pb(pb.assignment, path="assignment")
    if which == "telemetry_ack":
        return telemetry_ack_from_pb(pb.telemetry_ack, path="telemetry_ack")
    if which == "profile_request":
        return profile_request_from_pb(pb.profile_request, path="profile_request")
    raise InvalidArgument("controller message: empty (no body set)")


# --- controller.proto: artifacts ---------------------------------------------------------------


def fetch_artifact_request_to_pb(sha256: str, offset: int = 0) -> controller_pb.FetchArtifactRequest:
    return controller_pb.FetchArtifactRequest(sha256=sha256, offset=offset)


def fetch_artifact_request_from_pb(pb: controller_pb.FetchArtifactRequest) -> tuple[str, int]:
    """``(sha256, offset)``."""
    return _sha256("sha256", pb.sha256), pb.offset


def artifact_manifest_to_pb(m: ArtifactManifest) -> controller_pb.ArtifactManifest:
    return controller_pb.ArtifactManifest(sha256=m.sha256, size_bytes=m.size_bytes)


def artifact_manifest_from_pb(
    pb: controller_pb.ArtifactManifest, *, path: str = "manifest"
) -> ArtifactManifest:
    return ArtifactManifest(sha256=_sha256(_at(path, "sha256"), pb.sha256), size_bytes=pb.size_bytes)


def artifact_chunk_to_pb(c: ArtifactChunk) -> controller_pb.ArtifactChunk:
    pb = controller_pb.ArtifactChunk(offset=c.offset, data=c.data)
    if c.manifest is not None:
        pb.manifest.CopyFrom(artifact_manifest_to_pb(c.manifest))
    return pb


def artifact_chunk_from_pb(pb: controller_pb.ArtifactChunk, *, path: str = "chunk") -> ArtifactChunk:
    """``manifest`` is None unless set (the first chunk of each response carries it)."""
    manifest = (
        artifact_manifest_from_pb(pb.manifest, path=_at(path, "manifest"))
        if pb.HasField("manifest")
        else None
    )
    if manifest is not None and pb.offset + len(pb.data) > manifest.size_bytes:
        _fail(
            path, f"bytes {pb.offset}..{pb.offset + len(pb.data)} run past size_bytes {manifest.size_bytes}"
        )
    return ArtifactChunk(offset=pb.offset, data=pb.data, manifest=manifest)


# --- aliases named after the domain type -------------------------------------------------------

device_identity_to_pb = enroll_response_to_pb
device_identity_from_pb = enroll_response_from_pb
