from edgefleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferRequest(_message.Message):
    __slots__ = ("inputs", "output_names")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    output_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, inputs: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., output_names: _Optional[_Iterable[str]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("outputs", "model_sha256", "latency_ms", "hops", "path", "fallback_reason")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    model_sha256: str
    latency_ms: float
    hops: _containers.RepeatedCompositeFieldContainer[_types_pb2.HopTiming]
    path: str
    fallback_reason: str
    def __init__(self, outputs: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., model_sha256: _Optional[str] = ..., latency_ms: _Optional[float] = ..., hops: _Optional[_Iterable[_Union[_types_pb2.HopTiming, _Mapping]]] = ..., path: _Optional[str] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class RunSegmentRequest(_message.Message):
    __slots__ = ("segment_sha256", "inputs", "route", "priority", "origin_device", "request_id", "output_names", "tier", "budget_ms")
    SEGMENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    segment_sha256: str
    inputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    route: _containers.RepeatedCompositeFieldContainer[RouteHop]
    priority: int
    origin_device: str
    request_id: str
    output_names: _containers.RepeatedScalarFieldContainer[str]
    tier: str
    budget_ms: float
    def __init__(self, segment_sha256: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., route: _Optional[_Iterable[_Union[RouteHop, _Mapping]]] = ..., priority: _Optional[int] = ..., origin_device: _Optional[str] = ..., request_id: _Optional[str] = ..., output_names: _Optional[_Iterable[str]] = ..., tier: _Optional[str] = ..., budget_ms: _Optional[float] = ...) -> None: ...

class SegmentResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: RunSegmentResponse
    error: SegmentError
    def __init__(self, response: _Optional[_Union[RunSegmentResponse, _Mapping]] = ..., error: _Optional[_Union[SegmentError, _Mapping]] = ...) -> None: ...

class SegmentError(_message.Message):
    __slots__ = ("status", "code", "message", "retry_after_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    status: int
    code: str
    message: str
    retry_after_s: float
    def __init__(self, status: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class RouteHop(_message.Message):
    __slots__ = ("segment_sha256", "endpoints", "tier", "pool")
    SEGMENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    segment_sha256: str
    endpoints: _containers.RepeatedCompositeFieldContainer[_types_pb2.SegmentEndpoint]
    tier: str
    pool: str
    def __init__(self, segment_sha256: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[_types_pb2.SegmentEndpoint, _Mapping]]] = ..., tier: _Optional[str] = ..., pool: _Optional[str] = ...) -> None: ...

class RunSegmentResponse(_message.Message):
    __slots__ = ("outputs", "hops")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Tensor]
    hops: _containers.RepeatedCompositeFieldContainer[_types_pb2.HopTiming]
    def __init__(self, outputs: _Optional[_Iterable[_Union[_types_pb2.Tensor, _Mapping]]] = ..., hops: _Optional[_Iterable[_Union[_types_pb2.HopTiming, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("device_id", "hardware_class", "connected", "reported", "inputs", "outputs", "pending_telemetry")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hardware_class: str
    connected: bool
    reported: _types_pb2.ReportedState
    inputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_types_pb2.TensorSpec]
    pending_telemetry: int
    def __init__(self, device_id: _Optional[str] = ..., hardware_class: _Optional[str] = ..., connected: _Optional[bool] = ..., reported: _Optional[_Union[_types_pb2.ReportedState, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_types_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_types_pb2.TensorSpec, _Mapping]]] = ..., pending_telemetry: _Optional[int] = ...) -> None: ...
