"""agent.proto: local inference and status."""

from __future__ import annotations

from collections.abc import Iterable

from edgefleet.v1 import agent_pb2 as agent_pb
from edgefleet.v1 import types_pb2 as types_pb

from common.limits import MAX_INFER_INPUT_BYTES
from common.serde._types import (
    _specs,
    reported_state_from_pb,
    reported_state_to_pb,
    tensor_from_pb,
    tensor_spec_to_pb,
    tensor_to_pb,
)
from common.serde._validate import _fail, _hardware_class, _latency, _name, _nonempty, _sha256, _show
from common.types import AgentStatus, InferRequest, InferResponse, Tensor

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
