"""SegmentService: peers offload part of a model here (this agent is an edge node or a cloud worker).

Thin: decode; refuse at once what cannot be answered well — a segment this agent does not serve (a
stale sender: its plan is older than ours, so it must not be answered with the wrong model), inputs
that do not match the segment, a budget that is already spent or that the batch queue says cannot be
met; run the segment in its batch (``agent.serving.batcher``); forward the outputs to the next hop
when the route goes on; answer with the outputs and this hop's timing first.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import grpc

from agent.partition import budget_deadline, decode
from common import serde
from common.errors import DeadlineExceeded, EdgefleetError, InvalidArgument, PermanentError
from common.tensors import to_tensor
from common.types import HopTiming, RunSegmentResponse

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class UnknownSegment(PermanentError):
    """This agent does not serve that segment (the sender's plan is stale, or ours is newer)."""

    code = "unknown_segment"


class SegmentApi(serde.SegmentServiceServicer):
    def __init__(self, daemon: AgentDaemon) -> None:
        self._daemon = daemon

    async def RunSegment(self, request: Any, context: Context) -> Any:
        host = self._daemon.segments
        try:
            req = serde.run_segment_request_from_pb(request)
            deadline = budget_deadline(context.time_remaining())
            if deadline <= time.monotonic():
                raise DeadlineExceeded("the request arrived with its budget spent")
            served = host.served(req.segment_sha256)
            if served is None:
                raise UnknownSegment(
                    f"this device does not serve segment {req.segment_sha256[:12]}: the sender's plan is stale "
                    "(or this device's is newer); ask the controller"
                )
            arrays = {t.name: decode(t) for t in req.inputs}
            result = await host.run_served(served, arrays, priority=req.priority, deadline=deadline)
            me = HopTiming(
                host.device_id,
                req.tier,
                queue_ms=result.queue_s * 1000,
                compute_ms=result.compute_s * 1000,
                batch_size=result.batch_size,
            )
            outputs = result.outputs
            later: tuple[HopTiming, ...] = ()
            if req.route:
                outputs, later = await host.forward(
                    req.route,
                    outputs,
                    req.output_names,
                    deadline,
                    priority=req.priority,
                    request_id=req.request_id,
                    origin=req.origin_device,
                )
            elif req.output_names:
                missing = [n for n in req.output_names if n not in outputs]
                if missing:
                    raise InvalidArgument(f"unknown output(s) {', '.join(map(repr, missing))}")
                outputs = {n: outputs[n] for n in req.output_names}
            response = RunSegmentResponse(tuple(to_tensor(n, v) for n, v in outputs.items()), (me, *later))
        except EdgefleetError as exc:
            if not isinstance(exc, InvalidArgument | UnknownSegment | DeadlineExceeded):
                log.warning(
                    "device=%s RunSegment for %s failed: %s",
                    host.device_id,
                    request.origin_device or "?",
                    exc,
                )
            await serde.abort_with_error_async(context, exc)
        return serde.run_segment_response_to_pb(response)
