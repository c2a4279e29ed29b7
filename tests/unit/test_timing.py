"""common.timing: the round-robin loop's contract and the cache eviction it can run before each call."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from common import timing
from common.errors import InvalidArgument
from common.timing import (
    DEFAULT_LLC_BYTES,
    MAX_EVICTION_BYTES,
    TimingConfig,
    eviction_bytes,
    time_round_robin,
)

pytestmark = pytest.mark.timeout(30)


def _cache(root: Path, sizes: dict[str, str]) -> Path:
    for index, size in sizes.items():
        (root / index).mkdir(parents=True)
        (root / index / "size").write_text(size + "\n")
    return root


def test_eviction_covers_twice_the_largest_cache(tmp_path: Path) -> None:
    root = _cache(tmp_path, {"index0": "48K", "index2": "1024K", "index3": "32768K"})
    assert eviction_bytes(root) == 2 * 32 * 2**20
    assert eviction_bytes(_cache(tmp_path / "m", {"index0": "6M"})) == 12 * 2**20


def test_one_unreadable_entry_leaves_the_others(tmp_path: Path) -> None:
    root = _cache(tmp_path, {"index0": "48K", "index1": "", "index2": "oops", "index3": "16384K"})
    assert eviction_bytes(root) == 2 * 16 * 2**20


def test_an_unreadable_or_huge_cache_falls_back_within_bounds(tmp_path: Path) -> None:
    assert eviction_bytes(tmp_path / "missing") == 2 * DEFAULT_LLC_BYTES
    assert eviction_bytes(_cache(tmp_path / "bad", {"index0": "lots"})) == 2 * DEFAULT_LLC_BYTES
    assert eviction_bytes(_cache(tmp_path / "big", {"index3": "1G"})) == MAX_EVICTION_BYTES


def test_eviction_size_is_checked() -> None:
    with pytest.raises(InvalidArgument, match="evict_bytes"):
        TimingConfig(evict_bytes=-1)
    with pytest.raises(InvalidArgument, match="evict_bytes"):
        TimingConfig(evict_bytes=MAX_EVICTION_BYTES + 1)


def test_with_eviction_every_member_is_still_called_and_timed_once_per_run() -> None:
    calls = {"a": 0, "b": 0}

    def member(name: str) -> object:
        calls[name] += 1
        return None

    def boom() -> object:
        raise RuntimeError("no")

    config = TimingConfig(warmup=1, runs=4, min_runs=4, burst=2, evict_bytes=1 << 20)
    times, errors = time_round_robin([lambda: member("a"), None, boom, lambda: member("b")], config)
    assert calls == {"a": 5, "b": 5}  # one warm-up and four timed calls each
    assert times[0] is not None and times[3] is not None and times[1] is None and times[2] is None
    assert errors[1] == "" and errors[2] == "failed to run: no"


def test_the_cache_is_evicted_before_every_timed_call_and_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    class Buffer:
        def sum(self) -> int:
            events.append("evict")
            return 0

    monkeypatch.setattr(timing, "np", SimpleNamespace(ones=lambda n, dtype: Buffer(), uint64=None))
    config = TimingConfig(warmup=1, runs=2, min_runs=2, burst=1, evict_bytes=1 << 20)
    time_round_robin([lambda: events.append("a"), lambda: events.append("b")], config)
    # Warm-ups first (not evicted), then each timed call right after an eviction.
    assert events == ["a", "b"] + ["evict", "a", "evict", "b"] * 2
    events.clear()
    time_round_robin([lambda: events.append("a")], TimingConfig(warmup=1, runs=2, min_runs=2, burst=1))
    assert events == ["a", "a", "a"]  # evict_bytes 0: warm, nothing read in between
