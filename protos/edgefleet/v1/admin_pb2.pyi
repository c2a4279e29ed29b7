from edgefleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds", "uses", "description")
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    uses: int
    description: str
    def __init__(self, ttl_seconds: _Optional[int] = ..., uses: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token_id", "token", "expires_at_ms", "uses")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    token: str
    expires_at_ms: int
    uses: int
    def __init__(self, token_id: _Optional[str] = ..., token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., uses: _Optional[int] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[_types_pb2.Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[_types_pb2.Device, _Mapping]]] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class ImportModelHeader(_message.Message):
    __slots__ = ("name", "variant", "size_bytes", "precisions", "eval_data_size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATA_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    variant: str
    size_bytes: int
    precisions: _containers.RepeatedScalarFieldContainer[str]
    eval_data_size_bytes: int
    def __init__(self, name: _Optional[str] = ..., variant: _Optional[str] = ..., size_bytes: _Optional[int] = ..., precisions: _Optional[_Iterable[str]] = ..., eval_data_size_bytes: _Optional[int] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("header", "data", "eval_data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATA_FIELD_NUMBER: _ClassVar[int]
    header: ImportModelHeader
    data: bytes
    eval_data: bytes
    def __init__(self, header: _Optional[_Union[ImportModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., eval_data: _Optional[bytes] = ...) -> None: ...

class ImportProgress(_message.Message):
    __slots__ = ("step", "total", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    message: str
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ImportModelEvent(_message.Message):
    __slots__ = ("progress", "model")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    progress: ImportProgress
    model: _types_pb2.Model
    def __init__(self, progress: _Optional[_Union[ImportProgress, _Mapping]] = ..., model: _Optional[_Union[_types_pb2.Model, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetArtifactManifestRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ArtifactManifestDoc(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_types_pb2.Model]
    def __init__(self, models: _Optional[_Iterable[_Union[_types_pb2.Model, _Mapping]]] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("device_id", "model_name", "variant")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model_name: str
    variant: str
    def __init__(self, device_id: _Optional[str] = ..., model_name: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("device", "changed")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    device: _types_pb2.Device
    changed: bool
    def __init__(self, device: _Optional[_Union[_types_pb2.Device, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class SegmentSpec(_message.Message):
    __slots__ = ("start_cut", "end_cut", "precision")
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    start_cut: int
    end_cut: int
    precision: str
    def __init__(self, start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ...) -> None: ...

class EvaluateSegmentsRequest(_message.Message):
    __slots__ = ("model_name", "segments")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentSpec]
    def __init__(self, model_name: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentSpec, _Mapping]]] = ...) -> None: ...

class EvaluateSegmentsResponse(_message.Message):
    __slots__ = ("model_name", "segments", "rows", "accuracy", "cosine", "agreement", "predicted_accuracy", "predicted_cosine", "predicted_agreement")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COSINE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentSpec]
    rows: int
    accuracy: float
    cosine: float
    agreement: float
    predicted_accuracy: float
    predicted_cosine: float
    predicted_agreement: float
    def __init__(self, model_name: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentSpec, _Mapping]]] = ..., rows: _Optional[int] = ..., accuracy: _Optional[float] = ..., cosine: _Optional[float] = ..., agreement: _Optional[float] = ..., predicted_accuracy: _Optional[float] = ..., predicted_cosine: _Optional[float] = ..., predicted_agreement: _Optional[float] = ...) -> None: ...

class RequestProfileRequest(_message.Message):
    __slots__ = ("model_name", "device_ids", "hardware_class", "runs")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    hardware_class: str
    runs: int
    def __init__(self, model_name: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., hardware_class: _Optional[str] = ..., runs: _Optional[int] = ...) -> None: ...

class ProfileRequested(_message.Message):
    __slots__ = ("device_id", "request_id", "requested_at_ms", "batch_sizes", "runs")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    request_id: str
    requested_at_ms: int
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    runs: int
    def __init__(self, device_id: _Optional[str] = ..., request_id: _Optional[str] = ..., requested_at_ms: _Optional[int] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., runs: _Optional[int] = ...) -> None: ...

class RequestProfileResponse(_message.Message):
    __slots__ = ("model_name", "requests")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    requests: _containers.RepeatedCompositeFieldContainer[ProfileRequested]
    def __init__(self, model_name: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[ProfileRequested, _Mapping]]] = ...) -> None: ...

class PolicyFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class PlanPoliciesRequest(_message.Message):
    __slots__ = ("files", "explain", "devices")
    FILES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    explain: _containers.RepeatedScalarFieldContainer[str]
    devices: bool
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., explain: _Optional[_Iterable[str]] = ..., devices: _Optional[bool] = ...) -> None: ...

class PlanPoliciesResponse(_message.Message):
    __slots__ = ("plan_json",)
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    plan_json: str
    def __init__(self, plan_json: _Optional[str] = ...) -> None: ...

class AssignmentChange(_message.Message):
    __slots__ = ("device_id", "before", "after")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    before: str
    after: str
    def __init__(self, device_id: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class DiffPoliciesResponse(_message.Message):
    __slots__ = ("policy_diff_json", "changes", "plan_summary_json")
    POLICY_DIFF_JSON_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    PLAN_SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    policy_diff_json: str
    changes: _containers.RepeatedCompositeFieldContainer[AssignmentChange]
    plan_summary_json: str
    def __init__(self, policy_diff_json: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[AssignmentChange, _Mapping]]] = ..., plan_summary_json: _Optional[str] = ...) -> None: ...

class ApplyPoliciesRequest(_message.Message):
    __slots__ = ("files", "applied_by", "git_commit", "git_dirty", "source", "message")
    FILES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    GIT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    GIT_DIRTY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[PolicyFile]
    applied_by: str
    git_commit: str
    git_dirty: bool
    source: str
    message: str
    def __init__(self, files: _Optional[_Iterable[_Union[PolicyFile, _Mapping]]] = ..., applied_by: _Optional[str] = ..., git_commit: _Optional[str] = ..., git_dirty: _Optional[bool] = ..., source: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PolicyApply(_message.Message):
    __slots__ = ("id", "applied_at_ms", "applied_by", "git_commit", "git_dirty", "source", "digest", "documents", "devices_changed", "summary_json", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    GIT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    GIT_DIRTY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_CHANGED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: int
    applied_at_ms: int
    applied_by: str
    git_commit: str
    git_dirty: bool
    source: str
    digest: str
    documents: int
    devices_changed: int
    summary_json: str
    message: str
    def __init__(self, id: _Optional[int] = ..., applied_at_ms: _Optional[int] = ..., applied_by: _Optional[str] = ..., git_commit: _Optional[str] = ..., git_dirty: _Optional[bool] = ..., source: _Optional[str] = ..., digest: _Optional[str] = ..., documents: _Optional[int] = ..., devices_changed: _Optional[int] = ..., summary_json: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ApplyPoliciesResponse(_message.Message):
    __slots__ = ("apply", "changed", "changes")
    APPLY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    apply: PolicyApply
    changed: bool
    changes: _containers.RepeatedCompositeFieldContainer[AssignmentChange]
    def __init__(self, apply: _Optional[_Union[PolicyApply, _Mapping]] = ..., changed: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[AssignmentChange, _Mapping]]] = ...) -> None: ...

class ListPolicyAppliesRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListPolicyAppliesResponse(_message.Message):
    __slots__ = ("applies",)
    APPLIES_FIELD_NUMBER: _ClassVar[int]
    applies: _containers.RepeatedCompositeFieldContainer[PolicyApply]
    def __init__(self, applies: _Optional[_Iterable[_Union[PolicyApply, _Mapping]]] = ...) -> None: ...

class GetDeviceLatencyRequest(_message.Message):
    __slots__ = ("device_id", "window")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    window: int
    def __init__(self, device_id: _Optional[str] = ..., window: _Optional[int] = ...) -> None: ...

class HopLatency(_message.Message):
    __slots__ = ("tier", "device_id", "requests", "compute_ms_p50", "compute_ms_p95", "queue_ms_p50", "transfer_ms_p50", "mean_batch_size", "predicted_compute_ms", "predicted_queue_ms", "predicted_transfer_ms")
    TIER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_P50_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_P95_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_P50_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MS_P50_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    device_id: str
    requests: int
    compute_ms_p50: float
    compute_ms_p95: float
    queue_ms_p50: float
    transfer_ms_p50: float
    mean_batch_size: float
    predicted_compute_ms: float
    predicted_queue_ms: float
    predicted_transfer_ms: float
    def __init__(self, tier: _Optional[str] = ..., device_id: _Optional[str] = ..., requests: _Optional[int] = ..., compute_ms_p50: _Optional[float] = ..., compute_ms_p95: _Optional[float] = ..., queue_ms_p50: _Optional[float] = ..., transfer_ms_p50: _Optional[float] = ..., mean_batch_size: _Optional[float] = ..., predicted_compute_ms: _Optional[float] = ..., predicted_queue_ms: _Optional[float] = ..., predicted_transfer_ms: _Optional[float] = ...) -> None: ...

class OutcomeCount(_message.Message):
    __slots__ = ("name", "count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class DeviceLatency(_message.Message):
    __slots__ = ("device_id", "window", "requests", "outcomes", "paths", "measured", "p50_ms", "p95_ms", "p99_ms", "percentile", "at_percentile_ms", "predicted_ms", "slo_ms", "hops")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    AT_PERCENTILE_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    SLO_MS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    window: int
    requests: int
    outcomes: _containers.RepeatedCompositeFieldContainer[OutcomeCount]
    paths: _containers.RepeatedCompositeFieldContainer[OutcomeCount]
    measured: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    percentile: float
    at_percentile_ms: float
    predicted_ms: float
    slo_ms: float
    hops: _containers.RepeatedCompositeFieldContainer[HopLatency]
    def __init__(self, device_id: _Optional[str] = ..., window: _Optional[int] = ..., requests: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[OutcomeCount, _Mapping]]] = ..., paths: _Optional[_Iterable[_Union[OutcomeCount, _Mapping]]] = ..., measured: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., percentile: _Optional[float] = ..., at_percentile_ms: _Optional[float] = ..., predicted_ms: _Optional[float] = ..., slo_ms: _Optional[float] = ..., hops: _Optional[_Iterable[_Union[HopLatency, _Mapping]]] = ...) -> None: ...
