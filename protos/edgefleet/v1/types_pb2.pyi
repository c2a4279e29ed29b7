from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_INT8: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]

class AssignmentFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_FAILURE_UNSPECIFIED: _ClassVar[AssignmentFailure]
    ASSIGNMENT_FAILURE_CHECKSUM_MISMATCH: _ClassVar[AssignmentFailure]
    ASSIGNMENT_FAILURE_LOAD_FAILED: _ClassVar[AssignmentFailure]
    ASSIGNMENT_FAILURE_SMOKE_TEST_FAILED: _ClassVar[AssignmentFailure]
    ASSIGNMENT_FAILURE_ARTIFACT_NOT_FOUND: _ClassVar[AssignmentFailure]
    ASSIGNMENT_FAILURE_FETCH_FAILED: _ClassVar[AssignmentFailure]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_INT8: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_BOOL: DataType
ASSIGNMENT_FAILURE_UNSPECIFIED: AssignmentFailure
ASSIGNMENT_FAILURE_CHECKSUM_MISMATCH: AssignmentFailure
ASSIGNMENT_FAILURE_LOAD_FAILED: AssignmentFailure
ASSIGNMENT_FAILURE_SMOKE_TEST_FAILED: AssignmentFailure
ASSIGNMENT_FAILURE_ARTIFACT_NOT_FOUND: AssignmentFailure
ASSIGNMENT_FAILURE_FETCH_FAILED: AssignmentFailure

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "encoding")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    encoding: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., encoding: _Optional[str] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class HardwareProfile(_message.Message):
    __slots__ = ("hardware_class", "cpu_cores", "memory_bytes", "execution_providers", "os", "onnxruntime_version", "agent_version", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    cpu_cores: int
    memory_bytes: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    os: str
    onnxruntime_version: str
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, hardware_class: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ..., os: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("version", "model_name", "variant", "artifact_sha256", "artifact_size_bytes", "plan", "serve")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SERVE_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_name: str
    variant: str
    artifact_sha256: str
    artifact_size_bytes: int
    plan: AssignmentPlan
    serve: _containers.RepeatedCompositeFieldContainer[ServedSegment]
    def __init__(self, version: _Optional[int] = ..., model_name: _Optional[str] = ..., variant: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., plan: _Optional[_Union[AssignmentPlan, _Mapping]] = ..., serve: _Optional[_Iterable[_Union[ServedSegment, _Mapping]]] = ...) -> None: ...

class AssignmentPlan(_message.Message):
    __slots__ = ("deployment", "pattern", "segments", "edge_pool", "edge_node", "cloud_pool", "fallback_variant", "predicted_latency_ms", "predicted_accuracy", "slo_ms", "percentile", "priority")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    EDGE_POOL_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODE_FIELD_NUMBER: _ClassVar[int]
    CLOUD_POOL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_VARIANT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SLO_MS_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    pattern: str
    segments: _containers.RepeatedCompositeFieldContainer[PlannedSegment]
    edge_pool: str
    edge_node: str
    cloud_pool: str
    fallback_variant: str
    predicted_latency_ms: float
    predicted_accuracy: float
    slo_ms: float
    percentile: float
    priority: int
    def __init__(self, deployment: _Optional[str] = ..., pattern: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[PlannedSegment, _Mapping]]] = ..., edge_pool: _Optional[str] = ..., edge_node: _Optional[str] = ..., cloud_pool: _Optional[str] = ..., fallback_variant: _Optional[str] = ..., predicted_latency_ms: _Optional[float] = ..., predicted_accuracy: _Optional[float] = ..., slo_ms: _Optional[float] = ..., percentile: _Optional[float] = ..., priority: _Optional[int] = ...) -> None: ...

class PlannedSegment(_message.Message):
    __slots__ = ("tier", "start_cut", "end_cut", "precision", "where", "artifact_sha256", "artifact_size_bytes", "endpoints", "predicted_compute_ms", "predicted_queue_ms", "predicted_transfer_ms", "profiled_compute_ms")
    TIER_FIELD_NUMBER: _ClassVar[int]
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILED_COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    start_cut: int
    end_cut: int
    precision: str
    where: str
    artifact_sha256: str
    artifact_size_bytes: int
    endpoints: _containers.RepeatedCompositeFieldContainer[SegmentEndpoint]
    predicted_compute_ms: float
    predicted_queue_ms: float
    predicted_transfer_ms: float
    profiled_compute_ms: float
    def __init__(self, tier: _Optional[str] = ..., start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., where: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., endpoints: _Optional[_Iterable[_Union[SegmentEndpoint, _Mapping]]] = ..., predicted_compute_ms: _Optional[float] = ..., predicted_queue_ms: _Optional[float] = ..., predicted_transfer_ms: _Optional[float] = ..., profiled_compute_ms: _Optional[float] = ...) -> None: ...

