"""DynamicBatcher against a fake model (pure numpy, records every batch it gets) and a tiny real
onnxruntime session.

Synchronisation is by events, never by sleeping: the fake model reports each batch it starts on an
asyncio queue and can be held on a ``threading.Event`` the test releases, so a test knows exactly
what is running and what is queued. Time-dependent rules use a fake clock where they can; the few
tests of real timers (the queueing delay, deadlines passing while waiting) use delays of tens of ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from agent.serving.batcher import BatchResult, DynamicBatcher
from agent.serving.cost import ComputeCost, CostEstimator
from agent.serving.errors import DeadlineExceeded, NotBatchable, RunFailed
from common.errors import InvalidArgument, ResourceExhausted, TransientError

pytestmark = pytest.mark.timeout(20)
T = TypeVar("T")
WAIT_S = 5.0  # no single await in these tests should come near this


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(15.0):  # in this task: all_tasks() sees only the test's own
            return await coro

    return asyncio.run(bounded())


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reference(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fake model computes, row by row independent (so a batch equals its requests run alone)."""
    x = feeds["x"]
    out = {"y": x * 2.0 + 1.0, "total": x.reshape(len(x), -1).sum(axis=1)}
    if "z" in feeds:
        out["z2"] = feeds["z"] * 3
    return out


class FakeModel:
    """Records batches; optionally held at a gate; reports each start on an asyncio queue."""

    def __init__(
        self,
        *,
        held: bool = False,
        clock: FakeClock | None = None,
        cost: ComputeCost | None = None,
        fail: Callable[[dict[str, np.ndarray]], Exception | None] | None = None,
        outputs: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        self.gate = threading.Event()
        if not held:
            self.gate.set()
        self.batches: list[dict[str, np.ndarray]] = []
        self.clock, self.cost, self.fail, self.outputs = clock, cost, fail, outputs
        self.active = self.max_active = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Queue[int] | None = None

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = asyncio.Queue()

    async def started(self) -> int:
        """Rows of the next batch to start (waits for it)."""
        assert self._started is not None, "call bind() first"
        return await asyncio.wait_for(self._started.get(), WAIT_S)

    @property
    def rows(self) -> list[int]:
        return [len(b["x"]) for b in self.batches]

    def __call__(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)
            self.batches.append({k: np.array(v) for k, v in feeds.items()})
        try:
            rows = len(next(iter(feeds.values())))
            if self._loop is not None and self._started is not None:
                self._loop.call_soon_threadsafe(self._started.put_nowait, rows)
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
            if self.clock is not None and self.cost is not None:
                self.clock.advance(self.cost.batch_s(rows))
            if self.fail is not None and (error := self.fail(feeds)) is not None:
                raise error
            return (self.outputs or reference)(feeds)
        finally:
            with self._lock:
                self.active -= 1


async def turn() -> None:
    """One turn of the event loop: every task created before this runs its first step (submits
    enqueue). Ordering, not timing: nothing here waits for time to pass."""
    await asyncio.sleep(0)


def row(value: float, width: int = 3, rows: int = 1, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=dtype)}


def ids(model: FakeModel) -> list[list[float]]:
    """The value of column 0 of every row, per batch: which requests ran together, in order."""
    return [b["x"][:, 0].tolist() for b in model.batches]


def assert_no_batcher_threads(name: str) -> None:
    leftover = [t.name for t in threading.enumerate() if t.name.startswith(name)]
    assert not leftover, f"threads left behind: {leftover}"


# --- batching ----------------------------------------------------------------------------------


def test_full_batches_start_without_waiting_for_the_delay() -> None:
    """12 requests at once with max 4: three full batches; a 60 s delay never comes into it."""
    model = FakeModel()

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=60.0, name="t-full")
        results = await asyncio.gather(*(b.submit(row(i)) for i in range(12)))
        await b.aclose()
        return list(results)

    results = run(scenario())
    assert model.rows == [4, 4, 4]
    assert ids(model) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], reference(row(i))["y"])
        assert result.batch_size == 4 and result.batch_requests == 4
    assert_no_batcher_threads("t-full")


