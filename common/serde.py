"""Conversion between the generated protobuf classes and the domain types in ``common.types``.

This is the ONLY module allowed to import generated code (an import-linter contract enforces it);
everything else talks protobuf through it:

* ``<message>_to_pb(domain) -> pb`` builds a message and ``<message>_from_pb(pb) -> domain`` reads
  one. Functions are named after the protobuf message (``enroll_response_*`` converts a
  ``DeviceIdentity``); messages without a domain type take and return plain values.
* Decoders validate what a peer could get wrong and raise ``InvalidArgument`` whose message starts
  with the field path (``telemetry.records[3].body: missing``); on any well-typed message they raise
  nothing else. Over-long free text from peers is truncated to ``MAX_TEXT_CHARS``. Encoders trust
  the domain values they are given.
* The gRPC service plumbing (``*Servicer``, ``*Stub``, ``add_*_to_server``) and the message
  modules as namespaces for annotations (``serde.controller_pb.EnrollRequest``).
* The typed-error <-> gRPC status mapping from ``common.grpc_errors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NoReturn, TypeVar

import grpc
import grpc.aio
from edgefleet.v1 import admin_pb2 as admin_pb
from edgefleet.v1 import admin_pb2_grpc as _admin_grpc
from edgefleet.v1 import agent_pb2 as agent_pb
from edgefleet.v1 import agent_pb2_grpc as _agent_grpc
from edgefleet.v1 import controller_pb2 as controller_pb
from edgefleet.v1 import controller_pb2_grpc as _controller_grpc
from edgefleet.v1 import types_pb2 as types_pb
from edgefleet.v1.admin_pb2_grpc import AdminServiceServicer
from edgefleet.v1.agent_pb2_grpc import AgentServiceServicer
from edgefleet.v1.controller_pb2_grpc import ControllerServiceServicer
from google.protobuf.message import Message as _PbMessage

from common.errors import InvalidArgument
from common.grpc_errors import (
    ERROR_CODE_KEY,
    RETRY_AFTER_KEY,
    abort_with_error,
    abort_with_error_async,
    error_details,
    error_from_rpc_error,
    error_to_status,
    error_trailers,
    status_to_error,
)
from common.limits import (
    MAX_INFER_INPUT_BYTES,
    MAX_MODEL_BYTES,
    MAX_TELEMETRY_BATCH,
    MAX_TEXT_CHARS,
)
from common.types import (
    DEFAULT_VARIANT,
    HARDWARE_CLASS_RE,
    NAME_RE,
    AgentMessage,
    AgentStatus,
    ArtifactChunk,
    ArtifactManifest,
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    AssignResult,
    ControllerMessage,
    CreatedToken,
    DataType,
    Device,
    DeviceEvent,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    ImportModelHeader,
    InferenceRecord,
    InferRequest,
    InferResponse,
    Model,
    ModelVariant,
    Outcome,
    ReportedState,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Tensor,
    TensorSpec,
    Welcome,
)

__all__ = [
    "ERROR_CODE_KEY",
    "MAX_TENSOR_RANK",
    "RETRY_AFTER_KEY",
    "AdminServiceServicer",
    "AdminServiceStub",
    "AgentServiceServicer",
    "AgentServiceStub",
    "ControllerServiceServicer",
    "ControllerServiceStub",
    "abort_with_error",
    "abort_with_error_async",
    "add_AdminServiceServicer_to_server",
    "add_AgentServiceServicer_to_server",
    "add_ControllerServiceServicer_to_server",
    "admin_pb",
    "agent_message_from_pb",
    "agent_message_to_pb",
    "agent_pb",
    "agent_status_from_pb",
    "agent_status_to_pb",
    "artifact_chunk_from_pb",
    "artifact_chunk_to_pb",
    "artifact_manifest_from_pb",
    "artifact_manifest_to_pb",
    "assign_request_from_pb",
    "assign_request_to_pb",
    "assign_response_from_pb",
    "assign_response_to_pb",
    "assign_result_from_pb",
    "assign_result_to_pb",
    "assignment_ack_from_pb",
    "assignment_ack_to_pb",
    "assignment_failure_from_pb",
    "assignment_failure_to_pb",
    "assignment_from_pb",
    "assignment_to_pb",
    "controller_message_from_pb",
    "controller_message_to_pb",
    "controller_pb",
    "create_token_request_from_pb",
    "create_token_request_to_pb",
    "create_token_response_from_pb",
    "create_token_response_to_pb",
    "created_token_from_pb",
    "created_token_to_pb",
    "data_type_from_pb",
    "data_type_to_pb",
    "device_event_from_pb",
    "device_event_to_pb",
    "device_from_pb",
    "device_identity_from_pb",
    "device_identity_to_pb",
    "device_to_pb",
    "enroll_request_from_pb",
    "enroll_request_to_pb",
    "enroll_response_from_pb",
    "enroll_response_to_pb",
    "error_details",
    "error_from_rpc_error",
    "error_to_status",
    "error_trailers",
    "fetch_artifact_request_from_pb",
    "fetch_artifact_request_to_pb",
    "get_device_request_from_pb",
    "get_device_request_to_pb",
    "get_status_request_to_pb",
    "hardware_profile_from_pb",
    "hardware_profile_to_pb",
    "heartbeat_from_pb",
    "heartbeat_to_pb",
    "hello_from_pb",
    "hello_to_pb",
    "import_model_header_from_pb",
    "import_model_header_to_pb",
    "import_model_request_from_pb",
    "import_model_request_to_pb",
    "infer_request_from_pb",
    "infer_request_to_pb",
    "infer_response_from_pb",
    "infer_response_to_pb",
    "inference_record_from_pb",
    "inference_record_to_pb",
    "list_devices_request_to_pb",
    "list_devices_response_from_pb",
    "list_devices_response_to_pb",
    "list_models_request_to_pb",
    "list_models_response_from_pb",
    "list_models_response_to_pb",
    "model_from_pb",
    "model_to_pb",
    "model_variant_from_pb",
    "model_variant_to_pb",
    "outcome_from_pb",
    "outcome_to_pb",
    "reported_state_from_pb",
    "reported_state_to_pb",
    "status_to_error",
    "telemetry_ack_from_pb",
    "telemetry_ack_to_pb",
    "telemetry_batch_from_pb",
    "telemetry_batch_to_pb",
    "telemetry_record_from_pb",
    "telemetry_record_to_pb",
    "tensor_from_pb",
    "tensor_spec_from_pb",
    "tensor_spec_to_pb",
    "tensor_to_pb",
    "types_pb",
    "welcome_from_pb",
    "welcome_to_pb",
]

#: Most dimensions a tensor or tensor spec may have.
MAX_TENSOR_RANK: Final = 64
_HEX = frozenset("0123456789abcdef")

_E = TypeVar("_E")

# --- service plumbing --------------------------------------------------------------------------
# The generated stubs and add_* functions are untyped (mypy flags calling them); these typed wrappers
# behave exactly the same. Stub methods (stub.Enroll, ...) stay Any; the servicer bases are re-exported.

_GrpcServer = grpc.Server | grpc.aio.Server
_GrpcChannel = grpc.Channel | grpc.aio.Channel
_Adder = Callable[[object, object], None]
_controller_stub_init: Final[Callable[[_controller_grpc.ControllerServiceStub, _GrpcChannel], None]] = (
    _controller_grpc.ControllerServiceStub.__init__
)
_admin_stub_init: Final[Callable[[_admin_grpc.AdminServiceStub, _GrpcChannel], None]] = (
    _admin_grpc.AdminServiceStub.__init__
)
_agent_stub_init: Final[Callable[[_agent_grpc.AgentServiceStub, _GrpcChannel], None]] = (
    _agent_grpc.AgentServiceStub.__init__
)
_add_controller: Final[_Adder] = _controller_grpc.add_ControllerServiceServicer_to_server
_add_admin: Final[_Adder] = _admin_grpc.add_AdminServiceServicer_to_server
_add_agent: Final[_Adder] = _agent_grpc.add_AgentServiceServicer_to_server


class ControllerServiceStub(_controller_grpc.ControllerServiceStub):
    """Client for ControllerService: ``Enroll``, ``Connect``, ``FetchArtifact`` (sync or asyncio channel)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _controller_stub_init(self, channel)


