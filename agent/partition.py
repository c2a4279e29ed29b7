"""Partitioned inference on the agent: the segments it holds, and how a request travels.

``SegmentHost`` owns the onnxruntime sessions of this agent's segments — its own head segment when
its plan cuts the model, and the segments it serves for other devices, each behind a
``DynamicBatcher`` — and the ``Route`` its own requests take. ``prepare`` (one at a time, from the
daemon) loads what an assignment needs, swaps the route and the served set in as one step, and closes
what is no longer needed, so a request in flight finishes on what it started with.

``forward`` sends a segment's outputs to the next hop: one worker of the hop's pool, picked by weight
(``Balancer``, ejecting workers that keep failing), on a long-lived stream to it (``StreamPool``)
with the caller's remaining budget in the request, activations raw or compressed when that pays for
the link (``codec``). The hop answers with the final outputs and the timing of every later hop; this
one adds the transfer it measured.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from agent.runtime import LoadedModel, load_model
from agent.serving import codec
from agent.serving.balancer import Balancer, Endpoint
from agent.serving.batcher import BatchResult, DynamicBatcher
from agent.serving.breaker import PathBreaker
from agent.serving.linkmeter import LinkMeter
from agent.serving.streams import SegmentCallFailed, StreamPool
from common import limits, serde
from common.errors import DeadlineExceeded, InvalidArgument, TransientError
from common.tensors import from_tensor, to_tensor
from common.types import (
    Assignment,
    HopTiming,
    LinkMeasurement,
    RouteHop,
    RunSegmentRequest,
    SegmentEndpoint,
    ServedSegment,
    Tensor,
)

log = logging.getLogger(__name__)

#: Channels to peers kept open at once (a phone talks to one edge node and a cloud pool or two).
MAX_PEER_CHANNELS = 64
#: Requests queued per served segment before new ones are refused (ResourceExhausted).
MAX_QUEUED_ROWS = 1024
#: The budget of a request whose caller set no deadline.
DEFAULT_BUDGET_S = 10.0


class HopUnavailable(TransientError):
    """The next hop could not be reached (or every worker of its pool is ejected): the request fails
    fast, with what was tried, instead of hanging."""

    code = "hop_unavailable"


@dataclass(frozen=True, slots=True)
class Route:
    """How this device answers its own requests by its plan: its own segment (None: it only forwards
    its inputs), then the hops that run the rest."""

    version: int
    own: LoadedModel | None
    hops: tuple[RouteHop, ...]
    priority: int = 0
    #: The device's link to the first hop's pool, when it knows it (compression decides by it).
    bandwidth_mbps: float | None = None


@dataclass(frozen=True, slots=True)
class Served:
    segment: ServedSegment
    model: LoadedModel
    batcher: DynamicBatcher


class Peers:
    """gRPC channels to peers' SegmentService, one per address (bounded) with its pool of streams,
    and a balancer per hop."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._channels: dict[str, tuple[grpc.aio.Channel, StreamPool]] = {}
        self._balancers: dict[tuple[str, ...], Balancer] = {}
        self._rng = rng or random.Random()

    def balancer(self, endpoints: Sequence[SegmentEndpoint]) -> Balancer:
        key = tuple(sorted(e.address for e in endpoints))
        found = self._balancers.get(key)
        eps = [Endpoint(e.device_id, e.address, e.weight) for e in endpoints]
        if found is None:
            if len(self._balancers) >= MAX_PEER_CHANNELS:
                self._balancers.pop(next(iter(self._balancers)))
            found = self._balancers[key] = Balancer(eps, rng=self._rng, clock=time.monotonic)
        else:
            found.update(eps)
        return found

    def streams(self, address: str) -> StreamPool:
        entry = self._channels.get(address)
        if entry is None:
            if len(self._channels) >= MAX_PEER_CHANNELS:
                old, (channel, pool) = next(iter(self._channels.items()))
                del self._channels[old]
                asyncio.get_running_loop().create_task(_close(channel, pool))
            channel = grpc.aio.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS)
            entry = self._channels[address] = (channel, StreamPool(serde.SegmentServiceStub(channel)))
        return entry[1]

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        await asyncio.gather(*(_close(c, p) for c, p in channels.values()), return_exceptions=True)


async def _close(channel: grpc.aio.Channel, pool: StreamPool) -> None:
    await pool.aclose()
    await channel.close(None)


