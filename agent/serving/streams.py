"""Calls to one peer's SegmentService over long-lived ``RunSegments`` streams.

Why streams: a unary call pays for a new HTTP/2 stream, its headers and its status on every request;
a message on an open stream pays none of that. On the 2-core development box a bare Python gRPC
echo of a digits segment request at 32 concurrent callers answered 6,729 unary calls/s and 19,452
messages/s on 32 streams with one message in flight each (``bench/partition.py``'s transport-floor
line, which its batching section prints next to what streams do for a serving agent). A serving agent's CPU goes to requests instead of call setup, which is what lets batching pay
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
  more on a fresh stream — but only when the peer did not take it (the write failed, or the peer
  ended the stream cleanly, which it does only between requests) or the connection is gone (the
  peer restarted: running a segment again is only repeated work, never a wrong answer); a request
  whose handler broke after taking it is not resent. Every send carries what is left of the budget. A fresh stream that fails is the answer (UNAVAILABLE: the hop is unreachable). Idle
  streams older than ``REUSE_IDLE_S`` are not reused: the peer ends them after ``STREAM_IDLE_S``.
- **A peer that refuses a new stream** (RESOURCE_EXHAUSTED: at its cap; UNIMPLEMENTED: an older
  agent) is called unary, and for its retry-after (else ``NO_STREAMS_S``) no new stream is tried.

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
#: How long a peer that refused a stream is called unary (when it does not say, by retry-after).
NO_STREAMS_S = 5.0
#: The same for a peer that does not implement RunSegments (an older agent).
NO_STREAMS_UNIMPLEMENTED_S = 60.0
#: A fresh stream refused with these: the peer serves no more streams now, or none at all.
_NO_STREAMS = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED})
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
    __slots__ = ("call", "expired", "idle_since", "used")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.idle_since = time.monotonic()
        self.used = False
        #: The budget of its request ran out and the call was cancelled: never reused.
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self.cancel()

    def cancel(self) -> None:
        with contextlib.suppress(Exception):  # already ended: nothing to cancel
            self.call.cancel()


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
        #: No new streams before this time (monotonic): the peer refused one (see ``call``).
        self._streams_after = 0.0

    @property
    def open_streams(self) -> int:
        return self._open

    @property
    def idle_streams(self) -> int:
        return len(self._idle)

    @property
    def streams_refused_until(self) -> float:
        """Until when (monotonic) calls go unary because the peer refused a stream; 0: never did."""
        return self._streams_after

    async def call(self, request: Any, budget_s: float) -> Any:
        """Send ``request`` (a ``RunSegmentRequest`` message) within ``budget_s`` and return the
        ``RunSegmentResponse`` message, left undecoded; raises SegmentCallFailed. Each send sets
        the message's ``budget_ms`` to what is left of the budget then."""
        deadline = time.monotonic() + budget_s
        stream = self._checkout()
        retried = False
        while True:
            if stream is None:
                return await self._unary(request, deadline)
            reused = stream.used
            try:
                result = await self._exchange(stream, request, deadline)
            except _Broken as broken:
                self._discard(stream)
                if not reused and broken.status in _NO_STREAMS:
                    # The peer will not serve another stream now (at its cap), or none at all (it
                    # predates RunSegments): this request and the next ones for a while go unary.
                    retry_after = (
                        broken.error.retry_after if isinstance(broken.error, TransientError) else None
                    )
                    if broken.status is grpc.StatusCode.UNIMPLEMENTED:
                        retry_after = NO_STREAMS_UNIMPLEMENTED_S  # until it is upgraded, say
                    self._streams_after = time.monotonic() + (retry_after or NO_STREAMS_S)
                    return await self._unary(request, deadline)
                if (
                    broken.untaken
                    and reused
                    and not retried
                    and not self._closed
                    and deadline > time.monotonic()
                ):
                    retried = True  # it died idle in the pool: once more on a fresh stream
                    stream = self._checkout(fresh=True)
                    continue
                raise SegmentCallFailed(broken.status, broken.error) from None
            except BaseException:
                self._discard(stream)  # a timeout or a cancelled caller: its answer may still come
                raise
            if stream.expired:  # answered as the budget ran out: the call is cancelled all the same
                self._discard(stream)
            else:
                self._checkin(stream)
            failure = serde.segment_result_failure(result)
            if failure is not None:
                raise SegmentCallFailed(*failure)
            return serde.segment_result_response(result)

    async def aclose(self) -> None:
        """End the idle streams (half-close, then wait for the peer to end them, at most
        ``CLOSE_TIMEOUT_S``, then cancel): gRPC has nothing left to deliver for them afterwards.
        Streams in use are closed as their calls end."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        await asyncio.gather(*(self._finish(s) for s in idle))

    # -- internals ------------------------------------------------------------------------------

    async def _exchange(self, stream: _Stream, request: Any, deadline: float) -> Any:
        """One request and its result on ``stream``. ``_Broken.untaken`` says the request may be
        sent again: the write failed, or the peer ended the stream cleanly without answering (it
        does so only between requests: idle too long, or stopping), or the connection is gone."""
        stream.used = True
        left = max(deadline - time.monotonic(), 0.0)
        request.budget_ms = left * 1000
        written = False
        # At the deadline a timer cancels the call, and the write or read waiting on it raises
        # CancelledError here; ``expired`` tells that apart from this task being cancelled. (A timer
        # handle, not an asyncio.timeout scope: this is on every forwarded request's path, and the
        # scope costs several times more: two thirds of a call's own CPU against a stand-in call.)
        timer = asyncio.get_running_loop().call_later(left, stream.expire)
        try:
            await stream.call.write(request)
            written = True
            result = await stream.call.read()
        except asyncio.CancelledError:
            if not stream.expired or _being_cancelled():
                raise
            raise _late() from None
        except grpc.aio.AioRpcError as exc:
            status = exc.code()
            untaken = not written or status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK)
            raise _Broken(status, serde.error_from_rpc_error(exc), untaken=untaken) from None
        except asyncio.InvalidStateError:  # written to a stream that had already ended
            if stream.expired:
                raise _late() from None
            raise _Broken(
                grpc.StatusCode.UNAVAILABLE, TransientError("the stream had ended"), untaken=True
            ) from None
        finally:
            timer.cancel()
        if result is _EOF:
            status = await stream.call.code()
            error = (
                TransientError("the peer ended the stream without answering", code="unavailable")
                if status is grpc.StatusCode.OK
                else serde.status_to_error(status, await stream.call.details())
            )
            untaken = status in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
            raise _Broken(grpc.StatusCode.UNAVAILABLE if untaken else status, error, untaken=untaken)
        return result

    async def _unary(self, request: Any, deadline: float) -> Any:
        left = max(deadline - time.monotonic(), 0.0)
        request.budget_ms = left * 1000
        try:
            return await self._stub.RunSegment(request, timeout=left)
        except grpc.aio.AioRpcError as exc:
            raise SegmentCallFailed(exc.code(), serde.error_from_rpc_error(exc)) from None

    def _checkout(self, *, fresh: bool = False) -> _Stream | None:
        now = time.monotonic()
        while self._idle and not fresh:
            stream = self._idle.pop()
            if now - stream.idle_since <= REUSE_IDLE_S:
                return stream
            self._discard(stream)
        if self._closed or self._open >= self._max_streams or now < self._streams_after:
            return None
        self._open += 1
        return _Stream(self._stub.RunSegments())

    def _checkin(self, stream: _Stream) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            self._discard(stream)
            return
        stream.idle_since = time.monotonic()
        self._idle.append(stream)

    @staticmethod
    async def _finish(stream: _Stream) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await stream.call.done_writing()
                await stream.call.code()
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            stream.cancel()

    def _discard(self, stream: _Stream) -> None:
        self._open -= 1
        stream.cancel()


def _late() -> SegmentCallFailed:
    return SegmentCallFailed(
        grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded("no answer within the budget")
    )


def _being_cancelled() -> bool:
    """Whether the running task has been asked to stop (by its caller, not by a deadline timer)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Broken(Exception):
    def __init__(self, status: grpc.StatusCode, error: EdgefleetError, *, untaken: bool) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error
        self.untaken = untaken
