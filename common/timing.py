"""The timing loop behind every block profile, shared by the controller host and the agents.

A block's latency on an agent is only comparable with the controller host's (and one agent's with
another's) if both are measured the same way, so the loop lives here and both sides hand it plain
callables: no onnxruntime here, no sessions, no I/O. The caller opens its sessions (one intra-op
thread) and the fixed-cost model below, and passes one ``lambda: session.run(None, feed)`` per block.

Why round-robin, and why in bursts: interleaving makes the numbers comparable on a shared host (a
burst of load from other processes slows every member of the round alike, instead of whichever one
was being timed back to back at that moment; on a 2-core box that made a block's time swing 2-3x),
and a burst of ``burst`` calls per visit keeps a tiny model's cache state from depending on how many
others share the round (a digits block timed 30% slower among 150 segments than among 18 with one
call per visit); ``evict_bytes`` makes every call equally cold instead.

Why ``evict_bytes``: a block timed back to back runs with its weights in the cache, which a served
request does not find. Between two requests a phone runs other apps and a serving node other
segments and other devices' requests, so a block's weights come from memory again: on the 2-core
development box ``bench/partition.py``'s partitioned requests ran their segments ~30% slower than
the warm profile said (a MiniLM layer profiled at 0.72 ms warm, 1.08 ms cold; with cold profiles
its median prediction error fell from 24.5% to 5.5-10.6%). With ``evict_bytes`` set, every timed call is preceded (untimed) by reading a
buffer that size, as the serving path finds it; ``eviction_bytes()`` sizes it from this machine's
last-level cache.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InvalidArgument

#: Input and output names of the call-overhead model (an Identity on a [batch, 1] float tensor).
OVERHEAD_INPUT = "edgefleet.call_overhead.x"
OVERHEAD_OUTPUT = "y"
#: The last-level cache assumed where the machine does not say (sysfs): generous for a phone, an
#: edge board or a server alike.
DEFAULT_LLC_BYTES = 32 << 20
#: At most this much is read before each timed call, whatever the cache claims.
MAX_EVICTION_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class TimingConfig:
    """Warm-up calls first (at least one, so a failure shows there), then ``runs`` timed calls of each
    member, fewer (but at least ``min_runs``) once the round-robin has taken ``max_seconds`` per member."""

    warmup: int = 1
    runs: int = 10
    min_runs: int = 3
    max_seconds: float = 0.25
    burst: int = 5
    #: Bytes read before every timed call (untimed) so it runs with a cold cache; 0: warm.
    evict_bytes: int = 0

    def __post_init__(self) -> None:
        if self.runs < 1 or self.min_runs < 1 or self.warmup < 0 or self.max_seconds <= 0 or self.burst < 1:
            raise InvalidArgument("runs, min_runs and burst must be >= 1, warmup >= 0, max_seconds > 0")
        if not 0 <= self.evict_bytes <= MAX_EVICTION_BYTES:
            raise InvalidArgument(
                f"evict_bytes must be within 0..{MAX_EVICTION_BYTES}, got {self.evict_bytes}"
            )


def eviction_bytes(cache_root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Twice this machine's largest CPU cache (sysfs ``index*/size``; ``DEFAULT_LLC_BYTES`` where it
    cannot be read): read before a timed call, it leaves none of the block's weights cached."""
    largest = 0
    try:
        entries = list(cache_root.glob("index*/size"))
    except OSError:
        entries = []
    for entry in entries:  # one unreadable entry leaves the others standing
        try:
            text = entry.read_text().strip().upper()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in ("K", "M", "G") else text
        if digits.isdigit():
            largest = max(largest, int(digits) * unit)
    return min(2 * (largest or DEFAULT_LLC_BYTES), MAX_EVICTION_BYTES)


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
    # Reading it streams evict_bytes through the caches; numpy's sum reads at memory bandwidth,
    # where a Python-level copy of the same bytes was an order of magnitude slower.
    scratch = np.ones(config.evict_bytes // 8, dtype=np.uint64) if config.evict_bytes >= 8 else None
    deadline = time.perf_counter() + config.max_seconds * max(len(live), 1)
    done = 0
    while live and done < config.runs and (done < config.min_runs or time.perf_counter() < deadline):
        burst = min(config.burst, config.runs - done)
        for k, call in live:
            for _ in range(burst):
                if scratch is not None:
                    scratch.sum()
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
