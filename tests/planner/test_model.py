"""The configuration model on its own: hardware-class overrides, segment times, batching, queueing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from controller.planner import catalog, synthetic
from controller.planner.configs import ConfigTable
from controller.planner.plan import prepare
from controller.planner.types import Batching, Pattern, PlanInput


def test_restating_a_latency_scale_changes_nothing_and_a_new_one_moves_the_batch_scale_by_its_ratio() -> None:
    npu = catalog.resolve("edge-npu")
    same = catalog.merge(npu, latency_scale={"int8": 0.15}, source="policy:edge-npu")
    assert same.batch_scale == npu.batch_scale and same.latency_scale == npu.latency_scale
    slower = catalog.merge(npu, latency_scale={"int8": 0.3}, source="policy:edge-npu")
    assert slower.latency_scale["int8"] == 0.3
    assert slower.batch_scale["int8"] == pytest.approx(0.1)  # 0.05 * 0.3 / 0.15
    assert slower.batch_scale["fp16"] == npu.batch_scale["fp16"]  # untouched precisions stay
    # A batch scale given explicitly wins.
    both = catalog.merge(npu, latency_scale={"int8": 0.3}, batch_scale={"int8": 0.07}, source="p")
    assert both.batch_scale["int8"] == 0.07


def _table(data: PlanInput) -> ConfigTable:
    (bucket,) = prepare(data).buckets
    return bucket.index.table


def _edge_fleet(
    batching: Batching | None, *, rate: float = 20.0, devices: int = 50, slots: int = 1
) -> PlanInput:
    data = synthetic.instance(
        1, devices=devices, cuts=4, edge_sites=1, slots_per_node=slots, request_rate=rate
    )
    dep = dataclasses.replace(data.deployments[0], batching=batching, cloud_pools=("none",))
    return dataclasses.replace(data, deployments=(dep,))


def _edge_rows(t: ConfigTable) -> np.ndarray:
    return np.flatnonzero(t.pattern == int(Pattern.DEVICE_EDGE))


def test_max_batch_size_one_or_no_delay_is_no_batching() -> None:
    off = _table(_edge_fleet(None))
    for batching in (Batching(1, 5.0), Batching(32, 0.0)):
        t = _table(_edge_fleet(batching))
        for column in ("edge_ms", "edge_queue_ms", "edge_slots"):
            assert np.array_equal(getattr(t, column), getattr(off, column)), (batching, column)


def test_a_bigger_max_batch_size_never_takes_more_slots_and_its_batch_takes_longer() -> None:
    # 50 devices x 20 req/s on 2 nodes: 500 req/s per node, 2.5 rows per 5 ms delay... up to the cap.
    previous: ConfigTable | None = None
    for size in (1, 2, 4, 8, 32, 64, 1024):
        t = _table(_edge_fleet(Batching(size, 20.0)))
        rows = _edge_rows(t)
        assert t.edge_batch == min(size, 50 * 20.0 / 2 * 0.020)
        if previous is not None:
            assert np.all(t.edge_slots[rows] <= previous.edge_slots[rows] + 1e-12)
            assert np.all(t.edge_ms[rows] >= previous.edge_ms[rows] - 1e-12)  # a batch's call time
        previous = t
    unbatched = _table(_edge_fleet(None))
    rows = _edge_rows(unbatched)
    assert previous is not None and np.all(previous.edge_slots[rows] < unbatched.edge_slots[rows])


def test_the_expected_batch_follows_the_rate_at_a_node() -> None:
    # One device at 2 req/s with a 5 ms delay: nothing else arrives, a request runs alone.
    alone = _table(_edge_fleet(Batching(32, 5.0), rate=2.0, devices=1))
    assert alone.edge_batch == 1.0
    off = _table(_edge_fleet(None, rate=2.0, devices=1))
    rows = _edge_rows(alone)
    assert np.allclose(alone.edge_slots[rows], off.edge_slots[rows])  # no amortisation from nobody
    assert np.allclose(alone.edge_ms[rows], off.edge_ms[rows])
    assert np.allclose(alone.edge_queue_ms[rows], off.edge_queue_ms[rows] + 5.0)  # it waits the delay


def test_queueing_is_the_mean_md1_wait_shared_by_a_nodes_slots() -> None:
    one = _table(_edge_fleet(None, slots=1))
    four = _table(_edge_fleet(None, slots=4))
    rows = _edge_rows(one)
    rho = 0.7  # synthetic pools' utilisation cap
    assert np.allclose(one.edge_queue_ms[rows], rho / (2 * (1 - rho)) * one.edge_ms[rows])
    assert np.allclose(four.edge_queue_ms[rows], one.edge_queue_ms[rows] / 4)
    assert np.array_equal(four.edge_ms[rows], one.edge_ms[rows])


def test_a_segment_never_takes_less_than_its_slowest_block() -> None:
    data = _edge_fleet(None)
    edge = dataclasses.replace(catalog.resolve("edge-npu"), call_overhead_ms=100.0)
    t = _table(dataclasses.replace(data, hardware={"edge-npu": edge}))
    model = next(iter(data.models.values()))
    for r in _edge_rows(t):
        p = t.precisions[int(t.pe[r])]
        blocks = model.block_ms[("host", p, 1)][int(t.a[r]) : int(t.e[r])]
        assert t.edge_ms[r] == pytest.approx(max(blocks) * edge.latency_scale[p])
        assert t.edge_slots[r] > 0
