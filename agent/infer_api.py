"""AgentService: the local inference endpoint applications call, plus a status probe."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc

from agent.core import events as ev
from agent.partition import HopUnavailable, Route, budget_deadline
from agent.runtime import LoadedModel
from agent.serving.breaker import Outcome as PathOutcome
from common import limits, serde
from common.errors import EdgefleetError, InvalidArgument, PermanentError, ResourceExhausted
from common.tensors import from_tensor, to_tensor
from common.types import AgentStatus, HopTiming, InferenceRecord, InferResponse, Outcome

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger(__name__)
#: Models whose runs typically take less than this run on the event loop thread itself.
INLINE_BELOW_MS = 1.0
#: Of a partitioned request's budget, at least this much is kept to answer from the fallback.
MIN_FALLBACK_RESERVE_S = 0.005


def fallback_reserve_s(model: LoadedModel, rows: int) -> float:
    """How much of the budget to keep for answering ``rows`` from ``model`` if the path fails late:
    three times its typical time per row (a run is slower than typical on a busy host)."""
    return max(MIN_FALLBACK_RESERVE_S, 3.0 * model.typical_row_ms * max(1, rows) / 1000.0)


Context = grpc.aio.ServicerContext[Any, Any]


class InferApi(serde.AgentServiceServicer):
    def __init__(self, daemon: AgentDaemon, *, max_inflight: int = 256) -> None:
        self._daemon = daemon
        # onnxruntime releases the GIL while it runs; keep the event loop free for the control stream.
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="infer")
        self._max_inflight = max_inflight
        self._inflight = 0

    async def Infer(self, request: Any, context: Context) -> Any:
        if self._inflight >= self._max_inflight:
            await serde.abort_with_error_async(
                context,
                ResourceExhausted(
                    f"{self._inflight} Infer calls are running, at most {self._max_inflight}; retry shortly",
                    retry_after=0.1,
                ),
            )
        self._inflight += 1
        try:
            return await self._infer(request, context)
        finally:
            self._inflight -= 1

    async def _infer(self, request: Any, context: Context) -> Any:
        route = self._daemon.segments.route  # one reference for the whole request, as for the model
        if route is not None:
            return await self._infer_partitioned(route, request, context)
        started = time.perf_counter()
        model = self._daemon.slot.active  # one reference for the whole request: a swap never cuts it
        sha = model.sha256 if model is not None else ""
        try:
            if model is None:
                raise PermanentError("no model is loaded on this device yet", code="no_model")
            req = serde.infer_request_from_pb(request)
            total = sum(len(t.data) for t in req.inputs)
            if total > limits.MAX_INFER_INPUT_BYTES:
                raise InvalidArgument(
                    f"inputs total {total} bytes, over the {limits.MAX_INFER_INPUT_BYTES}-byte limit"
                )
            arrays = {t.name: from_tensor(t) for t in req.inputs}
            if model.typical_run_ms < INLINE_BELOW_MS:
                # Cheaper than the hop to a worker thread (~0.3 ms here), and too short to hurt the loop.
                outputs = model.infer(arrays, req.output_names)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._pool, model.infer, arrays, req.output_names)
            latency_ms = (time.perf_counter() - started) * 1000.0
            device_id = self._daemon.identity.device_id if self._daemon.identity else ""
            response = InferResponse(
                outputs=tuple(to_tensor(name, value) for name, value in outputs.items()),
                model_sha256=sha,
                latency_ms=latency_ms,
                # One hop, the device itself, so a caller reads local and partitioned answers alike.
                hops=(HopTiming(device_id, "device", compute_ms=latency_ms),) if device_id else (),
            )
        except EdgefleetError as exc:
            outcome = (
                Outcome.NO_MODEL
                if exc.code == "no_model"
                else (Outcome.INVALID_INPUT if isinstance(exc, InvalidArgument) else Outcome.ERROR)
            )
            self._record(sha, started, outcome, exc.message)
            await serde.abort_with_error_async(context, exc)
        self._record(sha, started, Outcome.OK, "")
        return serde.infer_response_to_pb(response)

    async def _infer_partitioned(self, route: Route, request: Any, context: Context) -> Any:
        """This device's segment, then the peers that run the rest, within the caller's deadline.
        When the path is down (a hop unreachable, failing or too slow for the budget) the device's
        fallback variant answers instead, marked degraded, and the path is probed with backoff
        (``PathBreaker``) until it is healthy again. Without a fallback the error names the hop."""
        started = time.perf_counter()
        host = self._daemon.segments
        fallback = self._daemon.slot.active  # the plan's whole fallback variant
        sha = route.own.sha256 if route.own is not None else route.hops[0].segment_sha256
        try:
            req = serde.infer_request_from_pb(request)
            arrays = {t.name: from_tensor(t) for t in req.inputs}
        except EdgefleetError as exc:
            self._record(sha, started, Outcome.INVALID_INPUT, exc.message, path="partitioned")
            await serde.abort_with_error_async(context, exc)
        deadline = budget_deadline(context.time_remaining())
        # Keep enough of the budget to answer from the fallback if the path fails late.
        rows = min((a.shape[0] for a in arrays.values() if a.ndim), default=1)
        reserve_s = fallback_reserve_s(fallback, rows) if fallback is not None else 0.0
        ticket = host.breaker.allow()
        if ticket is not None and deadline - reserve_s <= time.monotonic():
            host.breaker.done(ticket, PathOutcome.ABANDONED)  # the caller's budget, not the path's fault
            ticket, reason = None, "the budget leaves no time for the partitioned path"
        else:
            reason = host.breaker.last_failure
        if ticket is not None:
            try:
                outputs, hops = await host.infer_partitioned(
                    route, arrays, req.output_names, deadline - reserve_s
                )
            except asyncio.CancelledError:
                host.breaker.done(ticket, PathOutcome.ABANDONED)
                raise
            except InvalidArgument as exc:  # the request's fault, not the path's
                host.breaker.done(ticket, PathOutcome.ABANDONED)
                self._record(sha, started, Outcome.INVALID_INPUT, exc.message, path="partitioned")
                await serde.abort_with_error_async(context, exc)
            except EdgefleetError as exc:
                if host.breaker.done(ticket, PathOutcome.FAILURE, exc.message):
                    self._daemon.dispatch(ev.PathChanged(degraded=True, reason=exc.message))
                if fallback is None:
                    self._record(sha, started, Outcome.ERROR, exc.message, path="partitioned")
                    await serde.abort_with_error_async(context, exc)
                reason = exc.message
            else:
                if host.breaker.done(ticket, PathOutcome.SUCCESS):
                    self._daemon.dispatch(
                        ev.PathChanged(degraded=False, reason="the partitioned path answers again")
                    )
                response = InferResponse(
                    outputs=tuple(to_tensor(name, value) for name, value in outputs.items()),
                    model_sha256=sha,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                    hops=hops,
                    path="partitioned",
                )
                self._record(sha, started, Outcome.OK, "", path="partitioned", hops=hops)
                return serde.infer_response_to_pb(response)
        if fallback is None:
            error = HopUnavailable(f"the partitioned path is down ({reason}) and this device has no fallback")
            self._record(sha, started, Outcome.ERROR, error.message, path="partitioned")
            await serde.abort_with_error_async(context, error)
        return await self._answer_from_fallback(fallback, arrays, req.output_names, started, reason, context)

    async def _answer_from_fallback(
        self,
        model: LoadedModel,
        arrays: dict[str, Any],
        output_names: tuple[str, ...],
        started: float,
        reason: str,
        context: Context,
    ) -> Any:
        device_id = self._daemon.identity.device_id if self._daemon.identity else ""
        try:
            run_started = time.perf_counter()
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._pool, model.infer, arrays, output_names)
            compute_ms = (time.perf_counter() - run_started) * 1000.0
        except EdgefleetError as exc:
            outcome = Outcome.INVALID_INPUT if isinstance(exc, InvalidArgument) else Outcome.ERROR
            self._record(model.sha256, started, outcome, exc.message, path="fallback")
            await serde.abort_with_error_async(context, exc)
        hops = (HopTiming(device_id, "device", compute_ms=compute_ms),) if device_id else ()
        response = InferResponse(
            outputs=tuple(to_tensor(name, value) for name, value in outputs.items()),
            model_sha256=model.sha256,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            hops=hops,
            path="fallback",
            fallback_reason=reason[: limits.MAX_TEXT_CHARS],
        )
        self._record(model.sha256, started, Outcome.OK, reason, path="fallback", hops=hops)
        return serde.infer_response_to_pb(response)

    def _record(
        self,
        sha: str,
        started: float,
        outcome: Outcome,
        error: str,
        *,
        path: str = "",
        hops: tuple[HopTiming, ...] = (),
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._daemon.record_inference(
            InferenceRecord(
                model_sha256=sha,
                latency_ms=latency_ms,
                outcome=outcome,
                error=error[:200],
                path=path,
                hops=hops,
            )
        )

    async def GetStatus(self, request: Any, context: Context) -> Any:
        d = self._daemon
        model = d.slot.active
        status = AgentStatus(
            device_id=d.identity.device_id if d.identity else "",
            hardware_class=d.config.hardware_class,
            connected=d.connected,
            reported=d.core.reported,
            inputs=model.inputs if model else (),
            outputs=model.outputs if model else (),
            pending_telemetry=d.core.pending_telemetry,
        )
        return serde.agent_status_to_pb(status)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
