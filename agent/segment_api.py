"""SegmentService: peers offload part of a model here (this agent is an edge node or a cloud worker).

Thin: decode; refuse at once what cannot be answered well — a segment this agent does not serve (a
stale sender: its plan is older than ours, so it must not be answered with the wrong model), inputs
that do not match the segment, a budget that is already spent or that the batch queue says cannot be
met; run the segment in its batch (``agent.serving.batcher``); forward the outputs to the next hop
when the route goes on; answer with the outputs and this hop's timing first.

Two ways in, one ``run_segment``: ``RunSegment`` (unary: the gRPC deadline and the request's
``budget_ms``, the sooner, are its budget; an error aborts the call) and ``RunSegments`` (a stream
of requests, one at a time: the budget is ``budget_ms``; an error is answered in-band and the stream
goes on). A stream idle for ``STREAM_IDLE_S`` is ended by the server (within a quarter of that
more: one sweep checks them all), so streams that callers forgot do not pile up; ``close`` ends the
idle ones at once when the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from agent.partition import budget_deadline, decode
from common import serde
from common.errors import DeadlineExceeded, EdgefleetError, InvalidArgument, PermanentError, ResourceExhausted
from common.tensors import to_tensor
from common.types import HopTiming, RunSegmentRequest, RunSegmentResponse

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

#: A RunSegments stream with no request for this long is ended (the caller opens a new one).
STREAM_IDLE_S = 60.0
#: Unary RunSegment calls served at once (callers that cannot stream, or beyond their stream cap).
MAX_UNARY_CALLS = 256
#: The most budget a request may ask for: a peer cannot pin this hop for longer (DEFAULT_BUDGET_S
#: when it gives none).
MAX_BUDGET_S = 60.0
#: RunSegments streams served at once (each peer keeps a few open); more are refused with
#: RESOURCE_EXHAUSTED, and their callers make unary calls instead.
MAX_STREAMS_SERVED = 1024


#: How often per ``STREAM_IDLE_S`` the open streams are checked: one idle that long is ended within
#: 1 + 1/SWEEPS_PER_IDLE of it.
SWEEPS_PER_IDLE = 4


@dataclasses.dataclass(eq=False, slots=True)
class _OpenStream:
    task: asyncio.Task[Any]  # the one serving it
    waiting_since: float | None = None  # loop time it began waiting for a request; None while it runs one
    ended: bool = False  # cancelled by us to end it (not by its caller or gRPC)

    def end(self) -> None:
        """Interrupt its wait for the next request; it ends cleanly (OK). Only while it waits, so a
        request it has started on is never cut short. A request whose read completes in the same
        loop turn is dropped unanswered: its caller sees the clean end and sends it again on a
        fresh stream (``StreamPool``), and it never ran here."""
        if not self.ended:
            self.ended = True
            self.task.cancel()


class UnknownSegment(PermanentError):
    """This agent does not serve that segment (the sender's plan is stale, or ours is newer)."""

    code = "unknown_segment"


class SegmentApi(serde.SegmentServiceServicer):
    def __init__(self, daemon: AgentDaemon) -> None:
        self._daemon = daemon
        #: The streams being served; ``_sweep`` (and ``close``) end the ones idle too long.
        self._open: set[_OpenStream] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        self._streams = 0
        self._unary = 0

    async def RunSegment(self, request: Any, context: Context) -> Any:
        if self._unary >= MAX_UNARY_CALLS:
            await serde.abort_with_error_async(
                context,
                ResourceExhausted(
                    f"{self._unary} RunSegment calls are running, at most {MAX_UNARY_CALLS}", retry_after=0.1
                ),
            )
        self._unary += 1
        try:
            req = serde.run_segment_request_from_pb(request)
            response = await self.run_segment(req, _deadline(req, context.time_remaining()))
        except EdgefleetError as exc:
            self._log_failure(request, exc)
            await serde.abort_with_error_async(context, exc)
        finally:
            self._unary -= 1
        return serde.run_segment_response_to_pb(response)

    async def RunSegments(self, requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        if self._closing:
            return
        if self._streams >= MAX_STREAMS_SERVED:
            await serde.abort_with_error_async(
                context,
                ResourceExhausted(
                    f"{self._streams} segment streams are open, at most {MAX_STREAMS_SERVED}: call RunSegment",
                    retry_after=1.0,
                ),
            )
        self._streams += 1
        try:
            # aclosing: a caller that goes away mid-stream closes the inner generator (and drops
            # it from the open streams) at once, not whenever it is collected.
            async with contextlib.aclosing(self._serve_stream(requests)) as results:
                async for result in results:
                    yield result
        finally:
            self._streams -= 1

    async def _serve_stream(self, requests: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
        stream = aiter(requests)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        # Idleness is a timestamp per message, checked by one sweep for every stream, instead of a
        # timer armed and disarmed around each read: this is the serving hot path.
        state = _OpenStream(task)
        self._open.add(state)
        self._arm_sweeper(loop)
        try:
            while not self._closing:
                state.waiting_since = loop.time()
                try:
                    request = await anext(stream)
                except StopAsyncIteration:
                    return  # the caller is done
                except asyncio.CancelledError:
                    if state.ended and task.uncancel() == 0:
                        return  # idle too long (its caller forgot it), or this agent is stopping
                    raise
                state.waiting_since = None
                try:
                    req = serde.run_segment_request_from_pb(request)
                    outcome: RunSegmentResponse | Exception = await self.run_segment(
                        req, _deadline(req, None)
                    )
                except EdgefleetError as exc:
                    self._log_failure(request, exc)
                    outcome = exc
                except Exception as exc:  # our bug: answered INTERNAL in-band, the stream goes on
                    log.exception(
                        "device=%s RunSegments for %s failed unexpectedly",
                        self._daemon.segments.device_id,
                        request.origin_device or "?",
                    )
                    outcome = exc
                yield serde.segment_result_to_pb(outcome)
        finally:
            self._open.discard(state)

    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None:
            self._sweeper = loop.call_later(STREAM_IDLE_S / SWEEPS_PER_IDLE, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        idle_since = loop.time() - STREAM_IDLE_S
        for state in list(self._open):
            if state.waiting_since is not None and state.waiting_since <= idle_since:
                state.end()
        if self._open:
            self._arm_sweeper(loop)

    def close(self) -> None:
        """End every stream that is waiting for its next request (those running one answer it first)."""
        self._closing = True
        for state in list(self._open):
            if state.waiting_since is not None:
                state.end()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def run_segment(self, req: RunSegmentRequest, deadline: float) -> RunSegmentResponse:
        """Run ``req`` on this agent and the rest of its route by ``deadline`` (monotonic); raises
        EdgefleetError (UnknownSegment, InvalidArgument, DeadlineExceeded, what the batch or the
        next hop failed with)."""
        host = self._daemon.segments
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
        return RunSegmentResponse(tuple(to_tensor(n, v) for n, v in outputs.items()), (me, *later))

    def _log_failure(self, request: Any, exc: EdgefleetError) -> None:
        # A refusal the caller is told about in full is not this agent's problem to log.
        if not isinstance(exc, InvalidArgument | UnknownSegment | DeadlineExceeded):
            log.warning(
                "device=%s RunSegment for %s failed: %s",
                self._daemon.segments.device_id,
                request.origin_device or "?",
                exc,
            )


def _deadline(req: RunSegmentRequest, time_remaining: float | None) -> float:
    """The request's absolute deadline: the sooner of the gRPC deadline and its ``budget_ms``, at
    most ``MAX_BUDGET_S`` away."""
    budget = req.budget_ms / 1000 if req.budget_ms > 0 else None
    if time_remaining is not None and (budget is None or time_remaining < budget):
        budget = time_remaining
    return budget_deadline(None if budget is None else min(budget, MAX_BUDGET_S))