class SegmentHost:
    def __init__(
        self, device_id: str, *, threads: int, executor: Executor, links: Mapping[str, float] | None = None
    ) -> None:
        self.device_id = device_id
        #: The device's bandwidth to each pool it knows a link to (Mbit/s).
        self.links = dict(links or {})
        self._threads = threads
        self._executor = executor
        self.route: Route | None = None
        #: Whether requests take the route or the fallback; a new route starts healthy.
        self.breaker = self._new_breaker()
        self._served: dict[str, Served] = {}
        self._sessions: dict[str, LoadedModel] = {}
        self.peers = Peers()
        self._lock = asyncio.Lock()
        #: What each hop to a pool costs, from this agent's own traffic (reported as its links).
        self.links_meter = LinkMeter(clock=time.monotonic, bandwidth_mbps=self.links)
        #: Called with the links worth reporting (the daemon hands them to the core).
        self.on_links: Callable[[tuple[LinkMeasurement, ...]], None] | None = None

    # --- preparing an assignment ------------------------------------------------------------------

    async def prepare(self, a: Assignment, paths: Mapping[str, Path]) -> None:
        """Load every segment ``a`` needs (``paths``: sha256 -> the verified file), then switch the
        route and the served set to ``a``'s at once. Raises EdgefleetError naming the segment that
        failed to load; the previous route and served set stay in place then."""
        async with self._lock:
            sessions = dict(self._sessions)
            for sha, _ in a.segment_artifacts():
                if sha not in sessions:
                    sessions[sha] = await asyncio.to_thread(
                        load_model, paths[sha], sha256=sha, model_name=a.model_name or "segment", variant="segment",
                        threads=self._threads,
                    )  # fmt: skip
            route = _route(a, sessions, self.links)
            served: dict[str, Served] = {}
            for seg in a.serve:
                old = self._served.get(seg.artifact_sha256)
                if old is not None and old.segment == seg:
                    served[seg.artifact_sha256] = old
                    continue
                model = sessions[seg.artifact_sha256]
                served[seg.artifact_sha256] = Served(seg, model, self._batcher(seg, model))
            retired = [s for sha, s in self._served.items() if served.get(sha) is not s]
            if _hops_of(route) != _hops_of(self.route):
                self.breaker = self._new_breaker()
            self.route, self._served = route, served
            needed = {sha for sha, _ in a.segment_artifacts()}
            self._sessions = {sha: m for sha, m in sessions.items() if sha in needed}
        for s in retired:  # requests already queued on them are answered first
            await s.batcher.aclose()
        log.info(
            "device=%s segments ready for v%d: %s; serving %d segment(s)",
            self.device_id,
            a.version,
            "partitioned, next hop " + (route.hops[0].tier if route and route.hops else "-")
            if route
            else "local",
            len(served),
        )

    def _new_breaker(self) -> PathBreaker:
        return PathBreaker(clock=time.monotonic, rng=random.Random(), name=f"device={self.device_id}")

    def _batcher(self, seg: ServedSegment, model: LoadedModel) -> DynamicBatcher:
        return DynamicBatcher(
            lambda feeds: model.infer(feeds),
            max_batch_size=seg.max_batch_size,
            max_queue_delay_s=seg.max_queue_delay_ms / 1000.0,
            max_queue=MAX_QUEUED_ROWS,
            name=f"segment-{seg.artifact_sha256[:8]}",
        )

    def served(self, sha256: str) -> Served | None:
        return self._served.get(sha256)

    async def aclose(self) -> None:
        served, self._served = self._served, {}
        for s in served.values():
            await s.batcher.aclose(drain=False)
        await self.peers.aclose()

    # --- running ---------------------------------------------------------------------------------

    async def infer_partitioned(
        self, route: Route, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], deadline: float
    ) -> tuple[dict[str, np.ndarray], tuple[HopTiming, ...]]:
        """This device's own segment, then the rest of the route; the final outputs and every hop's
        timing (this device's first)."""
        hops: list[HopTiming] = []
        arrays = dict(inputs)
        if route.own is not None:
            started = time.perf_counter()
            arrays = await asyncio.get_running_loop().run_in_executor(
                self._executor, route.own.infer, arrays, ()
            )
            hops.append(
                HopTiming(self.device_id, "device", compute_ms=(time.perf_counter() - started) * 1000)
            )
        outputs, later = await self.forward(
            route.hops,
            arrays,
            output_names,
            deadline,
            priority=route.priority,
            bandwidth_mbps=route.bandwidth_mbps,
        )
        return outputs, (*hops, *later)

    async def forward(
        self,
        route: Sequence[RouteHop],
        arrays: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        deadline: float,
        *,
        priority: int = 0,
        request_id: str = "",
        origin: str = "",
        bandwidth_mbps: float | None = None,
    ) -> tuple[dict[str, np.ndarray], tuple[HopTiming, ...]]:
        """Send ``arrays`` to ``route[0]`` (which forwards to the rest); its answer and the hops'
        timing, the first hop's transfer measured here."""
        hop = route[0]
        balancer = self.peers.balancer(hop.endpoints)
        endpoint = balancer.pick()
        if endpoint is None:
            raise HopUnavailable(
                f"no {hop.tier} worker to run segment {hop.segment_sha256[:12]}: all are ejected"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"the budget ran out before the {hop.tier} hop", shortfall_s=-remaining)
        request = RunSegmentRequest(
            segment_sha256=hop.segment_sha256,
            inputs=tuple(_encode(name, value, bandwidth_mbps) for name, value in arrays.items()),
            route=tuple(route[1:]),
            priority=priority,
            origin_device=origin or self.device_id,
            request_id=request_id or uuid.uuid4().hex,
            output_names=tuple(output_names),
            tier=hop.tier,
            budget_ms=remaining * 1000,
        )
        started = time.perf_counter()
        try:
            pb = await self.peers.streams(endpoint.address).call(
                serde.run_segment_request_to_pb(request), remaining
            )
        except SegmentCallFailed as exc:
            error, status = exc.error, exc.status
            # A worker that refused in time (deadline, a full queue) is healthy; one that could not
            # be reached or broke is not.
            balancer.report(
                endpoint,
                ok=status in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT),
            )
            if status == grpc.StatusCode.DEADLINE_EXCEEDED or isinstance(error, DeadlineExceeded):
                raise DeadlineExceeded(
                    f"{hop.tier} hop {endpoint.name} ({endpoint.address}) did not answer within the budget: {error}"
                ) from None
            if status == grpc.StatusCode.UNAVAILABLE:
                raise HopUnavailable(
                    f"{hop.tier} hop {endpoint.name} ({endpoint.address}) is unreachable: {error}"
                ) from None
            raise error from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        balancer.report(endpoint, ok=True)
        response = serde.run_segment_response_from_pb(pb)
        later = list(response.hops)
        if later:
            spent = sum(h.queue_ms + h.compute_ms + h.transfer_ms for h in later)
            first = later[0]
            transfer_ms = max(0.0, elapsed_ms - spent)
            later[0] = HopTiming(first.device_id, first.tier, first.queue_ms, first.compute_ms,
                                 transfer_ms, first.batch_size)  # fmt: skip
            nbytes = sum(len(t.data) for t in request.inputs) + sum(len(t.data) for t in response.outputs)
            self._measured(hop.pool, transfer_ms, nbytes)
        return {t.name: decode(t) for t in response.outputs}, tuple(later)

    def _measured(self, pool: str, transfer_ms: float, nbytes: int) -> None:
        self.links_meter.record(pool, transfer_ms, nbytes)
        due = self.links_meter.due()
        if due and self.on_links is not None:
            self.on_links(due)

    async def run_served(
        self, served: Served, arrays: Mapping[str, np.ndarray], *, priority: int, deadline: float
    ) -> BatchResult:
        return await served.batcher.submit(arrays, priority=priority, deadline=deadline)


