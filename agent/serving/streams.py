"""Calls to one peer's SegmentService over long-lived ``RunSegments`` streams.

Why streams: a unary call pays for a new HTTP/2 stream, its headers and its status on every request;
a message on an open stream pays none of that. On the 2-core development box a Python gRPC echo
answered ~8,000 unary calls/s at 32 concurrent callers and ~21,000 messages/s on 32 streams with one
message in flight each (``bench/partition.py``'s batching section measures what it does to a serving
agent). A serving agent's CPU goes to requests instead of call setup, which is what lets batching pay
when segments are cheap.

The rules:

- **One request in flight per stream**, answered in order before the next is sent: nothing to match
  up, and a caller never waits behind another's request on the wire. A call takes an idle stream of
  the peer's pool or opens one while fewer than ``MAX_STREAMS`` are open; beyond that it makes a
  unary ``RunSegment`` (same semantics), so the pool is bounded and nobody queues for a stream. A
  peer that refuses a new stream (RESOURCE_EXHAUSTED: it serves as many as it will) is called unary.
- **The budget travels in the request** (``budget_ms``) and the caller waits at most that long. A
  stream whose answer did not come in time is cancelled, never reused: its late answer would be read
  as the next request's.
- **Refusals are answered in-band** (``SegmentResult.error``): the stream stays open.
- **A stream that ends or breaks before answering**: if it had been idle in the pool it may have
  died there (the peer restarted, or ended it after ``STREAM_IDLE_S``), so the request is sent once
  more on a fresh stream — running a segment is safe to repeat. A fresh stream that fails is the
  answer (UNAVAILABLE: the hop is unreachable). Idle streams older than ``REUSE_IDLE_S`` are not
  reused: the peer ends them after ``STREAM_IDLE_S``.

Failures are raised as ``SegmentCallFailed`` (the gRPC status and the typed error), the same for
the stream and the unary path, so the caller maps them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import grpc.aio

from common import serde
from common.errors import DeadlineExceeded, EdgefleetError, TransientError

#: Streams open to one peer at once (each carries one request at a time); more calls go unary.
MAX_STREAMS = 64
#: Idle streams kept per peer for the next calls.
MAX_IDLE_STREAMS = 16
#: An idle stream older than this is closed rather than reused (the peer ends them after 60 s).
REUSE_IDLE_S = 30.0
#: How long ``aclose`` waits for a peer to end an idle stream before cancelling it.
CLOSE_TIMEOUT_S = 1.0
#: What ``read()`` returns once the server has ended the stream (grpc-stubs do not declare it).
_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009


class SegmentCallFailed(Exception):
    """A RunSegment call that did not answer: the status it ended with and the typed error."""

    def __init__(self, status: grpc.StatusCode, error: EdgefleetError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


class _Stream:
    __slots__ = ("call", "idle_since", "used")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.idle_since = time.monotonic()
        self.used = False


class StreamPool:
    """The streams to one peer (its ``SegmentServiceStub``). Belongs to one event loop."""

    def __init__(
        self,
        stub: serde.SegmentServiceStub,
        *,
        max_streams: int = MAX_STREAMS,
        max_idle: int = MAX_IDLE_STREAMS,
    ) -> None:
        self._stub = stub
        self._max_streams = max_streams
        self._max_idle = max_idle
        self._idle: list[_Stream] = []
        self._open = 0
        self._closed = False

    @property
    def open_streams(self) -> int:
        return self._open

    @property
    def idle_streams(self) -> int:
        return len(self._idle)

    async def call(self, request: Any, budget_s: float) -> Any:
        """Send ``request`` (a ``RunSegmentRequest`` message whose ``budget_ms`` is set) and return
        the ``RunSegmentResponse`` message; raises SegmentCallFailed."""
        deadline = time.monotonic() + budget_s
        stream = self._checkout()
        if stream is None:
            return await self._unary(request, budget_s)
        retried = False
        while True:
            reused = stream.used
            try:
                result = await self._exchange(stream, request, deadline - time.monotonic())
            except _Broken as broken:
                self._discard(stream)
                if broken.status is grpc.StatusCode.RESOURCE_EXHAUSTED and not reused:
                    # The peer serves as many streams as it will: this request goes unary.
                    return await self._unary(request, deadline - time.monotonic())
                if reused and not retried and not self._closed and deadline > time.monotonic():
                    retried = True
                    fresh = self._checkout(fresh=True)
                    if fresh is None:
                        return await self._unary(request, deadline - time.monotonic())
                    stream = fresh
                    continue
                raise SegmentCallFailed(broken.status, broken.error) from None
            except BaseException:
                self._discard(stream)  # a timeout or a cancelled caller: its answer may still come
                raise
            self._checkin(stream)
            outcome = serde.segment_result_from_pb(result)
            if isinstance(outcome, tuple):
                raise SegmentCallFailed(*outcome)
            return result.response

    async def aclose(self) -> None:
        """End the idle streams (half-close, then wait for the peer to end them, at most
        ``CLOSE_TIMEOUT_S``, then cancel): gRPC has nothing left to deliver for them afterwards.
        Streams in use are closed as their calls end."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        await asyncio.gather(*(self._finish(s) for s in idle))

    # -- internals ------------------------------------------------------------------------------

    async def _exchange(self, stream: _Stream, request: Any, budget_s: float) -> Any:
        stream.used = True
        try:
            async with asyncio.timeout(max(budget_s, 0.0)):
                await stream.call.write(request)
                result = await stream.call.read()
        except TimeoutError:
            raise SegmentCallFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded("no answer within the budget")
            ) from None
        except grpc.aio.AioRpcError as exc:
            raise _Broken(exc.code(), serde.error_from_rpc_error(exc)) from None
        except asyncio.InvalidStateError:  # written to a stream that had already ended
            raise _Broken(grpc.StatusCode.UNAVAILABLE, TransientError("the stream had ended")) from None
        if result is _EOF:
            raise _Broken(
                grpc.StatusCode.UNAVAILABLE,
                TransientError("the peer ended the stream without answering", code="unavailable"),
            )
        return result

    async def _unary(self, request: Any, budget_s: float) -> Any:
        try:
            return await self._stub.RunSegment(request, timeout=max(budget_s, 0.0))
        except grpc.aio.AioRpcError as exc:
            raise SegmentCallFailed(exc.code(), serde.error_from_rpc_error(exc)) from None

    def _checkout(self, *, fresh: bool = False) -> _Stream | None:
        now = time.monotonic()
        while self._idle and not fresh:
            stream = self._idle.pop()
            if now - stream.idle_since <= REUSE_IDLE_S:
                return stream
            self._discard(stream)
        if self._closed or self._open >= self._max_streams:
            return None
        self._open += 1
        return _Stream(self._stub.RunSegments())

    def _checkin(self, stream: _Stream) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            self._discard(stream)
            return
        stream.idle_since = time.monotonic()
        self._idle.append(stream)

    @classmethod
    async def _finish(cls, stream: _Stream) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await stream.call.done_writing()
                await stream.call.code()
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            cls._cancel(stream)

    def _discard(self, stream: _Stream) -> None:
        self._open -= 1
        self._cancel(stream)

    @staticmethod
    def _cancel(stream: _Stream) -> None:
        with contextlib.suppress(Exception):  # already ended: nothing to cancel
            stream.call.cancel()


class _Broken(Exception):
    def __init__(self, status: grpc.StatusCode, error: EdgefleetError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error
