"""Which workers of a large cloud pool a device's route names (``policies.route_nodes``)."""

from __future__ import annotations

from collections import Counter

from common.limits import MAX_SEGMENT_ENDPOINTS
from controller.service.policies import ENDPOINTS_PER_HOP, route_nodes

NODES = tuple(f"gpu-{i:03d}" for i in range(500))


def test_a_small_pool_is_named_whole() -> None:
    assert route_nodes("phone-1", NODES[:5]) == NODES[:5]


def test_a_large_pool_fits_a_route_and_spreads_the_devices_evenly() -> None:
    assert ENDPOINTS_PER_HOP <= MAX_SEGMENT_ENDPOINTS
    picks = {f"phone-{i}": route_nodes(f"phone-{i}", NODES) for i in range(5000)}
    assert all(len(p) == ENDPOINTS_PER_HOP and set(p) <= set(NODES) for p in picks.values())
    assert route_nodes("phone-7", NODES) == picks["phone-7"]  # the same every time
    load = Counter(n for p in picks.values() for n in p)
    assert len(load) == len(NODES)  # every worker serves somebody
    mean = 5000 * ENDPOINTS_PER_HOP / len(NODES)
    assert max(load.values()) < 1.6 * mean and min(load.values()) > 0.4 * mean


def test_a_worker_leaving_moves_only_the_devices_that_had_it() -> None:
    before = {f"phone-{i}": route_nodes(f"phone-{i}", NODES) for i in range(1000)}
    fewer = tuple(n for n in NODES if n != "gpu-042")
    after = {d: route_nodes(d, fewer) for d in before}
    moved = [d for d in before if before[d] != after[d]]
    assert moved and all("gpu-042" in before[d] for d in moved)
    assert all(set(before[d]) - {"gpu-042"} <= set(after[d]) for d in moved)
