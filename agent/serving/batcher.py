"""A dynamic batcher in front of one model session, like Triton's: requests that arrive close together
run as one batch, which on a CPU (and more so on an NPU or GPU) costs far less per row than one call
each.

Why each rule is what it is:

- **One batch at a time.** A serving agent holds one onnxruntime session per segment, sized (intra-op
  threads) for the slot the planner gave it; running it concurrently would only fight over those
  threads. So one dispatcher task per batcher runs one batch at a time in ``executor`` (one thread of
  its own unless given one), and the event loop stays free for the control stream. While a batch
  runs, new requests queue: that is what makes the next batch bigger under load.
- **When a batch starts.** As soon as the session is free and the batch is full (``max_batch_size``
  rows), or its oldest request has waited ``max_queue_delay_s``, whichever comes first. With a
  delay of 0 nothing waits: a batch is what queued while the one before ran (Triton's
  ``max_queue_delay_microseconds: 0``). With ``max_batch_size=1`` batching is off: every request
  runs alone, at once.
- **What goes together.** Requests whose inputs share names, dtypes and non-batch shapes (a
  *signature*) are concatenated along axis 0, in priority order, up to ``max_batch_size`` rows; other
  signatures are batched separately, never mixed. A request with more rows than ``max_batch_size``
  runs alone, unsplit (so a multi-row request still runs with batching off). Outputs are split back
  by rows, as views into the batch's outputs.
- **Priority.** Higher ``priority`` leaves the queue first, FIFO within a priority; across signatures,
  the ready batch whose first request ranks highest runs first.
- **Deadlines** are absolute times on ``clock``. A request whose deadline has passed, or that the
  estimate says cannot be met, is refused at once (``DeadlineExceeded`` with the shortfall), before it
  takes a place in the queue. One whose deadline passes while it waits is failed then (the caller's
  wait is bounded by its deadline) and never run; a batch being formed drops expired requests too.
  A request whose batch is already running when its deadline passes is answered with
  ``DeadlineExceeded``, not late; the batch runs on for the others.
- **Bounded.** At most ``max_queue`` rows wait (the batch running does not count); more is refused
  with ``ResourceExhausted`` whose ``retry_after`` estimates when there will be room.
- **Failures stay in their batch.** A ``run`` that raises fails every request of that batch, typed
  (see ``_classify``), and the batcher goes on with the next one.

Not thread-safe: a batcher belongs to the event loop that first submits to it, and every method is
called on that loop's thread. The dispatcher task exists only while something is queued, so an idle
batcher holds no task; ``aclose`` waits for the batch in flight and shuts down the batcher's own
thread (never a given executor).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import heapq
import itertools
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from agent.serving.cost import ComputeCost, CostEstimator
from agent.serving.errors import DeadlineExceeded, NotBatchable, RunFailed
from common.errors import EdgefleetError, InvalidArgument, ResourceExhausted, TransientError
from common.fastinit import slot_init

log = logging.getLogger(__name__)

#: The blocking model call: named inputs (batch on axis 0) to named outputs (batch on axis 0).
RunFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
#: What must match for requests to share a batch: (name, dtype, shape without axis 0) per input.
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]
#: ``retry_after`` of requests refused or failed because the batcher is closing.
SHUTDOWN_RETRY_AFTER_S = 1.0
#: Added to ``_estimate_bound`` for the float rounding of the exact estimate's clock arithmetic.
_ROUNDING_S = 1e-6
#: Deadline entries of answered requests tolerated beyond twice the waiting ones before compaction.
_DEADLINE_SLACK = 64


@slot_init  # one per served request: see common.fastinit
@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's answer and what it cost, for per-hop telemetry."""

    outputs: dict[str, np.ndarray]  # this request's rows only
    queue_s: float  # from submit to its batch starting
    compute_s: float  # the whole batch's run (shared by every request in it)
    batch_size: int  # rows run together
    batch_requests: int  # requests run together


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """Counters for status and telemetry (since the batcher was made)."""

    name: str
    queued_rows: int
    queued_requests: int
    batches: int
    rows_run: int
    failed_batches: int
    refused_deadline: int  # refused at submit: the deadline had passed or could not be met
    expired: int  # deadline passed while queued or running
    refused_full: int  # ResourceExhausted
    cost: ComputeCost | None

    @property
    def mean_batch_size(self) -> float:
        return self.rows_run / self.batches if self.batches else 0.0


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # settled, withdrawn or expired


