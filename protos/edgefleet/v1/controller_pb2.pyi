from edgefleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_INVALID_INPUT: _ClassVar[Outcome]
    OUTCOME_NO_MODEL: _ClassVar[Outcome]
    OUTCOME_ERROR: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_OK: Outcome
OUTCOME_INVALID_INPUT: Outcome
OUTCOME_NO_MODEL: Outcome
OUTCOME_ERROR: Outcome

class EnrollRequest(_message.Message):
    __slots__ = ("bootstrap_token", "hardware", "requested_device_id", "device_credential")
    BOOTSTRAP_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    bootstrap_token: str
    hardware: _types_pb2.HardwareProfile
    requested_device_id: str
    device_credential: str
    def __init__(self, bootstrap_token: _Optional[str] = ..., hardware: _Optional[_Union[_types_pb2.HardwareProfile, _Mapping]] = ..., requested_device_id: _Optional[str] = ..., device_credential: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "device_credential")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_credential: str
    def __init__(self, device_id: _Optional[str] = ..., device_credential: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "telemetry", "assignment_ack", "profile_report")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ACK_FIELD_NUMBER: _ClassVar[int]
    PROFILE_REPORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    telemetry: TelemetryBatch
    assignment_ack: AssignmentAck
    profile_report: ProfileReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetryBatch, _Mapping]] = ..., assignment_ack: _Optional[_Union[AssignmentAck, _Mapping]] = ..., profile_report: _Optional[_Union[ProfileReport, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("hardware", "reported", "telemetry_watermark", "records_dropped", "links", "endpoint")
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    hardware: _types_pb2.HardwareProfile
    reported: _types_pb2.ReportedState
    telemetry_watermark: int
    records_dropped: int
    links: _containers.RepeatedCompositeFieldContainer[_types_pb2.LinkMeasurement]
    endpoint: str
    def __init__(self, hardware: _Optional[_Union[_types_pb2.HardwareProfile, _Mapping]] = ..., reported: _Optional[_Union[_types_pb2.ReportedState, _Mapping]] = ..., telemetry_watermark: _Optional[int] = ..., records_dropped: _Optional[int] = ..., links: _Optional[_Iterable[_Union[_types_pb2.LinkMeasurement, _Mapping]]] = ..., endpoint: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at_ms", "links")
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    sent_at_ms: int
    links: _containers.RepeatedCompositeFieldContainer[_types_pb2.LinkMeasurement]
    def __init__(self, sent_at_ms: _Optional[int] = ..., links: _Optional[_Iterable[_Union[_types_pb2.LinkMeasurement, _Mapping]]] = ...) -> None: ...

class InferenceRecord(_message.Message):
    __slots__ = ("model_sha256", "latency_ms", "outcome", "error", "path", "hops", "assignment_version")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    latency_ms: float
    outcome: Outcome
    error: str
    path: str
    hops: _containers.RepeatedCompositeFieldContainer[_types_pb2.HopTiming]
    assignment_version: int
    def __init__(self, model_sha256: _Optional[str] = ..., latency_ms: _Optional[float] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., error: _Optional[str] = ..., path: _Optional[str] = ..., hops: _Optional[_Iterable[_Union[_types_pb2.HopTiming, _Mapping]]] = ..., assignment_version: _Optional[int] = ...) -> None: ...

class DeviceEvent(_message.Message):
    __slots__ = ("kind", "message", "assignment_version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    assignment_version: int
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ..., assignment_version: _Optional[int] = ...) -> None: ...

class TelemetryRecord(_message.Message):
    __slots__ = ("sequence", "timestamp_ms", "inference", "event")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    timestamp_ms: int
    inference: InferenceRecord
    event: DeviceEvent
    def __init__(self, sequence: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., inference: _Optional[_Union[InferenceRecord, _Mapping]] = ..., event: _Optional[_Union[DeviceEvent, _Mapping]] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[TelemetryRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[TelemetryRecord, _Mapping]]] = ...) -> None: ...

class AssignmentAck(_message.Message):
    __slots__ = ("version", "failure", "message", "reported")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    version: int
    failure: _types_pb2.AssignmentFailure
    message: str
    reported: _types_pb2.ReportedState
    def __init__(self, version: _Optional[int] = ..., failure: _Optional[_Union[_types_pb2.AssignmentFailure, str]] = ..., message: _Optional[str] = ..., reported: _Optional[_Union[_types_pb2.ReportedState, _Mapping]] = ...) -> None: ...

class BlockTiming(_message.Message):
    __slots__ = ("start_cut", "end_cut", "precision", "batch_size", "latency_ms", "error")
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    start_cut: int
    end_cut: int
    precision: str
    batch_size: int
    latency_ms: float
    error: str
    def __init__(self, start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., batch_size: _Optional[int] = ..., latency_ms: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ProfileReport(_message.Message):
    __slots__ = ("request_id", "model_name", "timings", "call_overhead", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CALL_OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    timings: _containers.RepeatedCompositeFieldContainer[BlockTiming]
    call_overhead: _containers.RepeatedCompositeFieldContainer[_types_pb2.CallOverhead]
    error: str
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[BlockTiming, _Mapping]]] = ..., call_overhead: _Optional[_Iterable[_Union[_types_pb2.CallOverhead, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("welcome", "assignment", "telemetry_ack", "profile_request")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ACK_FIELD_NUMBER: _ClassVar[int]
    PROFILE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignment: _types_pb2.Assignment
    telemetry_ack: TelemetryAck
    profile_request: ProfileRequest
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignment: _Optional[_Union[_types_pb2.Assignment, _Mapping]] = ..., telemetry_ack: _Optional[_Union[TelemetryAck, _Mapping]] = ..., profile_request: _Optional[_Union[ProfileRequest, _Mapping]] = ...) -> None: ...

class ProfileBlock(_message.Message):
    __slots__ = ("start_cut", "end_cut", "precision", "artifact_sha256", "artifact_size_bytes")
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    start_cut: int
    end_cut: int
    precision: str
    artifact_sha256: str
    artifact_size_bytes: int
    def __init__(self, start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("request_id", "model_name", "source_sha256", "blocks", "inputs_sha256", "inputs_size_bytes", "batch_sizes", "runs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    source_sha256: str
    blocks: _containers.RepeatedCompositeFieldContainer[ProfileBlock]
    inputs_sha256: str
    inputs_size_bytes: int
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    runs: int
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., source_sha256: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[ProfileBlock, _Mapping]]] = ..., inputs_sha256: _Optional[str] = ..., inputs_size_bytes: _Optional[int] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., runs: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "telemetry_watermark")
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    telemetry_watermark: int
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ..., telemetry_watermark: _Optional[int] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("up_to_sequence",)
    UP_TO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    up_to_sequence: int
    def __init__(self, up_to_sequence: _Optional[int] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("sha256", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactManifest(_message.Message):
    __slots__ = ("sha256", "size_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("manifest", "offset", "data")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    manifest: ArtifactManifest
    offset: int
    data: bytes
    def __init__(self, manifest: _Optional[_Union[ArtifactManifest, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
