"""Sharing edge and cloud capacity: which devices get to offload when not all of them can.

Unconstrained, every device takes its own best configuration (``search``). When that would put
more load on a pool than its capacity, the planner solves the assignment problem

    maximise  sum_d score(d, c_d)   subject to   sum_d slots_r(c_d) <= capacity_r  for every pool r

with Lagrangian relaxation: a price per slot of each over-full pool is raised (and relaxed again
when the pool falls below its capacity), and every device re-chooses against its prices. The
configurations devices choose along the way are exactly the ones worth considering under some
prices; on that small candidate set a greedy repair moves devices off over-full pools, cheapest
loss per freed slot first, and an improvement pass lets devices take better candidates that fit in
what is left. ``bench/planner.py`` compares the result with an exact MILP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.planner.configs import NONE, F, I
from controller.planner.search import Devices, Prices, TableIndex

log = logging.getLogger(__name__)

ITERATIONS = 30
_EPS = 1e-9
#: A candidate "run nothing": the last resort of a device that cannot run without a full pool.
UNSERVED = -2
UNSERVED_SCORE = -1e9


@dataclass(eq=False)
class Bucket:
    """Devices sharing one configuration table (and so one edge pool and one cloud pool)."""

    index: TableIndex
    devices: Devices
    edge_pool: str
    cloud_pool: str
    current: I  # each device's current configuration's row (-1: none), for hysteresis


@dataclass(eq=False)
class Choice:
    rows: I
    scores: F  # at zero prices, hysteresis included


def choose(bucket: Bucket, prices: Mapping[str, float], hysteresis: float) -> tuple[I, F]:
    """Every device's best row at these prices; a device's current row is kept unless another beats
    it by more than ``hysteresis``."""
    p = Prices(prices.get(bucket.edge_pool, 0.0), prices.get(bucket.cloud_pool, 0.0))
    rows, scores = bucket.index.best(bucket.devices, p)
    has = np.flatnonzero(bucket.current != NONE)
    if len(has):
        current = bucket.index.score(bucket.devices, has, bucket.current[has], p) + hysteresis
        keep = current >= scores[has] - _EPS
        rows[has[keep]] = bucket.current[has[keep]]
        scores[has[keep]] = current[keep]
    return rows, scores


def allocate(buckets: Sequence[Bucket], capacity: Mapping[str, float], hysteresis: float) -> list[I]:
    """Rows per bucket that respect ``capacity`` (slots left per pool)."""
    prices: dict[str, float] = {}
    rows = [choose(b, prices, hysteresis)[0] for b in buckets]
    usage = _usage(buckets, rows)
    over = {r for r, used in usage.items() if used > capacity.get(r, 0.0) + _EPS}
    if not over:
        return rows
    log.info("capacity binds on %s; allocating by Lagrangian prices", ", ".join(sorted(over)))
    seen: list[list[I]] = [[r] for r in rows]
    # Every device's best row that needs none of the full pools: the repair can always fall back on it.
    priced_out = dict.fromkeys(over, 1e12)
    for s, b in zip(seen, buckets, strict=True):
        s.append(choose(b, priced_out, hysteresis)[0])
    scale = _price_scale(buckets, rows)
    for _ in range(ITERATIONS):
        for pool, used in usage.items():
            cap = capacity.get(pool, 0.0)
            if used > cap + _EPS:
                prices[pool] = max(prices.get(pool, 0.0) * 1.6, scale)
            elif pool in prices:
                prices[pool] *= 0.7
        rows = [choose(b, prices, hysteresis)[0] for b in buckets]
        for s, r in zip(seen, rows, strict=True):
            s.append(r)
        usage = _usage(buckets, rows)
    cands = _Candidates.build(buckets, seen, hysteresis)
    choice = cands.repair(cands.initial(rows), capacity)
    choice = cands.improve(choice, capacity)
    return cands.rows_of(choice)


def _usage(buckets: Sequence[Bucket], rows: Sequence[I]) -> dict[str, float]:
    used: dict[str, float] = {}
    for b, r in zip(buckets, rows, strict=True):
        valid = r[r != NONE]
        t = b.index.table
        if b.edge_pool:
            used[b.edge_pool] = used.get(b.edge_pool, 0.0) + float(t.edge_slots[valid].sum())
        if b.cloud_pool:
            used[b.cloud_pool] = used.get(b.cloud_pool, 0.0) + float(t.cloud_slots[valid].sum())
    return used


def _price_scale(buckets: Sequence[Bucket], rows: Sequence[I]) -> float:
    """A first price per slot: the median score gain per slot that offloading gives devices now."""
    ratios: list[float] = []
    for b, r in zip(buckets, rows, strict=True):
        t = b.index.table
        slots = t.edge_slots[r] + t.cloud_slots[r]
        using = (r != NONE) & (slots > 0)
        if using.any():
            ratios.extend((1.0 / np.maximum(slots[using], 1e-6)).tolist())
    return float(np.median(ratios)) * 0.01 if ratios else 1.0


class _Candidates:
    """Per device, the rows it chose under some prices: scores, slots and the pools they load."""

    def __init__(
        self,
        owners: list[tuple[int, int]],
        rows: I,
        score: F,
        edge: F,
        cloud: F,
        edge_pool: list[str],
        cloud_pool: list[str],
        sizes: list[int],
    ) -> None:
        self.owners = owners  # candidate matrix row -> (bucket, device)
        self.rows, self.score, self.edge, self.cloud = rows, score, edge, cloud
        self.edge_pool, self.cloud_pool = edge_pool, cloud_pool
        self.sizes = sizes

    @staticmethod
    def build(buckets: Sequence[Bucket], seen: Sequence[Sequence[I]], hysteresis: float) -> _Candidates:
        owners: list[tuple[int, int]] = []
        lists: list[list[int]] = []
        for bi, (bucket, history) in enumerate(zip(buckets, seen, strict=True)):
            stacked = np.stack(history, axis=1)
            for d in range(len(bucket.devices)):
                owners.append((bi, d))
                lists.append(sorted({int(x) for x in stacked[d] if x != NONE}))
        width = 1 + max((len(x) for x in lists), default=0)
        n = len(lists)
        rows = np.full((n, width), NONE, dtype=np.int64)
        score = np.full((n, width), -np.inf)
        rows[:, 0], score[:, 0] = UNSERVED, UNSERVED_SCORE
        edge = np.zeros((n, width))
        cloud = np.zeros((n, width))
        for i, ((bi, d), cand) in enumerate(zip(owners, lists, strict=True)):
            if not cand:
                continue
            b = buckets[bi]
            r = np.asarray(cand, dtype=np.int64)
            s = b.index.score(b.devices, np.full(len(r), d), r, Prices())
            s = s + np.where(r == b.current[d], hysteresis, 0.0)
            rows[i, 1 : len(r) + 1], score[i, 1 : len(r) + 1] = r, s
            edge[i, 1 : len(r) + 1] = b.index.table.edge_slots[r]
            cloud[i, 1 : len(r) + 1] = b.index.table.cloud_slots[r]
        return _Candidates(
            owners,
            rows,
            score,
            edge,
            cloud,
            [buckets[bi].edge_pool for bi, _ in owners],
            [buckets[bi].cloud_pool for bi, _ in owners],
            [len(b.devices) for b in buckets],
        )

    def initial(self, rows: Sequence[I]) -> I:
        choice = np.zeros(len(self.owners), dtype=np.int64)
        for i, (bi, d) in enumerate(self.owners):
            hit = np.flatnonzero(self.rows[i] == rows[bi][d])
            choice[i] = int(hit[0]) if len(hit) else int(np.argmax(self.score[i]))
        return choice

    def _used(self, choice: I) -> dict[str, float]:
        used: dict[str, float] = {}
        at = np.arange(len(choice))
        e, c = self.edge[at, choice], self.cloud[at, choice]
        for i in range(len(choice)):
            if e[i] > 0:
                used[self.edge_pool[i]] = used.get(self.edge_pool[i], 0.0) + float(e[i])
            if c[i] > 0:
                used[self.cloud_pool[i]] = used.get(self.cloud_pool[i], 0.0) + float(c[i])
        return used

    def _load(self, i: int, k: int, pool: str) -> float:
        load = 0.0
        if self.edge_pool[i] == pool:
            load += float(self.edge[i, k])
        if self.cloud_pool[i] == pool:
            load += float(self.cloud[i, k])
        return load

    def repair(self, choice: I, capacity: Mapping[str, float]) -> I:
        """Move devices off over-full pools until none is, the smallest score loss per freed slot
        first. Every device can always move to "unserved" (nothing runs; the plan reports it), so a
        pool never stays over its capacity."""
        for _ in range(len(choice) + 1):
            used = self._used(choice)
            over = sorted(
                (r for r, u in used.items() if u > capacity.get(r, 0.0) + _EPS),
                key=lambda r: used[r] - capacity.get(r, 0.0),
                reverse=True,
            )
            if not over:
                return choice
            pool = over[0]
            excess = used[pool] - capacity.get(pool, 0.0)
            moves: list[tuple[float, int, int, float]] = []
            for i in range(len(choice)):
                cur = int(choice[i])
                load = self._load(i, cur, pool)
                if load <= 0:
                    continue
                best: tuple[float, int, float] | None = None
                for k in range(self.rows.shape[1]):
                    if self.rows[i, k] == NONE or k == cur:
                        continue
                    freed = load - self._load(i, k, pool)
                    if freed <= _EPS or not self._fits_elsewhere(i, k, cur, used, capacity, pool):
                        continue
                    ratio = (float(self.score[i, cur]) - float(self.score[i, k])) / freed
                    if best is None or ratio < best[0]:
                        best = (ratio, k, freed)
                if best is not None:
                    moves.append((best[0], i, best[1], best[2]))
            moves.sort()
            freed_total = 0.0
            for _, i, k, freed in moves:
                if freed_total >= excess - _EPS:
                    break
                choice[i] = k
                freed_total += freed
        return choice

    def _fits_elsewhere(
        self, i: int, k: int, cur: int, used: Mapping[str, float], capacity: Mapping[str, float], skip: str
    ) -> bool:
        for pool, new, old in (
            (self.edge_pool[i], self.edge[i, k], self.edge[i, cur]),
            (self.cloud_pool[i], self.cloud[i, k], self.cloud[i, cur]),
        ):
            if (
                pool
                and pool != skip
                and new > old
                and used.get(pool, 0.0) + new - old > capacity.get(pool, 0.0) + _EPS
            ):
                return False
        return True

    def improve(self, choice: I, capacity: Mapping[str, float]) -> I:
        """Let devices take a better candidate that fits in the capacity left, largest gain first."""
        for _ in range(3):
            used = self._used(choice)
            at = np.arange(len(choice))
            gain = np.max(self.score, axis=1) - self.score[at, choice]
            changed = False
            for i in np.argsort(-gain, kind="stable"):
                if gain[i] <= _EPS:
                    break
                cur = int(choice[i])
                order = np.argsort(-self.score[i], kind="stable")
                for k in order:
                    if self.rows[i, k] == NONE or self.score[i, k] <= self.score[i, cur] + _EPS:
                        break
                    if self._fits(i, int(k), cur, used, capacity):
                        self._apply(i, int(k), cur, used)
                        choice[i] = k
                        changed = True
                        break
            if not changed:
                break
        return choice

    def _fits(
        self, i: int, k: int, cur: int, used: Mapping[str, float], capacity: Mapping[str, float]
    ) -> bool:
        return self._fits_elsewhere(i, k, cur, used, capacity, skip="")

    def _apply(self, i: int, k: int, cur: int, used: dict[str, float]) -> None:
        for pool, new, old in (
            (self.edge_pool[i], self.edge[i, k], self.edge[i, cur]),
            (self.cloud_pool[i], self.cloud[i, k], self.cloud[i, cur]),
        ):
            if pool:
                used[pool] = used.get(pool, 0.0) + float(new - old)

    def rows_of(self, choice: I) -> list[I]:
        out = [np.full(n, NONE, dtype=np.int64) for n in self.sizes]
        for i, (bi, d) in enumerate(self.owners):
            row = int(self.rows[i, choice[i]])
            out[bi][d] = NONE if row == UNSERVED else row
        return out