@dataclass(eq=False, slots=True)
class _Request:
    seq: int
    priority: int
    rows: int
    inputs: dict[str, np.ndarray]
    signature: Signature
    enqueued: float
    deadline: float | None
    future: asyncio.Future[BatchResult]
    state: _State = _State.QUEUED


@dataclass(eq=False, slots=True)
class _Queue:
    """The requests of one signature: FIFO order (for the oldest) and priority order (a heap whose
    entries for withdrawn requests are dropped when they surface)."""

    signature: Signature
    fifo: OrderedDict[int, _Request] = field(default_factory=OrderedDict)
    heap: list[tuple[int, int, _Request]] = field(default_factory=list)
    rows: int = 0
    rows_by_priority: Counter[int] = field(default_factory=Counter)

    def push(self, request: _Request) -> None:
        self.fifo[request.seq] = request
        heapq.heappush(self.heap, (-request.priority, request.seq, request))
        self.rows += request.rows
        self.rows_by_priority[request.priority] += request.rows

    def remove(self, request: _Request) -> None:
        del self.fifo[request.seq]
        self.rows -= request.rows
        self.rows_by_priority[request.priority] -= request.rows
        if not self.rows_by_priority[request.priority]:
            del self.rows_by_priority[request.priority]

    def head(self) -> _Request | None:
        """The request that leaves next: highest priority, then oldest."""
        while self.heap and self.heap[0][1] not in self.fifo:
            heapq.heappop(self.heap)
        return self.heap[0][2] if self.heap else None

    def oldest(self) -> _Request:
        return next(iter(self.fifo.values()))

    def rows_ahead(self, priority: int | None) -> int:
        """Rows that leave before a new request at ``priority`` (None: all of them)."""
        if priority is None:
            return self.rows
        return sum(rows for p, rows in self.rows_by_priority.items() if p >= priority)


