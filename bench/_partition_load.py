"""Closed-loop load on one serving agent's ``SegmentService`` over real gRPC (loopback), for
``bench/partition.py``: ``callers`` concurrent asyncio callers on one channel, each sending one row,
waiting for the answer, sending the next, each with a deadline; what the serving agent says in its
hop timing (queue, compute, batch size) is kept next to the caller's own latency.

``transport="stream"`` (the default) calls as agents call each other: through the product's
``StreamPool`` (``RunSegments``: each caller on a stream of its own, one request in flight);
``"unary"`` makes one ``RunSegment`` call per request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np

from agent.serving.streams import SegmentCallFailed, StreamPool
from common import limits, serde
from common.tensors import to_tensor
from common.types import RunSegmentRequest


@dataclass
class LoadCell:
    callers: int
    mode: str  # "off" | "on" (batching), "no-work" (bench/_fleet.segment_floor_server), "echo"
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    #: compute of each answer's batch, with that batch's size
    compute_ms: list[tuple[int, float]] = field(default_factory=list)
    #: CPU seconds the serving agent's process and this (client) process used, and the wall seconds
    #: they were measured over (warm-up included)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def server_us_per_request(self) -> float:
        """The serving agent's CPU microseconds per answered request (warm-up counted at the same rate)."""
        return self.server_cpu_s / self.wall_s / self.rps * 1e6

    @property
    def mean_batch(self) -> float:
        return float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0

    def full_batch_compute_ms(self, size: int) -> list[float]:
        return [c for b, c in self.compute_ms if b >= size]


def requests_pb(
    sha256: str, rows: list[dict[str, np.ndarray]], tier: str, *, budget_s: float = 2.0
) -> list[Any]:
    """One serialised-ready RunSegment request per input row (built once, reused by every call)."""
    return [
        serde.run_segment_request_to_pb(
            RunSegmentRequest(
                segment_sha256=sha256,
                inputs=tuple(to_tensor(name, np.ascontiguousarray(value)) for name, value in row.items()),
                tier=tier,
                request_id=f"bench-{i}",
                origin_device="bench",
                budget_ms=budget_s * 1000,
            )
        )
        for i, row in enumerate(rows)
    ]


async def _drive(
    stub: Any,
    pool: StreamPool | None,
    requests: list[Any],
    callers: int,
    seconds: float,
    deadline_s: float,
    cell: LoadCell | None,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = started + seconds
    latencies: list[float] = []
    sizes: list[int] = []
    queues: list[float] = []
    computes: list[tuple[int, float]] = []
    kinds: dict[str, int] = {}

    async def caller(k: int) -> None:
        req = requests[k % len(requests)]
        while loop.time() < stop:
            t0 = time.perf_counter()
            try:
                if pool is not None:
                    pb = await pool.call(req, deadline_s)
                else:
                    pb = await stub.RunSegment(req, timeout=deadline_s)
            except (grpc.aio.AioRpcError, SegmentCallFailed) as exc:
                error = exc.error if isinstance(exc, SegmentCallFailed) else serde.error_from_rpc_error(exc)
                kinds[error.code] = kinds.get(error.code, 0) + 1
                await asyncio.sleep(0.001)
                continue
            latencies.append((time.perf_counter() - t0) * 1e3)
            hop = serde.hops_from_pb("hops", pb.hops)[0]  # the timing only: the load generator stays cheap
            sizes.append(hop.batch_size)
            queues.append(hop.queue_ms)
            computes.append((hop.batch_size, hop.compute_ms))

    await asyncio.gather(*(caller(k) for k in range(callers)))
    elapsed = loop.time() - started
    if cell is not None:
        cell.requests += len(latencies)
        cell.seconds += elapsed
        cell.errors += sum(kinds.values())
        for k, v in kinds.items():
            cell.error_kinds[k] = cell.error_kinds.get(k, 0) + v
        cell.latencies_ms += latencies
        cell.batch_sizes += sizes
        cell.queue_ms += queues
        cell.compute_ms += computes


async def run_cell(
    address: str,
    requests: list[Any],
    cell: LoadCell,
    *,
    seconds: float,
    warmup_s: float,
    deadline_s: float,
    transport: str = "stream",
) -> None:
    """Warm up, then measure ``cell.callers`` callers for ``seconds``, adding to ``cell``."""
    channel = grpc.aio.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS)
    stub = serde.SegmentServiceStub(channel)
    pool = (
        StreamPool(stub, max_streams=cell.callers, max_idle=cell.callers) if transport == "stream" else None
    )
    try:
        await _drive(stub, pool, requests, cell.callers, warmup_s, deadline_s, None)
        await _drive(stub, pool, requests, cell.callers, seconds, deadline_s, cell)
    finally:
        if pool is not None:
            await pool.aclose()
        await channel.close(None)


async def echo_floor(
    address: str, method: str, payload: bytes, callers: int, seconds: float, *, stream: bool = True
) -> LoadCell:
    """The same closed loop against a bare gRPC echo (``bench/_fleet.echo_server``): ``callers``
    callers, one ``payload`` in flight each, no work at all — on a stream each (``method`` is the
    stream method), or one unary call per message (``stream=False``, the unary method). What the wire
    and both gRPC stacks cost at that concurrency on this machine, whatever the server does."""
    channel = grpc.aio.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS)
    cell = LoadCell(callers, "echo")
    loop = asyncio.get_running_loop()

    def same(b: bytes) -> bytes:
        return b

    async def caller(stop: float, record: bool) -> None:
        if stream:
            call = channel.stream_stream(method, request_serializer=same, response_deserializer=same)()
        else:
            unary = channel.unary_unary(method, request_serializer=same, response_deserializer=same)
        while loop.time() < stop:
            t0 = time.perf_counter()
            if stream:
                await call.write(payload)
                await call.read()
            else:
                await unary(payload)
            if record:
                cell.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        if stream:
            await call.done_writing()
            await call.code()

    try:
        await asyncio.gather(*(caller(loop.time() + 0.3, False) for _ in range(callers)))
        started = loop.time()
        await asyncio.gather(*(caller(started + seconds, True) for _ in range(callers)))
        cell.seconds = loop.time() - started
        cell.requests = len(cell.latencies_ms)
    finally:
        await channel.close(None)
    return cell