def test_a_partial_batch_starts_when_its_oldest_request_has_waited_the_delay() -> None:
    model = FakeModel()
    delay = 0.05

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=delay, name="t-delay")
        results = await asyncio.gather(*(b.submit(row(i)) for i in range(3)))
        await b.aclose()
        return list(results)

    results = run(scenario())
    assert model.rows == [3]
    assert all(r.queue_s >= delay for r in results)  # not before the delay ...
    assert max(r.queue_s for r in results) < 1.0  # ... and not much after


def test_requests_queue_while_a_batch_runs_so_the_next_batch_is_bigger() -> None:
    """Delay 0 (no waiting), but what arrives during a run goes together next."""
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0.0)
        first = asyncio.ensure_future(b.submit(row(0)))
        assert await model.started() == 1
        rest = [asyncio.ensure_future(b.submit(row(i))) for i in range(1, 6)]
        await turn()
        model.gate.set()
        await asyncio.gather(first, *rest)
        await b.aclose()

    run(scenario())
    assert model.rows == [1, 5]


def test_batching_off_runs_every_request_alone_at_once() -> None:
    model = FakeModel()

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=60.0)
        results = await asyncio.gather(*(b.submit(row(i)) for i in range(5)))
        # A multi-row request still runs (alone) with batching off.
        results.append(await b.submit(row(9, rows=3)))
        await b.aclose()
        return list(results)

    results = run(scenario())
    assert model.rows == [1, 1, 1, 1, 1, 3]
    assert all(r.queue_s < 1.0 for r in results)
    assert results[-1].outputs["y"].shape == (3, 3)


def test_priority_leaves_the_queue_first_fifo_within_a_priority() -> None:
    model = FakeModel(held=True)
    order = [(10, 0), (11, 0), (12, 5), (13, 1), (14, 5), (15, 0)]  # (id, priority)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=2, max_queue_delay_s=0.0)
        blocker = asyncio.ensure_future(b.submit(row(0)))
        await model.started()
        queued = [asyncio.ensure_future(b.submit(row(i), priority=p)) for i, p in order]
        await turn()
        model.gate.set()
        await asyncio.gather(blocker, *queued)
        await b.aclose()

    run(scenario())
    assert ids(model) == [[0], [12, 14], [13, 10], [11, 15]]


def test_different_signatures_are_batched_separately() -> None:
    model = FakeModel()

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=16, max_queue_delay_s=0.05)
        requests = [
            row(1),
            row(2, width=4),
            row(3),
            row(4, dtype=np.float64),
            {"x": np.full((1, 3), 5, np.float32), "z": np.ones((1, 2), np.int64)},
            row(6, width=4, rows=2),
            row(7),
        ]
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.aclose()
        return list(results)

    results = run(scenario())
    groups = sorted(sorted(set(g)) for g in ids(model))
    assert groups == [[1, 3, 7], [2, 6], [4], [5]]
    assert results[4].outputs["z2"].tolist() == [[3, 3]]
    assert results[3].outputs["y"].dtype == np.float64


def test_outputs_are_split_back_by_rows_and_equal_each_request_run_alone() -> None:
    rng = np.random.default_rng(0)
    requests = [{"x": rng.normal(size=(int(n), 5)).astype(np.float32)} for n in rng.integers(1, 6, 20)]
    model = FakeModel()

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=16, max_queue_delay_s=0.05)
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.aclose()
        return list(results)

    results = run(scenario())
    assert max(model.rows) <= 16 and len(model.rows) < len(requests)  # batched, within the max
    assert sum(model.rows) == sum(len(r["x"]) for r in requests)
    for request, result in zip(requests, results, strict=True):
        expected = reference(request)
        assert set(result.outputs) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(result.outputs[name], expected[name])


def test_a_request_bigger_than_the_max_batch_runs_alone_unsplit() -> None:
    model = FakeModel()

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.05)
        results = await asyncio.gather(b.submit(row(1)), b.submit(row(2, rows=10)), b.submit(row(3)))
        await b.aclose()
        return list(results)

    results = run(scenario())
    assert sorted(model.rows) == [1, 1, 10] or sorted(model.rows) == [2, 10]
    assert results[1].batch_size == 10 and results[1].outputs["y"].shape == (10, 3)


