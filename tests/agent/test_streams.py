"""agent.serving.streams.StreamPool against a real grpc.aio server on loopback (a scripted
SegmentService), and agent.segment_api.SegmentApi.RunSegments with a stand-in for the daemon: answers
in order on one reused stream, in-band errors that keep the stream, a late answer that is never
mistaken for the next one, streams that died idle retried once, the unary overflow path, idle
streams ended by the server and at shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest

from agent import segment_api
from agent.segment_api import SegmentApi
from agent.serving.streams import SegmentCallFailed, StreamPool
from common import limits, serde
from common.errors import ResourceExhausted
from common.tensors import to_tensor
from common.types import HopTiming, RunSegmentRequest, RunSegmentResponse

pytestmark = pytest.mark.timeout(30)
SHA = "ab" * 32


def _request(request_id: str, *, budget_ms: float = 2000.0) -> Any:
    import numpy as np

    return serde.run_segment_request_to_pb(
        RunSegmentRequest(
            segment_sha256=SHA,
            inputs=(to_tensor("x", np.zeros((1, 2), dtype=np.float32)),),
            request_id=request_id,
            tier="edge",
            budget_ms=budget_ms,
        )
    )


def _answer(request_id: str) -> RunSegmentResponse:
    """An answer that names the request it answers (its device id), so order can be checked."""
    return RunSegmentResponse((), (HopTiming(request_id, "edge"),))


class Scripted(serde.SegmentServiceServicer):
    """Answers each request by ``behaviour(request_id)``: None to answer, an exception to refuse,
    ``"hang"`` to wait, ``"end"`` to end the stream without answering."""

    def __init__(self) -> None:
        self.behaviour: Callable[[str], object] = lambda _: None
        self.streams = 0
        self.ended = 0  # streams whose caller half-closed them (the graceful end)
        self.unary = 0
        self.seen: list[tuple[str, float]] = []  # (request id, budget_ms) of every request received
        self.release = asyncio.Event()
        self.received = asyncio.Event()  # set at every request

    async def _outcome(self, pb: Any) -> RunSegmentResponse | BaseException | str:
        self.seen.append((pb.request_id, pb.budget_ms))
        self.received.set()
        what = self.behaviour(pb.request_id)
        if what == "hang":
            await self.release.wait()
            return _answer(pb.request_id + "-late")
        if isinstance(what, str | BaseException):
            return what
        return _answer(pb.request_id)

    async def RunSegment(self, request: Any, context: Any) -> Any:
        self.unary += 1
        outcome = await self._outcome(request)
        if isinstance(outcome, BaseException):
            await serde.abort_with_error_async(context, outcome)
        assert isinstance(outcome, RunSegmentResponse)
        return serde.run_segment_response_to_pb(outcome)

    async def RunSegments(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        self.streams += 1
        async for pb in requests:
            outcome = await self._outcome(pb)
            if outcome == "end":
                return
            if outcome == "crash":
                raise RuntimeError("the handler broke after taking the request")
            assert not isinstance(outcome, str)
            yield serde.segment_result_to_pb(outcome)
        self.ended += 1


async def _serve(servicer: serde.SegmentServiceServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=limits.GRPC_MESSAGE_OPTIONS)
    serde.add_SegmentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _run(test: Callable[[StreamPool, Scripted, grpc.aio.Channel], Awaitable[None]], **pool_args: int) -> None:
    async def main() -> None:
        servicer = Scripted()
        server, address = await _serve(servicer)
        channel = grpc.aio.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS)
        pool = StreamPool(serde.SegmentServiceStub(channel), **pool_args)
        try:
            await test(pool, servicer, channel)
        finally:
            servicer.release.set()
            await pool.aclose()
            await channel.close(None)
            await server.stop(None)

    asyncio.run(main())


def _answered(pb: Any) -> str:
    return str(pb.hops[0].device_id)


def test_sequential_calls_share_one_stream_and_get_their_own_answers() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        for i in range(5):
            assert _answered(await pool.call(_request(f"r{i}"), 2.0)) == f"r{i}"
        assert (servicer.streams, servicer.unary, pool.open_streams, pool.idle_streams) == (1, 0, 1, 1)
        # Concurrent callers each get a stream of their own, and their own answers.
        got = await asyncio.gather(*(pool.call(_request(f"c{i}"), 2.0) for i in range(4)))
        assert [_answered(g) for g in got] == [f"c{i}" for i in range(4)]
        assert servicer.streams == 4 and pool.open_streams == 4
        # Closing ends the idle streams gracefully (half-closed, ended by the peer), not cancelled.
        await pool.aclose()
        assert servicer.ended == 4 and (pool.open_streams, pool.idle_streams) == (0, 0)
        servicer.behaviour = lambda _: ResourceExhausted("closed")
        with pytest.raises(SegmentCallFailed):  # a closed pool opens no stream: the call goes unary
            await pool.call(_request("after"), 2.0)
        assert servicer.streams == 4 and servicer.unary == 1

    _run(test)


def test_an_in_band_refusal_is_typed_and_the_stream_stays_open() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        servicer.behaviour = lambda rid: (
            ResourceExhausted("queue full", retry_after=0.25) if rid == "bad" else None
        )
        with pytest.raises(SegmentCallFailed) as failed:
            await pool.call(_request("bad"), 2.0)
        assert failed.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert isinstance(failed.value.error, ResourceExhausted)
        assert failed.value.error.retry_after == 0.25 and "queue full" in str(failed.value.error)
        assert _answered(await pool.call(_request("good"), 2.0)) == "good"
        assert servicer.streams == 1  # the same stream answered both

    _run(test)


def test_a_late_answer_fails_in_time_and_is_never_read_as_the_next_one() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        servicer.behaviour = lambda rid: "hang" if rid == "slow" else None
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SegmentCallFailed) as failed:
            await pool.call(_request("slow"), 0.2)
        assert failed.value.status is grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 2.0
        assert pool.open_streams == 0  # the stream that owes an answer is gone
        servicer.release.set()  # the late answer is now sent on a cancelled stream
        assert _answered(await pool.call(_request("next"), 2.0)) == "next"
        assert servicer.streams == 2

    _run(test)


def test_a_cancelled_caller_is_cancelled_not_failed_and_its_stream_is_dropped() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        servicer.behaviour = lambda rid: "hang" if rid == "slow" else None
        call = asyncio.create_task(pool.call(_request("slow"), 10.0))
        await servicer.received.wait()  # the peer has the request: the caller waits for its answer
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call  # not a DeadlineExceeded: the budget had 10 s left
        assert pool.open_streams == 0  # its answer may still come: the stream is not reused
        servicer.release.set()
        assert _answered(await pool.call(_request("next"), 2.0)) == "next"

    _run(test)


def test_a_stream_that_ended_while_idle_is_retried_once_on_a_fresh_one() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        assert _answered(await pool.call(_request("first"), 2.0)) == "first"
        ended = {"n": 0}

        def end_once(rid: str) -> object:
            if rid == "second" and ended["n"] == 0:
                ended["n"] += 1
                return "end"  # as a peer that restarted, or ended an idle stream, would
            return None

        servicer.behaviour = end_once
        assert _answered(await pool.call(_request("second"), 2.0)) == "second"
        assert servicer.streams == 2 and pool.open_streams == 1
        # A fresh stream that ends without answering is the answer: unavailable, no second retry.
        servicer.behaviour = lambda _: "end"
        await pool.aclose()
        fresh = StreamPool(pool._stub)
        with pytest.raises(SegmentCallFailed) as failed:
            await fresh.call(_request("third"), 2.0)
        assert failed.value.status is grpc.StatusCode.UNAVAILABLE
        assert servicer.streams == 3
        await fresh.aclose()

    _run(test)


def test_a_request_the_peer_took_is_not_sent_again_and_every_send_carries_the_budget_left() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        assert _answered(await pool.call(_request("first", budget_ms=99_999), 2.0)) == "first"
        assert servicer.seen[0][1] <= 2000.0  # the budget the call was given, not the message's
        servicer.behaviour = lambda rid: "crash" if rid == "taken" else None
        with pytest.raises(SegmentCallFailed) as failed:
            await pool.call(_request("taken"), 2.0)  # on the reused stream, which then breaks
        assert failed.value.status is grpc.StatusCode.UNKNOWN
        assert [rid for rid, _ in servicer.seen].count("taken") == 1  # run once: never resent
        # One that died idle is resent (see above) with what is left of the budget, not the first.
        assert _answered(await pool.call(_request("after"), 2.0)) == "after"

    _run(test)


def test_a_peer_without_streams_is_called_unary_and_not_asked_again_for_a_while() -> None:
    class UnaryOnly(Scripted):
        RunSegments = serde.SegmentServiceServicer.RunSegments  # UNIMPLEMENTED, as an older agent

    async def main() -> None:
        servicer = UnaryOnly()
        server, address = await _serve(servicer)
        channel = grpc.aio.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS)
        pool = StreamPool(serde.SegmentServiceStub(channel))
        try:
            for i in range(3):
                assert _answered(await pool.call(_request(f"r{i}"), 2.0)) == f"r{i}"
            assert servicer.unary == 3 and pool.open_streams == 0
            assert pool.streams_refused_until > 0  # the next calls go unary without asking
        finally:
            await pool.aclose()
            await channel.close(None)
            await server.stop(None)

    asyncio.run(main())


def test_beyond_the_stream_cap_calls_go_unary_with_the_same_semantics() -> None:
    async def test(pool: StreamPool, servicer: Scripted, _: grpc.aio.Channel) -> None:
        servicer.behaviour = lambda rid: ResourceExhausted("full") if rid == "u-bad" else None
        got = await asyncio.gather(*(pool.call(_request(f"u{i}"), 2.0) for i in range(5)))
        assert [_answered(g) for g in got] == [f"u{i}" for i in range(5)]
        assert servicer.streams == 2 and servicer.unary == 3
        assert pool.open_streams == 2  # the cap held
        servicer.behaviour = lambda _: "hang"
        hung = [asyncio.ensure_future(pool.call(_request(f"h{i}"), 5.0)) for i in range(2)]
        await asyncio.sleep(0)  # let both take their streams
        servicer.behaviour = lambda rid: ResourceExhausted("full") if rid == "u-bad" else None
        with pytest.raises(SegmentCallFailed) as failed:
            await pool.call(_request("u-bad"), 2.0)
        assert failed.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED and servicer.unary == 4
        servicer.release.set()
        await asyncio.gather(*hung)

    _run(test, max_streams=2, max_idle=2)


def test_an_unreachable_peer_fails_fast_as_unavailable() -> None:
    async def main() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1", options=limits.GRPC_MESSAGE_OPTIONS)
        pool = StreamPool(serde.SegmentServiceStub(channel))
        try:
            with pytest.raises(SegmentCallFailed) as failed:
                await pool.call(_request("r"), 5.0)
            assert failed.value.status is grpc.StatusCode.UNAVAILABLE
            assert pool.open_streams == 0
        finally:
            await pool.aclose()
            await channel.close(None)

    asyncio.run(main())


# --- the server side: SegmentApi.RunSegments ----------------------------------------------------


def _api(run_served: Callable[..., Awaitable[Any]] | None = None) -> SegmentApi:
    """SegmentApi with a stand-in daemon: with ``run_served``, it serves segment ``SHA`` by calling
    it (with the request's deadline); without, it serves nothing (every request: unknown_segment)."""
    served = SimpleNamespace() if run_served is not None else None

    async def run(_: Any, arrays: Any, *, priority: int, deadline: float) -> Any:
        assert run_served is not None
        return await run_served(deadline)

    segments = SimpleNamespace(
        device_id="edge-1", served=lambda sha: served if sha == SHA else None, run_served=run
    )
    return SegmentApi(SimpleNamespace(segments=segments))  # type: ignore[arg-type]


def _result(outputs: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(outputs=outputs or {}, queue_s=0.0, compute_s=0.001, batch_size=1)


def _run_api(
    test: Callable[[SegmentApi, Any], Awaitable[None]],
    run_served: Callable[..., Awaitable[Any]] | None = None,
) -> None:
    async def main() -> None:
        api = _api(run_served)
        server, address = await _serve(api)
        channel = grpc.aio.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS)
        try:
            await test(api, serde.SegmentServiceStub(channel))
        finally:
            await channel.close(None)
            await server.stop(None)

    asyncio.run(main())


def test_refusals_and_malformed_requests_are_answered_in_band_on_one_stream() -> None:
    async def test(api: SegmentApi, stub: Any) -> None:
        call = stub.RunSegments()
        await call.write(_request("r1"))
        first = serde.segment_result_from_pb(await call.read())
        assert isinstance(first, tuple) and first[1].code == "unknown_segment"
        assert first[0] is grpc.StatusCode.FAILED_PRECONDITION
        bad = _request("r2")
        bad.segment_sha256 = "not-a-hash"
        await call.write(bad)
        second = serde.segment_result_from_pb(await call.read())
        assert isinstance(second, tuple) and second[0] is grpc.StatusCode.INVALID_ARGUMENT
        assert "segment_sha256" in str(second[1])
        spent = _request("r3", budget_ms=0.0)
        await call.write(spent)  # no budget given: the default applies, so it is refused as unknown
        third = serde.segment_result_from_pb(await call.read())
        assert isinstance(third, tuple) and third[1].code == "unknown_segment"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await call.code() is grpc.StatusCode.OK

    _run_api(test)


def test_an_idle_stream_is_ended_by_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_api, "STREAM_IDLE_S", 0.2)

    async def test(api: SegmentApi, stub: Any) -> None:
        call = stub.RunSegments()
        await call.write(_request("r1"))
        assert isinstance(serde.segment_result_from_pb(await call.read()), tuple)
        assert await asyncio.wait_for(call.read(), 5.0) is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await call.code() is grpc.StatusCode.OK

    _run_api(test)