class DynamicBatcher:
    """Batches requests for one ``run`` (one model session); see the module docstring for the rules.

    ``cost_prior`` seeds the compute-time estimate (e.g. from the segment's profile at batch 1 and
    32) so deadlines are judged well before the first batch has been measured; without it the
    estimate counts no compute time until then.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue: int = 1024,
        executor: concurrent.futures.Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        cost_prior: ComputeCost | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise InvalidArgument(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not math.isfinite(max_queue_delay_s) or max_queue_delay_s < 0:
            raise InvalidArgument(f"max_queue_delay_s must be a finite >= 0, got {max_queue_delay_s}")
        if max_queue < 1:
            raise InvalidArgument(f"max_queue must be at least 1, got {max_queue}")
        self.name = name or f"batcher-{id(self):x}"
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue = max_queue
        self._run = run
        self._clock = clock
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=self.name
        )
        self._batching = max_batch_size > 1 and max_queue_delay_s > 0
        self._queues: dict[Signature, _Queue] = {}
        self._queued_rows = 0
        self._queued_requests = 0
        self._seq = itertools.count()
        self._cost = CostEstimator(prior=cost_prior, prior_rows=max_batch_size)
        self._running: tuple[float, int] | None = None  # (started, rows) of the batch in flight
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it belongs to (first submit's)
        self._wakeup = asyncio.Event()
        # Deadlines are kept by one timer for the whole batcher, armed for the earliest deadline a
        # caller still waits on: a timer per request (armed, then cancelled when it is answered, as
        # nearly all are) cost 6% of a served request's own instructions. A heap of (deadline, seq,
        # request); entries of answered requests are dropped lazily, and by compaction when they
        # outnumber the waiting ones (they hold no inputs: see ``_withdraw``).
        self._deadlines: list[tuple[float, int, _Request]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf  # the deadline the timer is armed for
        self._waiting_with_deadline = 0
        self._closing = False
        self._batches = self._rows_run = self._failed_batches = 0
        self._refused_deadline = self._expired = self._refused_full = 0

    # -- public ---------------------------------------------------------------------------------

    async def submit(
        self, inputs: Mapping[str, np.ndarray], *, priority: int = 0, deadline: float | None = None
    ) -> BatchResult:
        """Run ``inputs`` (every input with its rows on axis 0) in the next suitable batch.

        Raises InvalidArgument (malformed request), DeadlineExceeded (see the module docstring),
        ResourceExhausted (queue full), TransientError ``shutting_down`` (closing), or whatever the
        batch's run failed with (``_classify``). Cancelling the caller withdraws a queued request.
        """
        if self._closing:
            raise TransientError(
                f"{self.name} is shutting down", code="shutting_down", retry_after=SHUTDOWN_RETRY_AFTER_S
            )
        feeds, rows, signature = _check_inputs(inputs)
        if rows > self.max_queue:
            raise InvalidArgument(
                f"the request has {rows} rows, more than {self.name} ever queues ({self.max_queue})"
            )
        now = self._clock()
        if deadline is not None:
            self._check_deadline(deadline, now, rows, priority, signature)
        if self._queued_rows + rows > self.max_queue:
            self._refused_full += 1
            retry_after = self._drain_s(self._queued_rows + rows - self.max_queue, now)
            raise ResourceExhausted(
                f"{self.name} queue is full ({self._queued_rows} rows queued, at most {self.max_queue}); "
                f"retry in about {retry_after * 1e3:.0f} ms",
                retry_after=retry_after,
            )
        loop = self._loop
        if loop is None or loop.is_closed():
            # Looked up once: on Python 3.11 every get_running_loop() is a getpid() syscall, a
            # visible share of a served request's CPU. (A batcher belongs to one loop: see above.)
            loop = self._loop = asyncio.get_running_loop()
            # A closed loop's timer never fires, and its callers wait no more.
            self._deadline_timer, self._timer_due = None, math.inf
            self._deadlines, self._waiting_with_deadline = [], 0
        request = _Request(
            next(self._seq), priority, rows, feeds, signature, now, deadline, loop.create_future()
        )
        queue = self._queues.get(signature)
        if queue is None:
            queue = self._queues[signature] = _Queue(signature)
        queue.push(request)
        self._queued_rows += rows
        self._queued_requests += 1
        self._wake(loop)
        # At the deadline the future is failed, unless its batch settled it first: whichever runs
        # first decides, once.
        try:
            if deadline is not None:
                self._watch_deadline(request, deadline, loop)
            return await request.future
        finally:
            self._withdraw(request)
            if deadline is not None:
                self._unwatch_deadline()

    def estimate_wait_s(self, rows: int = 1, *, priority: int | None = None) -> float:
        """Expected seconds from now until a new request of ``rows`` rows would be answered: the rest
        of the batch in flight, the queued rows ahead of it (at ``priority`` or above; None: all)
        in batches of ``max_batch_size``, the queueing delay while its batch is not full, and its
        own batch's compute. Treats every queued request as sharing the new one's signature."""
        return self._estimate(rows, priority, None, self._clock())

    @property
    def cost(self) -> ComputeCost | None:
        """The current compute-time estimate (None before anything was measured, without a prior)."""
        return self._cost.cost

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def stats(self) -> BatcherStats:
        return BatcherStats(
            name=self.name,
            queued_rows=self._queued_rows,
            queued_requests=self._queued_requests,
            batches=self._batches,
            rows_run=self._rows_run,
            failed_batches=self._failed_batches,
            refused_deadline=self._refused_deadline,
            expired=self._expired,
            refused_full=self._refused_full,
            cost=self._cost.cost,
        )

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop taking requests; with ``drain`` run everything queued (at once, without waiting for
        the queueing delay; deadlines still apply), else fail it with TransientError
        ``shutting_down``. Waits for the batch in flight, then shuts down the batcher's own thread.
        Safe to call more than once."""
        self._closing = True
        if not drain:
            self._fail_queued(
                TransientError(
                    f"{self.name} closed before the request ran",
                    code="shutting_down",
                    retry_after=SHUTDOWN_RETRY_AFTER_S,
                )
            )
        self._wakeup.set()
        if self._task is not None and not self._task.done():
            await self._task
        if self._own_executor:
            self._executor.shutdown(wait=True)  # nothing runs any more: returns at once

    # -- admission --------------------------------------------------------------------------------

    def _check_deadline(
        self, deadline: float, now: float, rows: int, priority: int, signature: Signature
    ) -> None:
        if not math.isfinite(deadline):
            raise InvalidArgument(f"deadline must be a finite time on the batcher's clock, got {deadline}")
        left = deadline - now
        if left <= 0:
            self._refused_deadline += 1
            raise DeadlineExceeded(
                f"{self.name}: the deadline passed {-left * 1e3:.1f} ms before the request arrived",
                shortfall_s=-left,
            )
        if left > self._estimate_bound(rows):
            return  # the common case, a budget of far more than the queue holds: no need to refine
        expected = self._estimate(rows, priority, signature, now)
        if expected > left:
            self._refused_deadline += 1
            ahead = sum(q.rows_ahead(priority) for q in self._queues.values())
            raise DeadlineExceeded(
                f"{self.name}: the deadline cannot be met: about {expected * 1e3:.1f} ms expected "
                f"({ahead} rows queued ahead) with {left * 1e3:.1f} ms left, "
                f"short by {(expected - left) * 1e3:.1f} ms",
                shortfall_s=expected - left,
            )

    def _estimate(self, rows: int, priority: int | None, signature: Signature | None, now: float) -> float:
        cost = self._cost.cost
        busy = 0.0  # until the session is free for the new request's batch
        if self._running is not None and cost is not None:
            started, running_rows = self._running
            busy = max(0.0, started + cost.batch_s(running_rows) - now)
        own_rows = 0
        oldest: float | None = None
        for sig, queue in self._queues.items():
            ahead = queue.rows_ahead(priority)
            if signature is None or sig == signature:
                own_rows += ahead
                first = queue.oldest().enqueued
                oldest = first if oldest is None else min(oldest, first)
            elif cost is not None:
                busy += cost.rows_s(ahead, self.max_batch_size)
        total = own_rows + max(rows, 1)
        delay = 0.0
        if self._batching and total < self.max_batch_size:
            delay = max(0.0, (now if oldest is None else oldest) + self.max_queue_delay_s - now)
        own = cost.rows_s(total, self.max_batch_size) if cost is not None else 0.0
        return max(busy, delay) + own

    def _estimate_bound(self, rows: int) -> float:
        """An upper bound of ``_estimate`` for any priority and signature, in O(1): the whole batch in
        flight, the full queueing delay, and every queued row plus these in batches of their own
        signature (each signature's last batch may be part full). Admission takes it when the
        deadline is beyond it, which spares the exact sum over the queues on the serving path."""
        cost = self._cost.cost
        if cost is None:
            return self.max_queue_delay_s + _ROUNDING_S
        total = self._queued_rows + rows
        batches = -(-total // self.max_batch_size) + len(self._queues) + 1
        bound = self.max_queue_delay_s + cost.per_call_s * batches + cost.per_row_s * total
        if self._running is not None:
            bound += cost.batch_s(self._running[1])
        # The exact estimate subtracts clock readings (~1e6 s on a monotonic clock), which can round
        # a few 1e-11 s above its terms' bounds: a microsecond more keeps this an upper bound.
        return bound + _ROUNDING_S

    def _drain_s(self, rows: int, now: float) -> float:
        """Roughly how long until ``rows`` queued rows have left the queue."""
        cost = self._cost.cost
        if cost is None:
            return max(self.max_queue_delay_s, 0.01)
        busy = 0.0
        if self._running is not None:
            started, running_rows = self._running
            busy = max(0.0, started + cost.batch_s(running_rows) - now)
        return max(busy + cost.rows_s(rows, self.max_batch_size), 0.001)

    def _withdraw(self, request: _Request) -> None:
        """The caller stopped waiting (answered, failed, expired or cancelled): take the request out of
        its queue if it is still there, and make sure nothing is set on its future any more."""
        if request.state is _State.QUEUED:
            self._dequeue(request)
            request.state = _State.DONE
        # Its deadline entry may outlive it for a while; its inputs need not (a batch that runs
        # has them in its own list).
        request.inputs = {}
        if not request.future.done():
            request.future.cancel()
        elif not request.future.cancelled():
            request.future.exception()  # seen (a caller cancelled just as it failed): no "never retrieved"

    def _watch_deadline(self, request: _Request, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting_with_deadline += 1
        heapq.heappush(self._deadlines, (deadline, request.seq, request))
        if deadline < self._timer_due:
            self._arm_deadline_timer(loop, deadline)

    def _unwatch_deadline(self) -> None:
        """Its caller stopped waiting; compact the entries of answered requests if they pile up."""
        self._waiting_with_deadline -= 1
        if len(self._deadlines) > 2 * self._waiting_with_deadline + _DEADLINE_SLACK:
            self._deadlines = [e for e in self._deadlines if not e[2].future.done()]
            heapq.heapify(self._deadlines)

    def _arm_deadline_timer(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._timer_due = deadline
        self._deadline_timer = loop.call_later(max(deadline - self._clock(), 0.0), self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: fail every waiting request whose deadline has come, then re-arm for the next."""
        self._deadline_timer = None
        # The timer fired, so its deadline has come whatever the clock says (an injected clock may
        # lag the loop's).
        now = max(self._clock(), self._timer_due)
        self._timer_due = math.inf
        heap = self._deadlines
        while heap and (heap[0][0] <= now or heap[0][2].future.done()):
            request = heapq.heappop(heap)[2]
            self._expire(request)
        if heap:
            self._arm_deadline_timer(loop, heap[0][0])

    def _expire(self, request: _Request) -> None:
        if request.future.done():
            return
        error = self._expire_error(request, self._clock())  # says where it was: read the state first
        if request.state is _State.QUEUED:
            self._dequeue(request)  # never run now, even if a batch forms before its caller wakes
            request.state = _State.DONE
        request.future.set_exception(error)

    def _expire_error(self, request: _Request, now: float) -> DeadlineExceeded:
        self._expired += 1
        assert request.deadline is not None
        where = "while its batch was running" if request.state is _State.RUNNING else "while it was queued"
        return DeadlineExceeded(
            f"{self.name}: the deadline passed {where} ({(now - request.enqueued) * 1e3:.1f} ms after "
            "it arrived)",
            shortfall_s=max(now - request.deadline, 0.0),
        )

    # -- dispatching ------------------------------------------------------------------------------

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._dispatch(), name=self.name)

    async def _dispatch(self) -> None:
        """Run batches while anything is queued, then end (the next submit starts a new one)."""
        loop = asyncio.get_running_loop()
        try:
            while self._queues:
                now = self._clock()
                queue, due = self._ready_queue(now)
                if queue is None:
                    self._wakeup.clear()
                    timeout = 0.0 if due is None else max(due - now, 0.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout)
                    continue
                batch = self._form_batch(queue, now)
                if batch:
                    await self._run_batch(batch, loop)
        except asyncio.CancelledError:
            self._fail_queued(TransientError(f"{self.name} was cancelled", code="shutting_down"))
            raise
        except Exception:  # a bug here must not leave callers waiting forever
            log.exception("%s: dispatcher failed; failing everything queued", self.name)
            self._fail_queued(EdgefleetError(f"{self.name} failed internally", code="internal"))

    def _ready_queue(self, now: float) -> tuple[_Queue | None, float | None]:
        """The queue whose batch should run now (its first request ranking highest), or None and the
        time the earliest one becomes due."""
        best: _Queue | None = None
        best_key: tuple[int, int] | None = None
        due: float | None = None
        for queue in self._queues.values():
            head = queue.head()
            if head is None:  # pragma: no cover - empty queues are removed
                continue
            oldest_due = queue.oldest().enqueued + self.max_queue_delay_s
            if self._closing or not self._batching or queue.rows >= self.max_batch_size or oldest_due <= now:
                key = (-head.priority, head.seq)
                if best_key is None or key < best_key:
                    best, best_key = queue, key
            else:
                due = oldest_due if due is None else min(due, oldest_due)
        return best, due

    def _form_batch(self, queue: _Queue, now: float) -> list[_Request]:
        """Take requests in priority order up to ``max_batch_size`` rows, failing expired ones."""
        batch: list[_Request] = []
        rows = 0
        while (head := queue.head()) is not None:
            if head.deadline is not None and head.deadline <= now:
                self._dequeue(head)
                error = self._expire_error(head, now)
                head.state = _State.DONE
                if not head.future.done():
                    head.future.set_exception(error)
                continue
            if batch and rows + head.rows > self.max_batch_size:
                break
            self._dequeue(head)
            head.state = _State.RUNNING
            batch.append(head)
            rows += head.rows
            if rows >= self.max_batch_size:
                break
        return batch

    def _dequeue(self, request: _Request) -> None:
        queue = self._queues[request.signature]
        queue.remove(request)
        self._queued_rows -= request.rows
        self._queued_requests -= 1
        if not queue.fifo:
            del self._queues[request.signature]

    async def _run_batch(self, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        rows = sum(r.rows for r in batch)
        started = self._clock()
        self._running = (started, rows)
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._execute, [r.inputs for r in batch], [r.rows for r in batch]
            )
        except asyncio.CancelledError:
            for request in batch:
                self._settle(
                    request, error=TransientError(f"{self.name} was cancelled", code="shutting_down")
                )
            raise
        except Exception as exc:
            error = self._classify(exc, rows, len(batch))
            self._failed_batches += 1
            log.warning(
                "%s: batch of %d rows (%d requests) failed (%s): %s",
                self.name,
                rows,
                len(batch),
                error.code,
                error.message,
            )
            for request in batch:
                self._settle(request, error=error)
            return
        finally:
            self._running = None
        compute_s = self._clock() - started
        self._cost.observe(rows, compute_s)
        self._batches += 1
        self._rows_run += rows
        log.debug("%s: ran %d rows (%d requests) in %.2f ms", self.name, rows, len(batch), compute_s * 1e3)
        for request, out in zip(batch, outputs, strict=True):
            self._settle(
                request,
                result=BatchResult(
                    outputs=out,
                    queue_s=started - request.enqueued,
                    compute_s=compute_s,
                    batch_size=rows,
                    batch_requests=len(batch),
                ),
            )

    def _execute(self, inputs: list[dict[str, np.ndarray]], rows: list[int]) -> list[dict[str, np.ndarray]]:
        """In the executor thread: concatenate, run, split back by rows."""
        if len(inputs) == 1:
            return [dict(self._run(inputs[0]))]
        feeds = {name: np.concatenate([part[name] for part in inputs], axis=0) for name in inputs[0]}
        outputs = self._run(feeds)
        total = sum(rows)
        for name, value in outputs.items():
            if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != total:
                shape = list(value.shape) if isinstance(value, np.ndarray) else type(value).__name__
                raise NotBatchable(
                    f"{self.name}: output {name!r} of a batch of {total} rows has shape {shape}, not the "
                    "batch on axis 0; serve this segment with max_batch_size=1"
                )
        bounds = list(itertools.accumulate(rows, initial=0))
        return [
            {name: value[start:stop] for name, value in outputs.items()}
            for start, stop in itertools.pairwise(bounds)
        ]

    def _classify(self, exc: Exception, rows: int, requests: int) -> EdgefleetError:
        """Our typed errors pass through (e.g. ``LoadedModel.infer``'s InvalidArgument); onnxruntime's
        INVALID_ARGUMENT (wrong shape or dtype for the graph) becomes InvalidArgument: every request
        of a batch shares its names, dtypes and shapes, so all of them have the problem; anything else
        is RunFailed (transient: see ``errors.RunFailed``)."""
        if isinstance(exc, EdgefleetError):
            return exc
        if isinstance(exc, OrtInvalidArgument):
            return InvalidArgument(f"{self.name}: the model rejected the input: {exc}")
        return RunFailed(
            f"{self.name}: the model failed on a batch of {rows} rows ({requests} requests): "
            f"{type(exc).__name__}: {exc}"
        )

    def _settle(
        self, request: _Request, *, result: BatchResult | None = None, error: BaseException | None = None
    ) -> None:
        request.state = _State.DONE
        if request.future.done():  # the caller gave up (deadline, cancellation)
            return
        if error is not None:
            request.future.set_exception(error)
        elif result is not None:
            request.future.set_result(result)

    def _fail_queued(self, error: EdgefleetError) -> None:
        for queue in list(self._queues.values()):
            for request in list(queue.fifo.values()):
                self._dequeue(request)
                self._settle(request, error=error)


def _check_inputs(inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, Signature]:
    """The request's feeds, its rows and its signature; InvalidArgument names what is malformed."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidArgument("a request needs at least one input tensor")
    if len(inputs) == 1:  # most segments take one tensor: the same checks, without the general loop
        ((name, array),) = inputs.items()
        if isinstance(array, np.ndarray) and array.ndim and array.shape[0]:
            return dict(inputs), int(array.shape[0]), ((name, array.dtype.str, array.shape[1:]),)
    rows: int | None = None
    first = ""
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise InvalidArgument(f"input {name!r} must be a numpy array, not {type(array).__name__}")
        if array.ndim == 0:
            raise InvalidArgument(f"input {name!r} is a scalar; every input needs its rows on axis 0")
        if rows is None:
            rows, first = int(array.shape[0]), name
        elif array.shape[0] != rows:
            raise InvalidArgument(
                f"inputs disagree on the rows (axis 0): {first!r} has {rows}, {name!r} has {array.shape[0]}"
            )
    if not rows:
        raise InvalidArgument("a request needs at least one row")
    # (A numpy shape already holds Python ints.)
    signature = tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))
    return dict(inputs), rows, signature