def test_the_session_never_runs_concurrently_even_on_a_shared_pool() -> None:
    model = FakeModel()

    async def scenario() -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            b = DynamicBatcher(model, max_batch_size=3, max_queue_delay_s=0.0, executor=pool)
            await asyncio.gather(*(b.submit(row(i)) for i in range(40)))
            await b.aclose()
            assert not pool._shutdown  # a given executor is left to its owner

    run(scenario())
    assert model.max_active == 1
    assert sum(model.rows) == 40


def test_a_real_onnxruntime_session_batched_equals_unbatched() -> None:
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
        initializer=[onnx.numpy_helper.from_array(weights, "w")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    calls: list[int] = []

    def ort_run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(feeds["x"]))
        return {"y": session.run(["y"], feeds)[0]}

    rng = np.random.default_rng(1)
    requests = [{"x": rng.normal(size=(int(n), 4)).astype(np.float32)} for n in rng.integers(1, 4, 10)]

    async def scenario() -> tuple[list[BatchResult], BaseException | None]:
        b = DynamicBatcher(ort_run, max_batch_size=8, max_queue_delay_s=0.05)
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        bad: BaseException | None = None
        try:  # the graph wants float32: onnxruntime's INVALID_ARGUMENT comes back typed
            await b.submit({"x": np.ones((1, 4), np.float64)})
        except Exception as exc:
            bad = exc
        await b.aclose()
        return list(results), bad

    results, bad = run(scenario())
    assert max(calls) > 1
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result.outputs["y"], request["x"] @ weights, rtol=1e-6)
    assert isinstance(bad, InvalidArgument)


# --- deadlines ---------------------------------------------------------------------------------


def test_a_deadline_already_passed_is_refused_at_once_with_the_shortfall() -> None:
    clock = FakeClock()
    model = FakeModel()

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.01, clock=clock)
        with pytest.raises(DeadlineExceeded) as info:
            await b.submit(row(1), deadline=clock.now - 0.002)
        assert info.value.code == "deadline_exceeded"
        assert info.value.shortfall_s == pytest.approx(0.002)
        assert "2.0 ms" in info.value.message
        assert isinstance(info.value, TransientError) and info.value.retry_after is None
        await b.aclose()

    run(scenario())
    assert model.batches == []


def test_a_deadline_the_estimate_says_cannot_be_met_is_refused_at_once() -> None:
    # Fake seconds: the caller's own wait is bounded by its deadline in real seconds too, so the
    # deadlines here are long enough that a slow test machine cannot make a served request expire.
    clock = FakeClock()
    cost = ComputeCost(10.0, 1.0)
    model = FakeModel(clock=clock, cost=cost)

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0, clock=clock, cost_prior=cost)
        assert b.estimate_wait_s() == pytest.approx(11.0)
        with pytest.raises(DeadlineExceeded) as info:
            await b.submit(row(1), deadline=clock.now + 5.0)
        assert info.value.shortfall_s == pytest.approx(6.0)
        assert "short by 6000.0 ms" in info.value.message
        result = await b.submit(row(2), deadline=clock.now + 20.0)  # enough time: served
        assert result.compute_s == pytest.approx(11.0)
        assert b.stats().refused_deadline == 1
        await b.aclose()

    run(scenario())
    assert ids(model) == [[2]]


def test_a_deadline_passing_while_queued_fails_when_the_batch_forms_and_never_runs() -> None:
    clock = FakeClock()
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0, clock=clock)
        blocker = asyncio.ensure_future(b.submit(row(0)))
        await model.started()
        late = asyncio.ensure_future(b.submit(row(1), deadline=clock.now + 1.0))
        fine = asyncio.ensure_future(b.submit(row(2), deadline=clock.now + 10.0))
        await turn()
        clock.advance(2.0)  # the first deadline passes while both wait behind the blocker
        model.gate.set()
        with pytest.raises(DeadlineExceeded, match="while it was queued"):
            await late
        await blocker
        assert (await fine).outputs["y"].shape == (1, 3)
        assert b.stats().expired == 1
        await b.aclose()

    run(scenario())
    assert ids(model) == [[0], [2]]