class AdminServiceStub(_admin_grpc.AdminServiceStub):
    """Client for AdminService (sync or asyncio channel)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _admin_stub_init(self, channel)


class AgentServiceStub(_agent_grpc.AgentServiceStub):
    """Client for AgentService: ``Infer``, ``GetStatus`` (sync or asyncio channel)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _agent_stub_init(self, channel)


def add_ControllerServiceServicer_to_server(servicer: ControllerServiceServicer, server: _GrpcServer) -> None:
    _add_controller(servicer, server)


def add_AdminServiceServicer_to_server(servicer: AdminServiceServicer, server: _GrpcServer) -> None:
    _add_admin(servicer, server)


def add_AgentServiceServicer_to_server(servicer: AgentServiceServicer, server: _GrpcServer) -> None:
    _add_agent(servicer, server)


# --- validation helpers ------------------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise InvalidArgument(f"{path}: {problem}")


def _at(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _text(value: str) -> str:
    return value[:MAX_TEXT_CHARS]


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def _nonempty(path: str, value: str) -> str:
    if not value:
        _fail(path, "empty")
    if len(value) > MAX_TEXT_CHARS:
        _fail(path, f"too long ({len(value)} characters, at most {MAX_TEXT_CHARS})")
    return value


def _name(path: str, value: str, *, required: bool = True) -> str:
    """A device id, model name or variant (``NAME_RE``); ``required=False`` also accepts ''."""
    if not value:
        if required:
            _fail(path, "empty")
        return value
    if not NAME_RE.fullmatch(value):
        _fail(
            path,
            f"invalid name {_show(value)}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
        )
    return value


def _hardware_class(path: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            _fail(path, "empty")
        return value
    if not HARDWARE_CLASS_RE.fullmatch(value):
        _fail(path, f"invalid hardware class {_show(value)}: use a lowercase DNS label")
    return value


def _sha256(path: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            _fail(path, "empty")
        return value
    if len(value) != 64 or not _HEX.issuperset(value):
        _fail(path, f"{_show(value)} is not a lowercase hex sha256")
    return value


def _latency(path: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        _fail(path, f"{value!r} is not a finite non-negative number")
    return value


def _enum(path: str, value: int, table: Mapping[int, _E]) -> _E:
    """A required enum: UNSPECIFIED (0) and numbers this version does not know are errors."""
    if value == 0:
        _fail(path, "unspecified")
    found = table.get(value)
    if found is None:
        _fail(path, f"unknown value {value}")
    return found


def _required_message(pb: _PbMessage, field: str, path: str) -> None:
    if not pb.HasField(field):
        _fail(_at(path, field), "missing")


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

_OUTCOME_TO_PB: Final[dict[Outcome, controller_pb.Outcome]] = {
    Outcome.OK: controller_pb.OUTCOME_OK,
    Outcome.INVALID_INPUT: controller_pb.OUTCOME_INVALID_INPUT,
    Outcome.NO_MODEL: controller_pb.OUTCOME_NO_MODEL,
    Outcome.ERROR: controller_pb.OUTCOME_ERROR,
}
_OUTCOME_FROM_PB: Final[dict[int, Outcome]] = {int(v): k for k, v in _OUTCOME_TO_PB.items()}


def data_type_to_pb(dtype: DataType) -> types_pb.DataType:
    return _DTYPE_TO_PB[dtype]


def data_type_from_pb(value: int, *, path: str = "dtype") -> DataType:
    return _enum(path, value, _DTYPE_FROM_PB)


def assignment_failure_to_pb(failure: AssignmentFailure | None) -> types_pb.AssignmentFailure:
    return types_pb.ASSIGNMENT_FAILURE_UNSPECIFIED if failure is None else _FAILURE_TO_PB[failure]


def assignment_failure_from_pb(value: int, *, path: str = "failure") -> AssignmentFailure | None:
    """UNSPECIFIED means "no failure" (None); unknown numbers are errors."""
    return None if value == 0 else _enum(path, value, _FAILURE_FROM_PB)


def outcome_to_pb(outcome: Outcome) -> controller_pb.Outcome:
    return _OUTCOME_TO_PB[outcome]


def outcome_from_pb(value: int, *, path: str = "outcome") -> Outcome:
    return _enum(path, value, _OUTCOME_FROM_PB)


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
    return types_pb.Tensor(
        name=tensor.name, dtype=_DTYPE_TO_PB[tensor.dtype], shape=tensor.shape, data=tensor.data
    )


def tensor_from_pb(pb: types_pb.Tensor, *, path: str = "tensor") -> Tensor:
    """Errors name the tensor (``tensor 'input': dtype unspecified``); a nameless one is ``<path>.name: empty``."""
    name = _nonempty(_at(path, "name"), pb.name)
    label = f"tensor {_show(name)}"
    if pb.dtype == 0:
        _fail(label, "dtype unspecified")
    dtype = _DTYPE_FROM_PB.get(pb.dtype)
    if dtype is None:
        _fail(label, f"dtype {pb.dtype} unknown")
    shape = _shape(label, pb.shape, lowest=0)
    expected = math.prod(shape) * dtype.itemsize
    if len(pb.data) != expected:
        _fail(
            label, f"data is {len(pb.data)} bytes but shape {list(shape)} of {dtype.value} needs {expected}"
        )
    return Tensor(name=name, dtype=dtype, shape=shape, data=pb.data)


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
    return types_pb.Assignment(
        version=a.version,
        model_name=a.model_name,
        variant=a.variant,
        artifact_sha256=a.artifact_sha256,
        artifact_size_bytes=a.artifact_size_bytes,
    )


def assignment_from_pb(pb: types_pb.Assignment, *, path: str = "assignment") -> Assignment:
    """An empty model_name means "run nothing"; otherwise variant and artifact_sha256 are required."""
    runs_model = bool(pb.model_name)
    return Assignment(
        version=pb.version,
        model_name=_name(_at(path, "model_name"), pb.model_name, required=False),
        variant=_name(_at(path, "variant"), pb.variant, required=runs_model),
        artifact_sha256=_sha256(_at(path, "artifact_sha256"), pb.artifact_sha256, required=runs_model),
        artifact_size_bytes=pb.artifact_size_bytes,
    )


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
    )


def model_variant_from_pb(pb: types_pb.ModelVariant, *, path: str = "variant") -> ModelVariant:
    return ModelVariant(
        variant=_name(_at(path, "variant"), pb.variant),
        sha256=_sha256(_at(path, "sha256"), pb.sha256),
        size_bytes=pb.size_bytes,
        inputs=_specs(_at(path, "inputs"), pb.inputs),
        outputs=_specs(_at(path, "outputs"), pb.outputs),
        created_at_ms=pb.created_at_ms,
    )


def model_to_pb(m: Model) -> types_pb.Model:
    return types_pb.Model(
        name=m.name, variants=[model_variant_to_pb(v) for v in m.variants], created_at_ms=m.created_at_ms
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
        name=_name(_at(path, "name"), pb.name), variants=tuple(variants), created_at_ms=pb.created_at_ms
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
    )


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
        model_sha256=r.model_sha256, latency_ms=r.latency_ms, outcome=_OUTCOME_TO_PB[r.outcome], error=r.error
    )


def inference_record_from_pb(
    pb: controller_pb.InferenceRecord, *, path: str = "inference"
) -> InferenceRecord:
    return InferenceRecord(
        model_sha256=_sha256(_at(path, "model_sha256"), pb.model_sha256, required=False),
        latency_ms=_latency(_at(path, "latency_ms"), pb.latency_ms),
        outcome=outcome_from_pb(pb.outcome, path=_at(path, "outcome")),
        error=_text(pb.error),
    )


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
    )


def hello_from_pb(pb: controller_pb.Hello, *, path: str = "hello") -> Hello:
    _required_message(pb, "hardware", path)
    return Hello(
        hardware=hardware_profile_from_pb(pb.hardware, path=_at(path, "hardware")),
        reported=reported_state_from_pb(pb.reported, path=_at(path, "reported")),
        telemetry_watermark=pb.telemetry_watermark,
        records_dropped=pb.records_dropped,
    )


def heartbeat_to_pb(h: Heartbeat) -> controller_pb.Heartbeat:
    return controller_pb.Heartbeat(sent_at_ms=h.sent_at_ms)


def heartbeat_from_pb(pb: controller_pb.Heartbeat, *, path: str = "heartbeat") -> Heartbeat:
    return Heartbeat(sent_at_ms=pb.sent_at_ms)


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


def agent_message_to_pb(msg: AgentMessage) -> controller_pb.AgentMessage:
    if isinstance(msg, Hello):
        return controller_pb.AgentMessage(hello=hello_to_pb(msg))
    if isinstance(msg, Heartbeat):
        return controller_pb.AgentMessage(heartbeat=heartbeat_to_pb(msg))
    if isinstance(msg, TelemetryBatch):
        return controller_pb.AgentMessage(telemetry=telemetry_batch_to_pb(msg))
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


def controller_message_to_pb(msg: ControllerMessage) -> controller_pb.ControllerMessage:
    if isinstance(msg, Welcome):
        return controller_pb.ControllerMessage(welcome=welcome_to_pb(msg))
    if isinstance(msg, Assignment):
        return controller_pb.ControllerMessage(assignment=assignment_to_pb(msg))
    return controller_pb.ControllerMessage(telemetry_ack=telemetry_ack_to_pb(msg))


def controller_message_from_pb(pb: controller_pb.ControllerMessage) -> ControllerMessage:
    which = pb.WhichOneof("body")
    if which == "welcome":
        return welcome_from_pb(pb.welcome, path="welcome")
    if which == "assignment":
        return assignment_from_pb(pb.assignment, path="assignment")
    if which == "telemetry_ack":
        return telemetry_ack_from_pb(pb.telemetry_ack, path="telemetry_ack")
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


# --- admin.proto -------------------------------------------------------------------------------


def create_token_request_to_pb(
    ttl_seconds: int, uses: int, description: str = ""
) -> admin_pb.CreateTokenRequest:
    return admin_pb.CreateTokenRequest(ttl_seconds=ttl_seconds, uses=uses, description=description)


def create_token_request_from_pb(pb: admin_pb.CreateTokenRequest) -> tuple[int, int, str]:
    """``(ttl_seconds, uses, description)``; zeros are passed through (the service picks defaults)."""
    return pb.ttl_seconds, pb.uses, _text(pb.description)


def create_token_response_to_pb(t: CreatedToken) -> admin_pb.CreateTokenResponse:
    return admin_pb.CreateTokenResponse(
        token_id=t.token_id, token=t.token, expires_at_ms=t.expires_at_ms, uses=t.uses
    )


def create_token_response_from_pb(pb: admin_pb.CreateTokenResponse) -> CreatedToken:
    return CreatedToken(
        token_id=_nonempty("token_id", pb.token_id),
        token=_nonempty("token", pb.token),
        expires_at_ms=pb.expires_at_ms,
        uses=pb.uses,
    )


def list_devices_request_to_pb() -> admin_pb.ListDevicesRequest:
    return admin_pb.ListDevicesRequest()


def list_devices_response_to_pb(devices: Iterable[Device]) -> admin_pb.ListDevicesResponse:
    return admin_pb.ListDevicesResponse(devices=[device_to_pb(d) for d in devices])


def list_devices_response_from_pb(pb: admin_pb.ListDevicesResponse) -> tuple[Device, ...]:
    return tuple(device_from_pb(d, path=f"devices[{i}]") for i, d in enumerate(pb.devices))


def get_device_request_to_pb(device_id: str) -> admin_pb.GetDeviceRequest:
    return admin_pb.GetDeviceRequest(device_id=device_id)


def get_device_request_from_pb(pb: admin_pb.GetDeviceRequest) -> str:
    return _name("device_id", pb.device_id)


def import_model_header_to_pb(h: ImportModelHeader) -> admin_pb.ImportModelHeader:
    return admin_pb.ImportModelHeader(name=h.name, variant=h.variant, size_bytes=h.size_bytes)


def import_model_header_from_pb(pb: admin_pb.ImportModelHeader, *, path: str = "header") -> ImportModelHeader:
    """An empty variant means ``DEFAULT_VARIANT``; size_bytes 0 means "not announced"."""
    if pb.size_bytes > MAX_MODEL_BYTES:
        _fail(_at(path, "size_bytes"), f"{pb.size_bytes} bytes, at most {MAX_MODEL_BYTES}")
    return ImportModelHeader(
        name=_name(_at(path, "name"), pb.name),
        variant=_name(_at(path, "variant"), pb.variant) if pb.variant else DEFAULT_VARIANT,
        size_bytes=pb.size_bytes,
    )


def import_model_request_to_pb(item: ImportModelHeader | bytes) -> admin_pb.ImportModelRequest:
    """The first message of the upload carries the header, later ones the bytes."""
    if isinstance(item, ImportModelHeader):
        return admin_pb.ImportModelRequest(header=import_model_header_to_pb(item))
    return admin_pb.ImportModelRequest(data=bytes(item))


def import_model_request_from_pb(pb: admin_pb.ImportModelRequest) -> ImportModelHeader | bytes:
    which = pb.WhichOneof("body")
    if which == "header":
        return import_model_header_from_pb(pb.header, path="header")
    if which == "data":
        return pb.data
    raise InvalidArgument("import model request: empty (no body set)")


def list_models_request_to_pb() -> admin_pb.ListModelsRequest:
    return admin_pb.ListModelsRequest()


def list_models_response_to_pb(models: Iterable[Model]) -> admin_pb.ListModelsResponse:
    return admin_pb.ListModelsResponse(models=[model_to_pb(m) for m in models])


def list_models_response_from_pb(pb: admin_pb.ListModelsResponse) -> tuple[Model, ...]:
    return tuple(model_from_pb(m, path=f"models[{i}]") for i, m in enumerate(pb.models))


def assign_request_to_pb(
    device_id: str, model_name: str, variant: str = DEFAULT_VARIANT
) -> admin_pb.AssignRequest:
    return admin_pb.AssignRequest(device_id=device_id, model_name=model_name, variant=variant)


def assign_request_from_pb(pb: admin_pb.AssignRequest) -> tuple[str, str, str]:
    """``(device_id, model_name, variant)``; an empty variant means ``DEFAULT_VARIANT``."""
    return (
        _name("device_id", pb.device_id),
        _name("model_name", pb.model_name),
        _name("variant", pb.variant) if pb.variant else DEFAULT_VARIANT,
    )


def assign_response_to_pb(r: AssignResult) -> admin_pb.AssignResponse:
    return admin_pb.AssignResponse(device=device_to_pb(r.device), changed=r.changed)


def assign_response_from_pb(pb: admin_pb.AssignResponse) -> AssignResult:
    _required_message(pb, "device", "")
    return AssignResult(device=device_from_pb(pb.device, path="device"), changed=pb.changed)


# --- agent.proto -------------------------------------------------------------------------------


def _tensors(path: str, pbs: Iterable[types_pb.Tensor]) -> tuple[Tensor, ...]:
    tensors: list[Tensor] = []
    names: set[str] = set()
    for i, pb in enumerate(pbs):
        tensor = tensor_from_pb(pb, path=f"{path}[{i}]")
        if tensor.name in names:
            _fail(f"{path}[{i}]", f"duplicate tensor name {_show(tensor.name)}")
        names.add(tensor.name)
        tensors.append(tensor)
    return tuple(tensors)


def infer_request_to_pb(r: InferRequest) -> agent_pb.InferRequest:
    return agent_pb.InferRequest(inputs=[tensor_to_pb(t) for t in r.inputs], output_names=r.output_names)


def infer_request_from_pb(pb: agent_pb.InferRequest) -> InferRequest:
    total = sum(len(t.data) for t in pb.inputs)
    if total > MAX_INFER_INPUT_BYTES:
        _fail("inputs", f"{total} bytes of tensor data, at most {MAX_INFER_INPUT_BYTES}")
    output_names: list[str] = []
    for i, name in enumerate(pb.output_names):
        _nonempty(f"output_names[{i}]", name)
        if name in output_names:
            _fail(f"output_names[{i}]", f"duplicate {_show(name)}")
        output_names.append(name)
    return InferRequest(inputs=_tensors("inputs", pb.inputs), output_names=tuple(output_names))


def infer_response_to_pb(r: InferResponse) -> agent_pb.InferResponse:
    return agent_pb.InferResponse(
        outputs=[tensor_to_pb(t) for t in r.outputs], model_sha256=r.model_sha256, latency_ms=r.latency_ms
    )


def infer_response_from_pb(pb: agent_pb.InferResponse) -> InferResponse:
    return InferResponse(
        outputs=_tensors("outputs", pb.outputs),
        model_sha256=_sha256("model_sha256", pb.model_sha256),
        latency_ms=_latency("latency_ms", pb.latency_ms),
    )


def get_status_request_to_pb() -> agent_pb.GetStatusRequest:
    return agent_pb.GetStatusRequest()


def agent_status_to_pb(s: AgentStatus) -> agent_pb.AgentStatus:
    return agent_pb.AgentStatus(
        device_id=s.device_id,
        hardware_class=s.hardware_class,
        connected=s.connected,
        reported=reported_state_to_pb(s.reported),
        inputs=[tensor_spec_to_pb(t) for t in s.inputs],
        outputs=[tensor_spec_to_pb(t) for t in s.outputs],
        pending_telemetry=s.pending_telemetry,
    )


def agent_status_from_pb(pb: agent_pb.AgentStatus) -> AgentStatus:
    """device_id and hardware_class may be empty (an agent that has not enrolled yet)."""
    return AgentStatus(
        device_id=_name("device_id", pb.device_id, required=False),
        hardware_class=_hardware_class("hardware_class", pb.hardware_class, required=False),
        connected=pb.connected,
        reported=reported_state_from_pb(pb.reported, path="reported"),
        inputs=_specs("inputs", pb.inputs),
        outputs=_specs("outputs", pb.outputs),
        pending_telemetry=pb.pending_telemetry,
    )


# --- aliases named after the domain type -------------------------------------------------------

device_identity_to_pb = enroll_response_to_pb
device_identity_from_pb = enroll_response_from_pb
created_token_to_pb = create_token_response_to_pb
created_token_from_pb = create_token_response_from_pb
assign_result_to_pb = assign_response_to_pb
assign_result_from_pb = assign_response_from_pb