def _hops_of(route: Route | None) -> tuple[RouteHop, ...]:
    return route.hops if route is not None else ()


def _route(a: Assignment, sessions: Mapping[str, LoadedModel], links: Mapping[str, float]) -> Route | None:
    plan = a.plan
    if plan is None or plan.pattern == "local":
        return None
    own = a.own_segment
    pools = {"edge": plan.edge_pool, "cloud": plan.cloud_pool}
    hops = tuple(
        RouteHop(s.artifact_sha256, s.endpoints, s.tier, pools.get(s.tier, ""))
        for s in plan.segments
        if s.tier != "device"
    )
    if not hops or any(not h.endpoints for h in hops):
        raise InvalidArgument(f"v{a.version}: a partitioned plan without a worker for every hop")
    pool = hops[0].pool
    return Route(
        a.version,
        sessions[own.artifact_sha256] if own is not None else None,
        hops,
        priority=plan.priority,
        bandwidth_mbps=links.get(pool),
    )


def _encode(name: str, value: np.ndarray, bandwidth_mbps: float | None) -> Tensor:
    raw = to_tensor(name, value)
    encoding, data = codec.encode(raw.data, bandwidth_mbps=bandwidth_mbps, itemsize=raw.dtype.itemsize)
    if encoding == codec.RAW:
        return raw
    return Tensor(raw.name, raw.dtype, raw.shape, data, encoding)


def decode(t: Tensor) -> np.ndarray:
    """A tensor from the wire as an array, decompressed within the size its shape allows."""
    if t.encoding:
        expected = int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize
        data = codec.decode(t.encoding, t.data, max_bytes=expected)
        if len(data) != expected:
            raise InvalidArgument(f"tensor {t.name!r}: {len(data)} bytes decoded, its shape needs {expected}")
        t = Tensor(t.name, t.dtype, t.shape, data)
    return from_tensor(t)


def budget_deadline(time_remaining: float | None) -> float:
    """The absolute deadline (monotonic) of a request whose gRPC deadline leaves ``time_remaining``."""
    return time.monotonic() + (time_remaining if time_remaining is not None else DEFAULT_BUDGET_S)