def test_a_stuck_session_does_not_hold_a_caller_past_its_deadline() -> None:
    """Real clock: the caller's wait ends at its deadline, though the batch ahead never finishes."""
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0)
        blocker = asyncio.ensure_future(b.submit(row(0)))
        await model.started()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="while it was queued"):
            await b.submit(row(1), deadline=b._clock() + 0.05)
        assert 0.04 <= loop.time() - started < 1.0
        assert b.queued_rows == 0  # withdrawn: it will not run later either
        running = asyncio.ensure_future(b.submit(row(2), deadline=b._clock() + 10.0))
        model.gate.set()
        await blocker
        await running
        await b.aclose()

    run(scenario())
    assert ids(model) == [[0], [2]]


def test_a_sooner_deadline_arriving_after_a_later_one_is_kept_on_time() -> None:
    """Real clock: one timer serves every deadline, so a request with a short budget that arrives
    behind one with a long budget must move it sooner."""
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0)
        blocker = asyncio.ensure_future(b.submit(row(0)))
        await model.started()
        patient = asyncio.ensure_future(b.submit(row(1), deadline=b._clock() + 10.0))
        await turn()  # queued first: the timer is armed for its deadline
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="while it was queued"):
            await b.submit(row(2), deadline=b._clock() + 0.05)
        assert 0.04 <= loop.time() - started < 1.0
        assert not patient.done()  # its own deadline is far off: still waiting
        model.gate.set()
        await blocker
        assert (await patient).batch_size == 1
        await b.aclose()

    run(scenario())
    assert ids(model) == [[0], [1]]


def test_deadlines_still_fire_when_the_batcher_is_used_again_on_a_new_event_loop() -> None:
    model = FakeModel()
    b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0)

    async def first() -> None:  # leaves its loop with the deadline timer armed
        await b.submit(row(0), deadline=b._clock() + 0.2)

    run(first())
    model.gate.clear()  # the next batch is held: only the deadline can end the wait

    async def second() -> None:
        model.bind()
        blocker = asyncio.ensure_future(b.submit(row(1)))
        await model.started()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="while it was queued"):
            await b.submit(row(2), deadline=b._clock() + 0.4)  # later than the first loop's timer
        assert loop.time() - started < 2.0
        model.gate.set()
        await blocker
        await b.aclose()

    run(second())


def test_answered_requests_leave_nothing_behind_in_the_deadline_bookkeeping() -> None:
    """Deadline entries of answered requests are dropped lazily: they must neither keep the
    requests' inputs alive nor pile up."""
    model = FakeModel()

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.0)
        first = row(1)
        kept = weakref.ref(first["x"])
        await b.submit(first, deadline=b._clock() + 30.0)
        del first
        assert kept() is None  # the batcher holds no reference to an answered request's inputs
        for i in range(500):
            await asyncio.gather(*(b.submit(row(i), deadline=b._clock() + 30.0) for _ in range(3)))
        assert len(b._deadlines) <= 2 * 3 + 64 + 3  # bounded by the waiting ones, not by all ever seen
        await b.aclose()

    run(scenario())


def test_a_deadline_passing_while_its_batch_runs_is_an_error_not_a_late_answer() -> None:
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.0)
        patient = asyncio.ensure_future(b.submit(row(0)))
        hurried = asyncio.ensure_future(b.submit(row(1), deadline=b._clock() + 0.05))
        assert await model.started() == 2  # both in one batch
        with pytest.raises(DeadlineExceeded, match="while its batch was running"):
            await hurried
        model.gate.set()
        assert (await patient).batch_size == 2  # the batch ran on for the other request
        await b.aclose()

    run(scenario())