def test_close_ends_idle_streams_at_once() -> None:
    async def test(api: SegmentApi, stub: Any) -> None:
        call = stub.RunSegments()
        await call.write(_request("r1"))
        await call.read()
        api.close()
        assert await asyncio.wait_for(call.read(), 5.0) is grpc.aio.EOF  # type: ignore[attr-defined]
        late = stub.RunSegments()  # a stream opened after close ends without serving anything
        await late.write(_request("r2"))
        assert await asyncio.wait_for(late.read(), 5.0) is grpc.aio.EOF  # type: ignore[attr-defined]

    _run_api(test)


def test_a_peer_serving_its_most_streams_is_called_unary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_api, "MAX_STREAMS_SERVED", 1)

    async def test(api: SegmentApi, stub: Any) -> None:
        held = stub.RunSegments()
        await held.write(_request("held"))
        await held.read()  # one stream open: the cap
        pool = StreamPool(stub)
        with pytest.raises(SegmentCallFailed) as failed:
            await pool.call(_request("r"), 5.0)
        # Answered (refused as unknown) by the unary path, not failed for want of a stream.
        assert failed.value.error.code == "unknown_segment"
        assert pool.open_streams == 0
        await pool.aclose()
        await held.done_writing()

    _run_api(test)


def test_a_request_longer_than_the_idle_timeout_is_answered_and_bugs_are_answered_in_band(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(segment_api, "STREAM_IDLE_S", 0.1)
    budgets: list[float] = []

    async def run_served(deadline: float) -> Any:
        budgets.append(deadline - time.monotonic())
        if len(budgets) == 2:
            raise ValueError("a bug in the serving path")
        await asyncio.sleep(0.3)  # longer than the idle timeout: it must not end the stream
        return _result()

    async def test(api: SegmentApi, stub: Any) -> None:
        call = stub.RunSegments()
        await call.write(_request("slow"))
        first = serde.segment_result_from_pb(await asyncio.wait_for(call.read(), 5.0))
        assert isinstance(first, RunSegmentResponse) and first.hops[0].device_id == "edge-1"
        await call.write(_request("bug"))
        second = serde.segment_result_from_pb(await asyncio.wait_for(call.read(), 5.0))
        assert isinstance(second, tuple) and second[0] is grpc.StatusCode.INTERNAL
        assert "a bug" not in str(second[1])  # a bug's text is not sent to peers
        await call.write(_request("huge", budget_ms=1e9))
        third = serde.segment_result_from_pb(await asyncio.wait_for(call.read(), 5.0))
        assert isinstance(third, RunSegmentResponse)  # the stream went on after the bug
        assert api._streams == 1
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert api._streams == 0 and not api._open
        # A budget is capped: a peer cannot pin this hop for longer than MAX_BUDGET_S.
        assert budgets[0] <= 2.0 and budgets[2] <= segment_api.MAX_BUDGET_S

    _run_api(test, run_served)
    assert "failed unexpectedly" in caplog.text
