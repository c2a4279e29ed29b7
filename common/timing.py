"""The timing loop behind every block profile, shared by the controller host and the agents.

A block's latency on an agent is only comparable with the controller host's (and one agent's with
another's) if both are measured the same way, so the loop lives here and both sides hand it plain
callables: no onnxruntime here, no sessions, no I/O. The caller opens its sessions (one intra-op
thread) and the fixed-cost model below, and passes one ``lambda: session.run(None, feed)`` per block.

Why round-robin, and why in bursts: interleaving makes the numbers comparable on a shared host (a
burst of load from other processes slows every member of the round alike, instead of whichever one
was being timed back to back at that moment; on a 2-core box that made a block's time swing 2-3x),
and a burst of ``burst`` calls per visit keeps tiny models from paying a cold cache on every call (a
digits block timed 30% slower among 150 segments than among 18 with one call per visit).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.errors import InvalidArgument

#: Input and output names of the call-overhead model (an Identity on a [batch, 1] float tensor).
OVERHEAD_INPUT = "edgefleet.call_overhead.x"
OVERHEAD_OUTPUT = "y"


@dataclass(frozen=True, slots=True)
class TimingConfig:
    """Warm-up calls first (at least one, so a failure shows there), then ``runs`` timed calls of each
    member, fewer (but at least ``min_runs``) once the round-robin has taken ``max_seconds`` per member."""

    warmup: int = 1
    runs: int = 10
    min_runs: int = 3
    max_seconds: float = 0.25
    burst: int = 5

    def __post_init__(self) -> None:
        if self.runs < 1 or self.min_runs < 1 or self.warmup < 0 or self.max_seconds <= 0 or self.burst < 1:
            raise InvalidArgument("runs, min_runs and burst must be >= 1, warmup >= 0, max_seconds > 0")


def time_round_robin(
    calls: Sequence[Callable[[], object] | None], config: TimingConfig
) -> tuple[list[float | None], list[str]]:
    """Median milliseconds per call of each member of ``calls``, timed round-robin.

    A ``None`` member is skipped (time None, error ''); one that raises during warm-up is dropped from
    the rounds with ``failed to run: <reason>`` (time None). Returns (times, errors) in ``calls`` order.
    """
    times: list[float | None] = [None] * len(calls)
    errors = [""] * len(calls)
    live: list[tuple[int, Callable[[], object]]] = []
    for k, call in enumerate(calls):
        if call is None:
            continue
        try:
            for _ in range(max(config.warmup, 1)):
                call()
        # The callables run third-party runtimes that raise every kind of exception; each one is a
        # measured outcome of that member, never the end of the whole profile.
        except Exception as exc:
            errors[k] = f"failed to run: {first_line(exc)}"
            continue
        live.append((k, call))
    samples: dict[int, list[int]] = {k: [] for k, _ in live}
    deadline = time.perf_counter() + config.max_seconds * max(len(live), 1)
    done = 0
    while live and done < config.runs and (done < config.min_runs or time.perf_counter() < deadline):
        burst = min(config.burst, config.runs - done)
        for k, call in live:
            for _ in range(burst):
                begin = time.perf_counter_ns()
                call()
                samples[k].append(time.perf_counter_ns() - begin)
        done += burst
    for k, values in samples.items():
        times[k] = statistics.median(values) / 1e6
    return times, errors


def overhead_model() -> bytes:
    """An ONNX model that does nothing (Identity on a [batch, 1] float tensor, input ``OVERHEAD_INPUT``):
    its time is the fixed cost of one onnxruntime call, which every block's time includes once."""
    from onnx import TensorProto, helper  # only the callers that time anything pay for the import

    graph = helper.make_graph(
        [helper.make_node("Identity", [OVERHEAD_INPUT], [OVERHEAD_OUTPUT])],
        "call-overhead",
        [helper.make_tensor_value_info(OVERHEAD_INPUT, TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info(OVERHEAD_OUTPUT, TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    return model.SerializeToString()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 300 characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