def test_estimate_counts_the_running_batch_the_rows_ahead_and_the_delay() -> None:
    clock = FakeClock()
    model = FakeModel(held=True)
    prior = ComputeCost(0.010, 0.001)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.1, clock=clock, cost_prior=prior)
        # Idle: a lone request waits the whole delay, then its batch of one runs.
        assert b.estimate_wait_s() == pytest.approx(0.1 + 0.011)
        running = asyncio.ensure_future(b.submit(row(0, rows=4)))  # full: runs at once
        assert await model.started() == 4
        queued = [asyncio.ensure_future(b.submit(row(i))) for i in range(1, 6)]
        await turn()
        # Rest of the running batch (0.014) + 6 rows in 2 batches (2 x 0.010 + 6 x 0.001).
        assert b.estimate_wait_s() == pytest.approx(0.014 + 0.026)
        # At priority 1 nothing queued is ahead: the delay (0.1 from the oldest) dominates.
        assert b.estimate_wait_s(priority=1) == pytest.approx(0.1 + 0.011)
        model.gate.set()
        await running
        await b.aclose()  # drains the last partial batch at once
        await asyncio.gather(*queued)

    run(scenario())
    assert model.rows == [4, 4, 1]


# Calls costing more than rows, and rows costing more than calls: each hides a different term of
# the bound in the slack of the others, so only both together check every term.
@pytest.mark.parametrize("prior", [ComputeCost(0.010, 0.001), ComputeCost(0.0001, 0.010)])
def test_the_quick_admission_bound_is_never_below_the_exact_estimate(prior: ComputeCost) -> None:
    """Admission skips the exact estimate when the deadline is beyond ``_estimate_bound``; a bound
    below the estimate would admit requests that cannot be served in time. Checked with a batch in
    flight and queues of three signatures (one with part-full batches) at several priorities."""
    clock = FakeClock()
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        # A delay shorter than the batch in flight, so the bound's every term counts somewhere.
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.002, clock=clock, cost_prior=prior)
        assert b._estimate(1, None, None, clock.now) <= b._estimate_bound(1)
        running = asyncio.ensure_future(b.submit(row(0, rows=4)))
        assert await model.started() == 4
        queued = [asyncio.ensure_future(b.submit(row(i, width=3), priority=i % 3)) for i in range(1, 6)]
        queued += [asyncio.ensure_future(b.submit(row(i, width=5, rows=3), priority=1)) for i in range(6, 8)]
        queued += [asyncio.ensure_future(b.submit(row(i, width=7, rows=2))) for i in range(8, 10)]
        await turn()
        clock.advance(0.001)  # part of the batch in flight has run
        signatures = [*b._queues, None, (("x", "<f4", (9,)),)]  # queued, any, and a new one
        for rows in (1, 2, 4, 9):
            for priority in (None, 0, 1, 2, 5):
                for signature in signatures:
                    exact = b._estimate(rows, priority, signature, clock.now)
                    assert exact <= b._estimate_bound(rows) + 1e-12, (rows, priority, signature)
        # And the refusal still comes from the exact estimate: just under it is refused.
        exact = b._estimate(1, 0, (("x", "<f4", (3,)),), clock.now)
        with pytest.raises(DeadlineExceeded, match="cannot be met"):
            await b.submit(row(99), deadline=clock.now + exact * 0.99)
        model.gate.set()
        await running
        await b.aclose()
        await asyncio.gather(*queued)

    run(scenario())


def test_the_estimate_learns_per_call_and_per_row_cost_from_measured_batches() -> None:
    clock = FakeClock()
    true_cost = ComputeCost(0.004, 0.0005)
    model = FakeModel(clock=clock, cost=true_cost)

    async def scenario() -> ComputeCost | None:
        b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0.0, clock=clock)
        assert b.cost is None and b.estimate_wait_s() == 0.0
        for rows in [1, 8, 3, 8, 1, 5, 8, 2] * 3:
            await b.submit(row(1, rows=rows))
        await b.aclose()
        return b.cost

    learned = run(scenario())
    assert learned is not None
    assert learned.per_call_s == pytest.approx(true_cost.per_call_s, rel=1e-6)
    assert learned.per_row_s == pytest.approx(true_cost.per_row_s, rel=1e-6)


# --- bounds and failures -----------------------------------------------------------------------


