"""agent.proto: local inference and status (AgentService), and segments for peers (SegmentService)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import grpc
from edgefleet.v1 import agent_pb2 as agent_pb
from edgefleet.v1 import types_pb2 as types_pb

from common.errors import EdgefleetError, TransientError
from common.grpc_errors import error_details, error_to_status, status_to_error
from common.limits import MAX_INFER_INPUT_BYTES, MAX_ROUTE_HOPS
from common.serde._types import (
    TIERS,
    _specs,
    hop_timing_fields,
    hop_timing_to_pb,
    hops_from_pb,
    reported_state_from_pb,
    reported_state_to_pb,
    segment_endpoint_to_pb,
    segment_endpoints_from_pb,
    tensor_fields,
    tensor_from_pb,
    tensor_spec_to_pb,
    tensor_to_pb,
)
from common.serde._validate import _fail, _hardware_class, _latency, _name, _nonempty, _sha256, _show, _text
from common.types import (
    AgentStatus,
    InferRequest,
    InferResponse,
    RouteHop,
    RunSegmentRequest,
    RunSegmentResponse,
    Tensor,
)

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


_SERVING_TIERS = frozenset(TIERS[1:])


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
        outputs=[tensor_to_pb(t) for t in r.outputs],
        model_sha256=r.model_sha256,
        latency_ms=r.latency_ms,
        hops=[hop_timing_to_pb(h) for h in r.hops],
        path=r.path,
        fallback_reason=r.fallback_reason,
    )


def infer_response_from_pb(pb: agent_pb.InferResponse) -> InferResponse:
    if pb.path not in ("", "local", "partitioned", "fallback"):
        _fail("path", f"unknown path {_show(pb.path)}")
    return InferResponse(
        outputs=_tensors("outputs", pb.outputs),
        model_sha256=_sha256("model_sha256", pb.model_sha256),
        latency_ms=_latency("latency_ms", pb.latency_ms),
        hops=hops_from_pb("hops", pb.hops),
        path=pb.path or "local",
        fallback_reason=_text(pb.fallback_reason),
    )


# --- agent.proto: SegmentService ---------------------------------------------------------------


def run_segment_request_to_pb(r: RunSegmentRequest) -> agent_pb.RunSegmentRequest:
    return agent_pb.RunSegmentRequest(
        segment_sha256=r.segment_sha256,
        inputs=[tensor_to_pb(t) for t in r.inputs],
        route=[
            agent_pb.RouteHop(
                segment_sha256=h.segment_sha256,
                endpoints=[segment_endpoint_to_pb(e) for e in h.endpoints],
                tier=h.tier,
                pool=h.pool,
            )
            for h in r.route
        ],
        priority=r.priority,
        origin_device=r.origin_device,
        request_id=r.request_id,
        output_names=r.output_names,
        tier=r.tier,
        budget_ms=r.budget_ms,
    )


def run_segment_request_from_pb(pb: agent_pb.RunSegmentRequest) -> RunSegmentRequest:
    # Runs for every served request: each field is read once (every read makes a new Python
    # object; a bytes field, a copy), so the inputs are decoded first and their size taken from that.
    # (ByteSize() is no shortcut: upb serialises the message to size it.)
    inputs = _tensors("inputs", pb.inputs)
    total = sum(len(t.data) for t in inputs)
    if total > MAX_INFER_INPUT_BYTES:
        _fail("inputs", f"{total} bytes of tensor data, at most {MAX_INFER_INPUT_BYTES}")
    hops = pb.route
    if len(hops) > MAX_ROUTE_HOPS:
        _fail("route", f"{len(hops)} hops, at most {MAX_ROUTE_HOPS}")
    route: list[RouteHop] = []
    for i, h in enumerate(hops) if hops else ():  # (a last hop has none: no loop set up for it)
        at = f"route[{i}]"
        if h.tier not in TIERS[1:]:
            _fail(f"{at}.tier", f"{_show(h.tier)}: a route goes to edge or cloud")
        endpoints = segment_endpoints_from_pb(h.endpoints, path=f"{at}.endpoints")
        if not endpoints:
            _fail(f"{at}.endpoints", "empty: nobody to send it to")
        pool = _name(f"{at}.pool", h.pool, required=False)
        route.append(RouteHop(_sha256(f"{at}.segment_sha256", h.segment_sha256), endpoints, h.tier, pool))
    output_names: list[str] = []
    names = pb.output_names
    for i, name in enumerate(names) if names else ():
        _nonempty(f"output_names[{i}]", name)
        output_names.append(name)
    tier = pb.tier
    if tier not in _SERVING_TIERS:
        _fail("tier", f"{_show(tier)}: a segment is run for others on an edge or cloud tier")
    return RunSegmentRequest(
        tier=tier,
        segment_sha256=_sha256("segment_sha256", pb.segment_sha256),
        inputs=inputs,
        route=tuple(route),
        priority=pb.priority,
        origin_device=_name("origin_device", pb.origin_device, required=False),
        request_id=_text(pb.request_id),
        output_names=tuple(dict.fromkeys(output_names)) if output_names else (),
        budget_ms=_latency("budget_ms", pb.budget_ms),
    )


def run_segment_response_to_pb(r: RunSegmentResponse) -> agent_pb.RunSegmentResponse:
    pb = agent_pb.RunSegmentResponse()
    _fill_run_segment_response(pb, r)
    return pb


def _fill_run_segment_response(pb: agent_pb.RunSegmentResponse, r: RunSegmentResponse) -> None:
    # Filled in place (``add``), not built from sub-messages that are then copied in: half the time,
    # and this is every served request's answer.
    for t in r.outputs:
        pb.outputs.add(**tensor_fields(t))
    for h in r.hops:
        pb.hops.add(**hop_timing_fields(h))


def run_segment_response_from_pb(pb: agent_pb.RunSegmentResponse) -> RunSegmentResponse:
    return RunSegmentResponse(outputs=_tensors("outputs", pb.outputs), hops=hops_from_pb("hops", pb.hops))


def segment_result_to_pb(outcome: RunSegmentResponse | BaseException) -> agent_pb.SegmentResult:
    """One answer on a RunSegments stream: the response, or the error as a unary call would have
    ended with it (status, ``EdgefleetError.code``, message, retry-after; an exception that is not
    ours is INTERNAL with a fixed text, as ``abort_with_error`` does)."""
    if isinstance(outcome, RunSegmentResponse):
        result = agent_pb.SegmentResult()
        result.response.SetInParent()  # the oneof says "response" even when it holds nothing
        _fill_run_segment_response(result.response, outcome)
        return result
    error = agent_pb.SegmentError(
        status=error_to_status(outcome).value[0],
        code=outcome.code if isinstance(outcome, EdgefleetError) else EdgefleetError.code,
        message=error_details(outcome),
    )
    retry_after = outcome.retry_after if isinstance(outcome, TransientError) else None
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        error.retry_after_s = retry_after
    return agent_pb.SegmentResult(error=error)


def segment_result_from_pb(
    pb: agent_pb.SegmentResult,
) -> RunSegmentResponse | tuple[grpc.StatusCode, EdgefleetError]:
    """The response, or (the status, the typed error) the server answered with; a result that is
    neither (or an unknown status) is the server's bug, read as INTERNAL."""
    failure = segment_result_failure(pb)
    return run_segment_response_from_pb(pb.response) if failure is None else failure