class SegmentEndpoint(_message.Message):
    __slots__ = ("device_id", "address", "weight")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    address: str
    weight: float
    def __init__(self, device_id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ServedSegment(_message.Message):
    __slots__ = ("artifact_sha256", "artifact_size_bytes", "model_name", "start_cut", "end_cut", "precision", "max_batch_size", "max_queue_delay_ms")
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    artifact_sha256: str
    artifact_size_bytes: int
    model_name: str
    start_cut: int
    end_cut: int
    precision: str
    max_batch_size: int
    max_queue_delay_ms: float
    def __init__(self, artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., model_name: _Optional[str] = ..., start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ...) -> None: ...

class HopTiming(_message.Message):
    __slots__ = ("device_id", "tier", "queue_ms", "compute_ms", "transfer_ms", "batch_size")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    tier: str
    queue_ms: float
    compute_ms: float
    transfer_ms: float
    batch_size: int
    def __init__(self, device_id: _Optional[str] = ..., tier: _Optional[str] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., transfer_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class LinkMeasurement(_message.Message):
    __slots__ = ("pool", "bandwidth_mbps", "rtt_ms", "rtt_p95_ms")
    POOL_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MBPS_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    RTT_P95_MS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    bandwidth_mbps: float
    rtt_ms: float
    rtt_p95_ms: float
    def __init__(self, pool: _Optional[str] = ..., bandwidth_mbps: _Optional[float] = ..., rtt_ms: _Optional[float] = ..., rtt_p95_ms: _Optional[float] = ...) -> None: ...

class ReportedState(_message.Message):
    __slots__ = ("acked_version", "active_sha256", "last_known_good_sha256", "active_model_name", "active_variant")
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    LAST_KNOWN_GOOD_SHA256_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    acked_version: int
    active_sha256: str
    last_known_good_sha256: str
    active_model_name: str
    active_variant: str
    def __init__(self, acked_version: _Optional[int] = ..., active_sha256: _Optional[str] = ..., last_known_good_sha256: _Optional[str] = ..., active_model_name: _Optional[str] = ..., active_variant: _Optional[str] = ...) -> None: ...

class ModelVariant(_message.Message):
    __slots__ = ("variant", "sha256", "size_bytes", "inputs", "outputs", "created_at_ms", "precision", "method", "latency_b1_ms", "latency_b32_ms", "accuracy", "agreement", "cosine")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_B1_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_B32_MS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    sha256: str
    size_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    created_at_ms: int
    precision: str
    method: str
    latency_b1_ms: float
    latency_b32_ms: float
    accuracy: float
    agreement: float
    cosine: float
    def __init__(self, variant: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., created_at_ms: _Optional[int] = ..., precision: _Optional[str] = ..., method: _Optional[str] = ..., latency_b1_ms: _Optional[float] = ..., latency_b32_ms: _Optional[float] = ..., accuracy: _Optional[float] = ..., agreement: _Optional[float] = ..., cosine: _Optional[float] = ...) -> None: ...

class RejectedVariant(_message.Message):
    __slots__ = ("precision", "method", "reason")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    precision: str
    method: str
    reason: str
    def __init__(self, precision: _Optional[str] = ..., method: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CutPoint(_message.Message):
    __slots__ = ("index", "tensors", "bytes_per_sample")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    index: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    bytes_per_sample: int
    def __init__(self, index: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., bytes_per_sample: _Optional[int] = ...) -> None: ...

class BlockProfile(_message.Message):
    __slots__ = ("start_cut", "end_cut", "precision", "batch_size", "latency_ms", "error", "artifact_sha256", "artifact_size_bytes")
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    start_cut: int
    end_cut: int
    precision: str
    batch_size: int
    latency_ms: float
    error: str
    artifact_sha256: str
    artifact_size_bytes: int
    def __init__(self, start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., batch_size: _Optional[int] = ..., latency_ms: _Optional[float] = ..., error: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ...) -> None: ...

class BlockAccuracy(_message.Message):
    __slots__ = ("start_cut", "end_cut", "precision", "accuracy", "cosine", "agreement", "error")
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    start_cut: int
    end_cut: int
    precision: str
    accuracy: float
    cosine: float
    agreement: float
    error: str
    def __init__(self, start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., accuracy: _Optional[float] = ..., cosine: _Optional[float] = ..., agreement: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ClassBlockProfile(_message.Message):
    __slots__ = ("hardware_class", "start_cut", "end_cut", "precision", "batch_size", "latency_ms", "devices", "error")
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    START_CUT_FIELD_NUMBER: _ClassVar[int]
    END_CUT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    start_cut: int
    end_cut: int
    precision: str
    batch_size: int
    latency_ms: float
    devices: int
    error: str
    def __init__(self, hardware_class: _Optional[str] = ..., start_cut: _Optional[int] = ..., end_cut: _Optional[int] = ..., precision: _Optional[str] = ..., batch_size: _Optional[int] = ..., latency_ms: _Optional[float] = ..., devices: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class CallOverhead(_message.Message):
    __slots__ = ("batch_size", "latency_ms", "dispatch_ms")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_MS_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    latency_ms: float
    dispatch_ms: float
    def __init__(self, batch_size: _Optional[int] = ..., latency_ms: _Optional[float] = ..., dispatch_ms: _Optional[float] = ...) -> None: ...

class ClassCallOverhead(_message.Message):
    __slots__ = ("hardware_class", "batch_size", "latency_ms", "devices", "dispatch_ms")
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_MS_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    batch_size: int
    latency_ms: float
    devices: int
    dispatch_ms: float
    def __init__(self, hardware_class: _Optional[str] = ..., batch_size: _Optional[int] = ..., latency_ms: _Optional[float] = ..., devices: _Optional[int] = ..., dispatch_ms: _Optional[float] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "variants", "created_at_ms", "rejected", "cut_points", "block_profiles", "block_accuracy", "profile_inputs_sha256", "profile_inputs_size_bytes", "eval_data_sha256", "eval_data_size_bytes", "class_profiles", "call_overhead", "class_call_overhead")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CUT_POINTS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_PROFILES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_INPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROFILE_INPUTS_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATA_SHA256_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATA_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLASS_PROFILES_FIELD_NUMBER: _ClassVar[int]
    CALL_OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    CLASS_CALL_OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    variants: _containers.RepeatedCompositeFieldContainer[ModelVariant]
    created_at_ms: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedVariant]
    cut_points: _containers.RepeatedCompositeFieldContainer[CutPoint]
    block_profiles: _containers.RepeatedCompositeFieldContainer[BlockProfile]
    block_accuracy: _containers.RepeatedCompositeFieldContainer[BlockAccuracy]
    profile_inputs_sha256: str
    profile_inputs_size_bytes: int
    eval_data_sha256: str
    eval_data_size_bytes: int
    class_profiles: _containers.RepeatedCompositeFieldContainer[ClassBlockProfile]
    call_overhead: _containers.RepeatedCompositeFieldContainer[CallOverhead]
    class_call_overhead: _containers.RepeatedCompositeFieldContainer[ClassCallOverhead]
    def __init__(self, name: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[ModelVariant, _Mapping]]] = ..., created_at_ms: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedVariant, _Mapping]]] = ..., cut_points: _Optional[_Iterable[_Union[CutPoint, _Mapping]]] = ..., block_profiles: _Optional[_Iterable[_Union[BlockProfile, _Mapping]]] = ..., block_accuracy: _Optional[_Iterable[_Union[BlockAccuracy, _Mapping]]] = ..., profile_inputs_sha256: _Optional[str] = ..., profile_inputs_size_bytes: _Optional[int] = ..., eval_data_sha256: _Optional[str] = ..., eval_data_size_bytes: _Optional[int] = ..., class_profiles: _Optional[_Iterable[_Union[ClassBlockProfile, _Mapping]]] = ..., call_overhead: _Optional[_Iterable[_Union[CallOverhead, _Mapping]]] = ..., class_call_overhead: _Optional[_Iterable[_Union[ClassCallOverhead, _Mapping]]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("id", "hardware", "connected", "last_seen_ms", "desired_version", "acked_version", "assignment", "reported", "enrolled_at_ms", "last_failure", "last_failure_message", "failed_version", "records_received", "last_sequence", "records_dropped", "links", "endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    hardware: HardwareProfile
    connected: bool
    last_seen_ms: int
    desired_version: int
    acked_version: int
    assignment: Assignment
    reported: ReportedState
    enrolled_at_ms: int
    last_failure: AssignmentFailure
    last_failure_message: str
    failed_version: int
    records_received: int
    last_sequence: int
    records_dropped: int
    links: _containers.RepeatedCompositeFieldContainer[LinkMeasurement]
    endpoint: str
    def __init__(self, id: _Optional[str] = ..., hardware: _Optional[_Union[HardwareProfile, _Mapping]] = ..., connected: _Optional[bool] = ..., last_seen_ms: _Optional[int] = ..., desired_version: _Optional[int] = ..., acked_version: _Optional[int] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., reported: _Optional[_Union[ReportedState, _Mapping]] = ..., enrolled_at_ms: _Optional[int] = ..., last_failure: _Optional[_Union[AssignmentFailure, str]] = ..., last_failure_message: _Optional[str] = ..., failed_version: _Optional[int] = ..., records_received: _Optional[int] = ..., last_sequence: _Optional[int] = ..., records_dropped: _Optional[int] = ..., links: _Optional[_Iterable[_Union[LinkMeasurement, _Mapping]]] = ..., endpoint: _Optional[str] = ...) -> None: ...