def test_more_than_max_queue_rows_is_refused_with_a_retry_after() -> None:
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0, max_queue=4)
        blocker = asyncio.ensure_future(b.submit(row(0)))  # running: does not count
        await model.started()
        queued = [asyncio.ensure_future(b.submit(row(i))) for i in range(1, 4)]
        queued.append(asyncio.ensure_future(b.submit(row(4))))
        await turn()
        assert b.queued_rows == 4
        with pytest.raises(ResourceExhausted) as info:
            await b.submit(row(5))
        assert info.value.retry_after is not None and info.value.retry_after > 0
        with pytest.raises(ResourceExhausted):
            await b.submit(row(5, rows=2))
        with pytest.raises(InvalidArgument, match="more than"):
            await b.submit(row(6, rows=5))  # could never fit
        model.gate.set()
        await asyncio.gather(blocker, *queued)
        assert b.stats().refused_full == 2
        await b.aclose()

    run(scenario())
    assert sum(model.rows) == 5


def test_a_failing_run_fails_its_whole_batch_and_the_batcher_keeps_serving() -> None:
    def poison(feeds: dict[str, np.ndarray]) -> Exception | None:
        return RuntimeError("kernel exploded") if (feeds["x"] > 100).any() else None

    model = FakeModel(fail=poison)

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.05)
        outcomes = await asyncio.gather(b.submit(row(1)), b.submit(row(999)), return_exceptions=True)
        assert all(isinstance(o, RunFailed) for o in outcomes), outcomes
        error = outcomes[0]
        assert isinstance(error, TransientError) and error.code == "run_failed"
        assert "kernel exploded" in str(error) and "2 rows" in str(error)
        after = await b.submit(row(2))
        np.testing.assert_array_equal(after.outputs["y"], reference(row(2))["y"])
        assert b.stats().failed_batches == 1
        await b.aclose()

    run(scenario())
    assert model.rows == [2, 1]


def test_typed_errors_from_run_pass_through() -> None:
    model = FakeModel(fail=lambda feeds: InvalidArgument("input 'x' expects dtype float32"))

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.0)
        with pytest.raises(InvalidArgument, match="expects dtype"):
            await b.submit(row(1))
        await b.aclose()

    run(scenario())


def test_outputs_without_the_batch_on_axis_0_are_not_batchable() -> None:
    model = FakeModel(outputs=lambda feeds: {"y": np.zeros(3, np.float32), "ok": feeds["x"]})

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.05)
        outcomes = await asyncio.gather(b.submit(row(1)), b.submit(row(2)), return_exceptions=True)
        assert all(isinstance(o, NotBatchable) for o in outcomes), outcomes
        alone = await b.submit(row(3, rows=3))  # a batch of one request is passed through as is
        assert alone.outputs["y"].shape == (3,)
        await b.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "at least one input"),
        ({"x": [[1.0]]}, "numpy array"),
        ({"x": np.array(1.0, np.float32)}, "scalar"),
        ({"x": np.zeros((2, 3)), "z": np.zeros((3, 3))}, "disagree on the rows"),
        ({"x": np.zeros((0, 3))}, "at least one row"),
    ],
)
def test_malformed_requests_are_invalid_arguments(inputs: Any, message: str) -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.0)
        with pytest.raises(InvalidArgument, match=message):
            await b.submit(inputs)
        await b.aclose()

    run(scenario())
    assert model.batches == []


def test_constructor_checks_its_settings() -> None:
    with pytest.raises(InvalidArgument):
        DynamicBatcher(reference, max_batch_size=0, max_queue_delay_s=0.0)
    with pytest.raises(InvalidArgument):
        DynamicBatcher(reference, max_batch_size=1, max_queue_delay_s=-1.0)
    with pytest.raises(InvalidArgument):
        DynamicBatcher(reference, max_batch_size=1, max_queue_delay_s=0.0, max_queue=0)


# --- cancellation, closing, leaks --------------------------------------------------------------