def segment_result_response(pb: agent_pb.SegmentResult) -> agent_pb.RunSegmentResponse:
    """The response message a result holds (``segment_result_failure`` said None), undecoded: the
    caller decodes it once, as it decodes a unary call's."""
    return pb.response


def segment_result_failure(pb: agent_pb.SegmentResult) -> tuple[grpc.StatusCode, EdgefleetError] | None:
    """None when the result holds a response; else (the status, the typed error) the server answered
    with — a result that is neither (or says OK) is the server's bug, read as INTERNAL/UNKNOWN."""
    which = pb.WhichOneof("result")
    if which == "response":
        return None
    if which != "error":
        return grpc.StatusCode.INTERNAL, EdgefleetError("the peer answered an empty SegmentResult")
    e = pb.error
    status = _STATUS_BY_VALUE.get(e.status, grpc.StatusCode.UNKNOWN)
    if status is grpc.StatusCode.OK:
        status = grpc.StatusCode.UNKNOWN  # an error that says OK is not one we can trust
    retry_after = e.retry_after_s if e.HasField("retry_after_s") else None
    if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
        retry_after = None
    return status, status_to_error(status, e.message or None, retry_after, error_code=e.code or None)


_STATUS_BY_VALUE = {s.value[0]: s for s in grpc.StatusCode}


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