def test_a_cancelled_caller_is_withdrawn_and_never_run() -> None:
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0)
        blocker = asyncio.ensure_future(b.submit(row(0)))
        await model.started()
        gone = asyncio.ensure_future(b.submit(row(1)))
        await turn()
        assert b.queued_rows == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.queued_rows == 0
        model.gate.set()
        await blocker
        await b.aclose()

    run(scenario())
    assert ids(model) == [[0]]


def test_aclose_drains_what_is_queued_without_waiting_for_the_delay() -> None:
    model = FakeModel()

    async def scenario() -> list[BatchResult]:
        b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=60.0, name="t-drain")
        pending = [asyncio.ensure_future(b.submit(row(i))) for i in range(3)]
        await turn()
        await b.aclose()
        results = await asyncio.gather(*pending)
        with pytest.raises(TransientError) as info:
            await b.submit(row(9))
        assert info.value.code == "shutting_down" and info.value.retry_after
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return list(results)

    results = run(scenario())
    assert model.rows == [3] and len(results) == 3
    assert_no_batcher_threads("t-drain")


def test_aclose_without_drain_fails_the_queue_and_finishes_the_batch_in_flight() -> None:
    model = FakeModel(held=True)

    async def scenario() -> None:
        model.bind()
        b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0, name="t-close")
        running = asyncio.ensure_future(b.submit(row(0)))
        await model.started()
        queued = [asyncio.ensure_future(b.submit(row(i))) for i in range(1, 4)]
        await turn()
        closing = asyncio.ensure_future(b.aclose(drain=False))
        outcomes = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(o, TransientError) and o.code == "shutting_down" for o in outcomes)
        assert not closing.done()  # it waits for the batch in flight
        model.gate.set()
        assert (await running).batch_size == 1
        await closing
        await b.aclose()  # again: harmless
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(scenario())
    assert ids(model) == [[0]]
    assert_no_batcher_threads("t-close")


def test_an_idle_batcher_holds_no_task() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.01, name="t-idle")
        await asyncio.gather(*(b.submit(row(i)) for i in range(6)))
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the dispatcher ended with the queue
        await b.submit(row(7))  # and a new one starts for the next request
        await b.aclose()

    run(scenario())
    assert sum(model.rows) == 7
    assert_no_batcher_threads("t-idle")


# --- the cost model ----------------------------------------------------------------------------


def test_cost_estimator_without_size_variety_takes_the_cost_as_per_row() -> None:
    est = CostEstimator()
    assert est.cost is None
    for _ in range(5):
        est.observe(4, 0.008)
    cost = est.cost
    assert cost is not None and cost.per_call_s == 0.0 and cost.per_row_s == pytest.approx(0.002)
    assert cost.batch_s(4) == pytest.approx(0.008)


def test_cost_estimator_prior_is_replaced_by_what_is_measured() -> None:
    est = CostEstimator(prior=ComputeCost(0.010, 0.001), prior_rows=32, alpha=0.3)
    prior = est.cost
    assert prior is not None
    assert prior.per_call_s == pytest.approx(0.010) and prior.per_row_s == pytest.approx(0.001)
    for _ in range(40):
        est.observe(1, 0.002)
        est.observe(16, 0.002 + 15 * 0.0002)
    cost = est.cost
    assert cost is not None
    assert cost.batch_s(1) == pytest.approx(0.002, rel=1e-3)
    assert cost.batch_s(16) == pytest.approx(0.005, rel=1e-3)
    est.observe(0, 1.0)
    est.observe(3, float("nan"))  # ignored
    assert est.batches == 80


def test_compute_cost_from_two_profile_points() -> None:
    cost = ComputeCost.from_two_points(1, 0.002, 32, 0.033)
    assert cost.per_call_s == pytest.approx(0.001) and cost.per_row_s == pytest.approx(0.001)
    assert cost.rows_s(40, 32) == pytest.approx(2 * 0.001 + 40 * 0.001)
    # Batch 32 cheaper per call than batch 1 (noise): clamped to non-negative, never below the data.
    odd = ComputeCost.from_two_points(1, 0.005, 32, 0.004)
    assert odd.per_row_s == 0.0 and odd.per_call_s == pytest.approx(0.005)
    with pytest.raises(InvalidArgument):
        ComputeCost(-1.0, 0.0)
