"""Sharing edge and cloud capacity: which devices get to offload when not all of them can.

Unconstrained, every device takes its own best configuration (``search``). When that would put
more load on a pool than its capacity, the planner solves the assignment problem

    maximise  sum_d score(d, c_d)   subject to   sum_d slots_r(c_d) <= capacity_r  for every resource r

where a resource is one edge node (a device offloading to an edge pool is served by one of its
nodes, and a node's slots are what it can hold) or one cloud pool (its workers share the load, so
it is planned as one). A multiple-choice knapsack with one knapsack per resource, solved in three
steps:

1. **Candidates.** A device only ever needs configurations on the upper convex hull of (slots,
   score): whatever the prices of capacity, the best one is a hull vertex. Those are found by
   asking each device for its best configuration at a geometric ladder of prices per slot — on
   both pools at once, and on each alone — which is the fast binary search of ``search`` each
   time, plus "run nothing" as the last resort of a device that cannot run without the pool. A
   candidate using the edge is offered once per node of the device's pool.
2. **Lagrangian prices.** A price per slot of every contended pool is set by subgradient steps;
   at each, every device picks its best candidate against the prices.
3. **Primal repair.** From the priced choice, devices move off over-full pools (smallest score
   loss per freed slot first, never onto more load elsewhere), then devices upgrade into what is
   left (largest gain per slot first). The best repaired assignment over the iterations is kept.

``bench/planner.py`` measures the result against an exact MILP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.planner.configs import NONE, F, I
from controller.planner.search import Devices, Prices, TableIndex

log = logging.getLogger(__name__)

#: Subgradient iterations on the candidates, and how often a priced choice is repaired and kept.
ITERATIONS = 200
REPAIR_EVERY = 10
#: Prices per slot at which candidates are collected: score units (see ``types.Weights``) per slot.
PRICE_LADDER = tuple(float(x) for x in np.geomspace(0.05, 20_000.0, 28))
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
    #: Each device's best row at zero prices, once known (saves rescanning devices nothing meets).
    unpriced: I | None = None


def choose(bucket: Bucket, prices: Prices, hysteresis: float) -> tuple[I, F]:
    """Every device's best row at these prices; a device's current row is kept unless another beats
    it by more than ``hysteresis``."""
    rows, scores = bucket.index.best(bucket.devices, prices, bucket.unpriced)
    if bucket.unpriced is None and not (prices.edge or prices.cloud):
        bucket.unpriced = rows.copy()
    has = np.flatnonzero(bucket.current != NONE)
    if len(has):
        current = bucket.index.score(bucket.devices, has, bucket.current[has], prices) + hysteresis
        keep = current >= scores[has] - _EPS
        rows[has[keep]] = bucket.current[has[keep]]
        scores[has[keep]] = current[keep]
    return rows, scores


def edge_resource(pool: str, node: str) -> str:
    return f"{pool}/{node}"


@dataclass(eq=False)
class Allocation:
    rows: list[I]
    nodes: dict[str, str]  # device id -> the edge node serving it


def allocate(
    buckets: Sequence[Bucket],
    capacity: dict[str, float],
    nodes: Mapping[str, tuple[str, ...]],
    hysteresis: float,
) -> Allocation:
    """Rows per bucket, and an edge node per offloading device, within ``capacity`` (slots left per
    resource: ``edge_resource(pool, node)`` for edge nodes, the pool name for cloud pools), which is
    reduced by what is allocated. ``nodes`` lists each edge pool's nodes."""
    rows = [choose(b, Prices(), hysteresis)[0] for b in buckets]
    trial = dict(capacity)
    placed: dict[str, str] = {}
    over = _over_cloud(buckets, rows, trial) | _pack(buckets, rows, nodes, trial, placed)
    if not over:
        capacity.update(trial)
        return Allocation(rows, placed)
    contended = [i for i, b in enumerate(buckets) if b.edge_pool in over or b.cloud_pool in over]
    log.info(
        "capacity binds on %s (%d devices contend); allocating by Lagrangian prices",
        ", ".join(sorted(over)),
        sum(len(buckets[i].devices) for i in contended),
    )
    # What the uncontended devices take stays theirs: place them first, then share what is left.
    quiet = [i for i in range(len(buckets)) if i not in contended]
    placed = {}
    _over_cloud([buckets[i] for i in quiet], [rows[i] for i in quiet], capacity)
    _pack([buckets[i] for i in quiet], [rows[i] for i in quiet], nodes, capacity, placed)
    cands = _Candidates.collect([buckets[i] for i in contended], nodes, hysteresis)
    choice = cands.solve(capacity)
    for i, r in zip(contended, cands.rows_of(choice), strict=True):
        rows[i] = r
    placed.update(cands.nodes_of(choice))
    cands.consume(choice, capacity)
    return Allocation(rows, placed)


def _over_cloud(buckets: Sequence[Bucket], rows: Sequence[I], capacity: dict[str, float]) -> set[str]:
    """Take the cloud slots of ``rows`` out of ``capacity``; the cloud pools that went below zero."""
    for b, r in zip(buckets, rows, strict=True):
        if b.cloud_pool:
            valid = r[r != NONE]
            capacity[b.cloud_pool] = capacity.get(b.cloud_pool, 0.0) - float(
                b.index.table.cloud_slots[valid].sum()
            )
    return {b.cloud_pool for b in buckets if b.cloud_pool and capacity.get(b.cloud_pool, 0.0) < -_EPS}


def _pack(
    buckets: Sequence[Bucket],
    rows: Sequence[I],
    nodes: Mapping[str, tuple[str, ...]],
    capacity: dict[str, float],
    placed: dict[str, str],
) -> set[str]:
    """Place the edge loads of ``rows`` on their pools' nodes, biggest first, each on the node with
    the most room (ties: first by name), taking them out of ``capacity``; the edge pools where some
    load fitted no node."""
    loads: dict[str, list[tuple[float, str]]] = {}
    for b, r in zip(buckets, rows, strict=True):
        t = b.index.table
        for d, row in enumerate(r.tolist()):
            if row != NONE and t.edge_slots[row] > 0:
                loads.setdefault(b.edge_pool, []).append((-float(t.edge_slots[row]), b.devices.ids[d]))
    failed: set[str] = set()
    for pool in sorted(loads):
        keys = [edge_resource(pool, n) for n in nodes.get(pool, ())]
        for neg, device_id in sorted(loads[pool]):
            if not keys:
                failed.add(pool)
                break
            key = min(keys, key=lambda k: (-capacity.get(k, 0.0), k))
            if capacity.get(key, 0.0) + _EPS < -neg:
                failed.add(pool)
                continue
            capacity[key] = capacity.get(key, 0.0) + neg
            placed[device_id] = key.split("/", 1)[1]
    return failed


class _Candidates:
    """Per contended device, its hull candidates as matrices (devices x candidates): score, the
    resource its edge share lands on (an edge node; -1: none) with its slots, and its slots on the
    device's cloud pool. Column 0 is "unserved"; padding has score -inf."""

    def __init__(
        self,
        buckets: Sequence[Bucket],
        owners: list[tuple[int, int]],
        rows: I,
        score: F,
        edge_res: I,
        edge: F,
        cloud: F,
        cloud_id: I,
        resources: list[str],
    ) -> None:
        self.buckets, self.owners = buckets, owners
        self.rows, self.score, self.edge_res, self.edge, self.cloud = rows, score, edge_res, edge, cloud
        self.cloud_id, self.resources = cloud_id, resources

    @staticmethod
    def collect(
        buckets: Sequence[Bucket], nodes: Mapping[str, tuple[str, ...]], hysteresis: float
    ) -> _Candidates:
        per_bucket: list[list[set[int]]] = []
        for b in buckets:
            found: list[set[int]] = [set() for _ in range(len(b.devices))]
            prices = [Prices()]
            for lam in PRICE_LADDER:
                prices.append(Prices(lam if b.edge_pool else 0.0, lam if b.cloud_pool else 0.0))
                if b.edge_pool and b.cloud_pool:
                    prices += [Prices(lam, 0.0), Prices(0.0, lam)]
            prices.append(Prices(1e12, 1e12))  # priced out of both: the best without shared capacity
            for p in prices:
                for d, row in enumerate(choose(b, p, hysteresis)[0].tolist()):
                    if row != NONE:
                        found[d].add(row)
            per_bucket.append(found)
        resources = sorted(
            {
                edge_resource(b.edge_pool, n)
                for b in buckets
                if b.edge_pool
                for n in nodes.get(b.edge_pool, ())
            }
            | {b.cloud_pool for b in buckets if b.cloud_pool}
        )
        rid = {r: i for i, r in enumerate(resources)}
        owners = [(bi, d) for bi, b in enumerate(buckets) for d in range(len(b.devices))]
        # Each candidate using the edge appears once per node of its pool.
        columns: list[list[tuple[int, int]]] = []  # per owner: (row, edge resource id or -1)
        for bi, d in owners:
            b = buckets[bi]
            t = b.index.table
            node_ids = (
                [rid[edge_resource(b.edge_pool, n)] for n in nodes.get(b.edge_pool, ())]
                if b.edge_pool
                else []
            )
            cols: list[tuple[int, int]] = []
            for row in sorted(per_bucket[bi][d]):
                if t.edge_slots[row] > 0:
                    cols.extend((row, n) for n in node_ids)
                else:
                    cols.append((row, -1))
            columns.append(cols)
        width = 1 + max((len(c) for c in columns), default=0)
        n = len(owners)
        rows = np.full((n, width), NONE, dtype=np.int64)
        score = np.full((n, width), -np.inf)
        rows[:, 0], score[:, 0] = UNSERVED, UNSERVED_SCORE
        edge_res = np.full((n, width), -1, dtype=np.int64)
        edge, cloud = np.zeros((n, width)), np.zeros((n, width))
        cloud_id = np.full(n, -1, dtype=np.int64)
        for i, ((bi, d), cols) in enumerate(zip(owners, columns, strict=True)):
            b = buckets[bi]
            cloud_id[i] = rid.get(b.cloud_pool, -1) if b.cloud_pool else -1
            if not cols:
                continue
            r = np.asarray([c[0] for c in cols], dtype=np.int64)
            s = b.index.score(b.devices, np.full(len(r), d), r, Prices())
            s = s + np.where(r == b.current[d], hysteresis, 0.0)
            k = len(r)
            rows[i, 1 : k + 1], score[i, 1 : k + 1] = r, s
            edge_res[i, 1 : k + 1] = [c[1] for c in cols]
            edge[i, 1 : k + 1] = b.index.table.edge_slots[r]
            cloud[i, 1 : k + 1] = b.index.table.cloud_slots[r]
        return _Candidates(buckets, owners, rows, score, edge_res, edge, cloud, cloud_id, resources)

    # --- the solver -------------------------------------------------------------------------------

    def solve(self, capacity: Mapping[str, float]) -> I:
        cap = np.asarray([max(capacity.get(r, 0.0), 0.0) for r in self.resources])
        at = np.arange(len(self.owners))
        prices = np.zeros(len(self.resources))
        step = self._price_scale()
        best_choice: I | None = None
        best_value = -np.inf
        for t in range(1, ITERATIONS + 1):
            choice = self._priced_choice(prices)
            used = self._used(choice)
            if (t - 1) % REPAIR_EVERY == 0 or t == ITERATIONS:
                repaired = self._fill(self._repair(choice.copy(), cap), cap)
                value = float(self.score[at, repaired].sum())
                if value > best_value + _EPS:
                    best_value, best_choice = value, repaired
            prices = np.maximum(0.0, prices + step / np.sqrt(t) * (used - cap) / np.maximum(cap, 1e-6))
        assert best_choice is not None
        return self._fill(self._improve_sites(best_choice, cap), cap)

    def _price_scale(self) -> float:
        """A first step for the prices: the median score gain per slot over running nothing shared."""
        load = self.edge + self.cloud
        free = np.where(load <= 0, self.score, -np.inf).max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            gain = (self.score - free) / np.maximum(load, 1e-9)
        ratios = gain[(load > 0) & np.isfinite(gain) & (gain > 0)]
        return float(np.median(ratios)) if len(ratios) else 1.0

    def _gather(self, values: F, ids: I) -> F:
        """``values[ids]`` with 0 where ``ids`` is -1."""
        return np.where(ids >= 0, values[np.maximum(ids, 0)], 0.0)

    def _priced_choice(self, prices: F) -> I:
        pe = self._gather(prices, self.edge_res)
        pc = self._gather(prices, self.cloud_id)[:, None]
        return np.asarray(np.argmax(self.score - pe * self.edge - pc * self.cloud, axis=1), dtype=np.int64)

    def _used(self, choice: I) -> F:
        at = np.arange(len(choice))
        used = np.zeros(len(self.resources))
        er, e, c = self.edge_res[at, choice], self.edge[at, choice], self.cloud[at, choice]
        np.add.at(used, er[er >= 0], e[er >= 0])
        has_c = self.cloud_id >= 0
        np.add.at(used, self.cloud_id[has_c], c[has_c])
        return used

    def _load_on(self, res: int) -> F:
        """Each device's slots on resource ``res`` for every candidate."""
        return np.where(self.edge_res == res, self.edge, 0.0) + np.where(
            (self.cloud_id == res)[:, None], self.cloud, 0.0
        )

    def _repair(self, choice: I, cap: F) -> I:
        """Move devices off over-full resources until none is, the smallest score loss per freed
        slot first, each onto a candidate that takes no more of any resource (the same node with
        less load, or no edge at; no more cloud), so nothing fills up elsewhere. "Unserved" takes
        nothing, so every resource can always be brought within its capacity."""
        at = np.arange(len(choice))
        for _ in range(len(self.resources) + 1):
            used = self._used(choice)
            over = np.flatnonzero(used > cap + _EPS)
            if not len(over):
                break
            for res in over[np.argsort(cap[over] - used[over])]:
                excess = self._used(choice)[res] - cap[res]
                if excess <= _EPS:
                    continue
                load = self._load_on(int(res))
                cur_load = load[at, choice]
                users = np.flatnonzero(cur_load > 0)
                cur = choice[users]
                cur_er = self.edge_res[users, cur][:, None]
                cur_e = self.edge[users, cur][:, None]
                cur_c = self.cloud[users, cur][:, None]
                er = self.edge_res[users]
                same_or_less_edge = ((er == cur_er) & (self.edge[users] <= cur_e + _EPS)) | (
                    self.edge[users] <= 0
                )
                ok = (
                    same_or_less_edge
                    & (self.cloud[users] <= cur_c + _EPS)
                    & (load[users] < cur_load[users][:, None] - _EPS)
                    & np.isfinite(self.score[users])
                )
                freed = cur_load[users][:, None] - load[users]
                loss = self.score[users, cur][:, None] - self.score[users]
                ratio = np.where(ok, loss / np.maximum(freed, _EPS), np.inf)
                alt = np.argmin(ratio, axis=1)
                best_ratio = ratio[np.arange(len(users)), alt]
                order = np.argsort(best_ratio, kind="stable")
                gained = np.cumsum(freed[np.arange(len(users)), alt][order])
                take = order[: int(np.searchsorted(gained, excess - _EPS)) + 1]
                take = take[np.isfinite(best_ratio[take])]
                choice[users[take]] = alt[take]
        return choice

    def _fill(self, choice: I, cap: F) -> I:
        """Upgrade devices into the capacity left, largest gain per (relative) slot first."""
        at = np.arange(len(choice))
        for _ in range(4):
            left = cap - self._used(choice)
            cur = choice
            cur_er = self.edge_res[at, cur][:, None]
            # Extra load a candidate puts on its edge node: all of it on another node, the
            # difference on the same one.
            extra_e = np.where(self.edge_res == cur_er, self.edge - self.edge[at, cur][:, None], self.edge)
            extra_c = self.cloud - self.cloud[at, cur][:, None]
            room_e = np.where(self.edge_res >= 0, self._gather(left, self.edge_res), np.inf)
            room_c = np.where(self.cloud_id >= 0, self._gather(left, self.cloud_id), np.inf)[:, None]
            gain = self.score - self.score[at, cur][:, None]
            ok = (gain > _EPS) & (extra_e <= room_e + _EPS) & (extra_c <= room_c + _EPS)
            if not ok.any():
                break
            with np.errstate(invalid="ignore"):
                cost = np.maximum(extra_e, 0.0) / np.maximum(room_e, 1e-9) + np.maximum(
                    extra_c, 0.0
                ) / np.maximum(room_c, 1e-9)
            value = np.where(ok, gain / np.maximum(np.nan_to_num(cost), 1e-9), -np.inf)
            pick = np.argmax(value, axis=1)
            candidates = np.flatnonzero(np.isfinite(value[at, pick]))
            changed = False
            for i in candidates[np.argsort(-value[candidates, pick[candidates]], kind="stable")]:
                k, c0 = int(pick[i]), int(choice[i])
                new_r, old_r = int(self.edge_res[i, k]), int(self.edge_res[i, c0])
                c_id = int(self.cloud_id[i])
                delta = dict.fromkeys((new_r, old_r, c_id), 0.0)
                if new_r >= 0:
                    delta[new_r] += float(self.edge[i, k])
                if old_r >= 0:
                    delta[old_r] -= float(self.edge[i, c0])
                if c_id >= 0:
                    delta[c_id] += float(self.cloud[i, k] - self.cloud[i, c0])
                if any(r >= 0 and dv > left[r] + _EPS for r, dv in delta.items()):
                    continue
                for r, dv in delta.items():
                    if r >= 0:
                        left[r] -= dv
                choice[i] = k
                changed = True
            if not changed:
                break
        return choice

    # --- packing granularity: moves within an edge site -----------------------------------------

    def _sites(self) -> dict[str, list[int]]:
        """Edge pool -> its node resources (the bins of one site)."""
        sites: dict[str, list[int]] = {}
        for r, name in enumerate(self.resources):
            if "/" in name:
                sites.setdefault(name.split("/", 1)[0], []).append(r)
        return sites

    def _improve_sites(self, choice: I, cap: F) -> I:
        """Whole devices leave gaps on nodes that prices and greedy filling cannot see. Per site,
        repeatedly: a device that would gain from the site gets in when the devices already there
        can make room — by moving to configurations with less load (or off the edge), smallest score
        loss per freed slot first — for less than it gains; or one device leaves when the room it
        frees takes others that gain more than it loses. Each move re-packs the site's loads onto
        its nodes (largest first, onto the node with most room) and is kept only if they fit."""
        for site, bins in self._sites().items():
            for _ in range(len(choice)):
                if not (self._enter_one(site, bins, choice, cap) or self._evict_one(site, bins, choice, cap)):
                    break
        return choice

    def _site_items(self, bins: list[int], choice: I) -> list[int]:
        at = np.arange(len(choice))
        return np.flatnonzero(np.isin(self.edge_res[at, choice], bins)).tolist()

    def _pack_site(self, bins: list[int], cap: F, loads: dict[int, float]) -> dict[int, int] | None:
        """Device -> bin for ``loads`` (device -> slots), or None when they do not fit."""
        room = {b: float(cap[b]) for b in bins}
        out: dict[int, int] = {}
        for dev, load in sorted(loads.items(), key=lambda x: (-x[1], x[0])):
            b = min(bins, key=lambda x: (-room[x], x))
            if room[b] + _EPS < load:
                return None
            room[b] -= load
            out[dev] = b
        return out

    def _column(self, i: int, row: int, res: int) -> int:
        hit = np.flatnonzero((self.rows[i] == row) & (self.edge_res[i] == res))
        return int(hit[0])

    def _apply_site(
        self, bins: list[int], choice: I, rows: dict[int, int], packed: dict[int, int], off: dict[int, int]
    ) -> None:
        for dev, col in off.items():
            choice[dev] = col
        for dev, res in packed.items():
            choice[dev] = self._column(dev, rows[dev], res)

    def _cloud_ok(self, changes: dict[int, int], choice: I, cap: F) -> bool:
        """Whether moving each device to column ``changes[dev]`` keeps every cloud pool within capacity."""
        left = cap - self._used(choice)
        delta: dict[int, float] = {}
        for dev, col in changes.items():
            c_id = int(self.cloud_id[dev])
            if c_id >= 0:
                delta[c_id] = delta.get(c_id, 0.0) + float(
                    self.cloud[dev, col] - self.cloud[dev, choice[dev]]
                )
        return all(d <= left[c] + _EPS for c, d in delta.items())

    def _on_site_options(self, i: int, bins: list[int]) -> I:
        """Columns of device ``i`` on the first bin of the site (the same configurations are offered
        on every bin; the packing picks the bin)."""
        return np.flatnonzero(self.edge_res[i] == bins[0])

    def _off_site(self, i: int) -> int:
        """The best column of device ``i`` that uses no edge (local, cloud-only, or unserved)."""
        off = np.flatnonzero(self.edge[i] <= 0)
        return int(off[np.argmax(self.score[i, off])])

    def _enter_one(self, site: str, bins: list[int], choice: I, cap: F) -> bool:
        at = np.arange(len(choice))
        current = self._site_items(bins, choice)
        loads = {j: float(self.edge[j, choice[j]]) for j in current}
        rows = {j: int(self.rows[j, choice[j]]) for j in current}
        inside = set(current)
        first = np.isin(self.edge_res, [bins[0]])
        gain = np.where(first, self.score - self.score[at, choice][:, None], -np.inf)
        entrants = [
            int(i)
            for i in np.argsort(-gain.max(axis=1), kind="stable")
            if gain[i].max() > _EPS and int(i) not in inside
        ]
        for i in entrants:
            opts = self._on_site_options(i, bins)
            opts = opts[gain[i, opts] > _EPS]
            k = int(opts[np.argmax(gain[i, opts] / np.maximum(self.edge[i, opts], 1e-9))])
            want = float(gain[i, k])
            # Room made by the devices inside, cheapest first: each to its best lower-load column.
            downs: list[tuple[float, int, int, float]] = []
            for j in current:
                cj = int(choice[j])
                alt = self._on_site_options(j, bins)
                alt = alt[(self.edge[j, alt] < loads[j] - _EPS) & np.isfinite(self.score[j, alt])]
                choices = [*alt.tolist(), self._off_site(j)]
                best = min(
                    choices,
                    key=lambda c: (
                        float(self.score[j, cj] - self.score[j, c])
                        / max(loads[j] - float(self.edge[j, c]), 1e-9)
                    ),
                )
                freed = loads[j] - float(self.edge[j, best])
                downs.append(
                    (float(self.score[j, cj] - self.score[j, best]) / max(freed, 1e-9), j, int(best), freed)
                )
            downs.sort()
            trial_loads = {**loads, i: float(self.edge[i, k])}
            trial_rows = {**rows, i: int(self.rows[i, k])}
            changes = {i: k}  # columns, for the cloud check (a row's cloud share is the same on every bin)
            off: dict[int, int] = {}
            lost = 0.0
            base = cap  # the bins hold only the site's devices: re-packing starts from empty bins
            for step in range(len(downs) + 1):
                if lost >= want - _EPS:
                    break
                packed = self._pack_site(bins, base, trial_loads)
                if packed is not None:
                    if self._cloud_ok(changes, choice, cap):
                        self._apply_site(bins, choice, trial_rows, packed, off)
                        return True
                    break
                if step == len(downs):
                    break
                _, j, col, _ = downs[step]
                lost += float(self.score[j, choice[j]] - self.score[j, col])
                changes[j] = col
                if self.edge[j, col] > 0:
                    trial_loads[j] = float(self.edge[j, col])
                    trial_rows[j] = int(self.rows[j, col])
                else:
                    trial_loads.pop(j)
                    trial_rows.pop(j)
                    off[j] = col
        return False

    def _evict_one(self, site: str, bins: list[int], choice: I, cap: F) -> bool:
        at = np.arange(len(choice))
        current = self._site_items(bins, choice)
        if not current:
            return False
        inside = set(current)
        first = np.isin(self.edge_res, [bins[0]])
        gain = np.where(first, self.score - self.score[at, choice][:, None], -np.inf)
        entrants = [
            int(i)
            for i in np.argsort(-gain.max(axis=1), kind="stable")
            if gain[i].max() > _EPS and int(i) not in inside
        ]
        if not entrants:
            return False
        base = cap  # the bins hold only the site's devices: re-packing starts from empty bins
        for j in sorted(
            current, key=lambda j: float(self.score[j, choice[j]] - self.score[j, self._off_site(j)])
        ):
            out_col = self._off_site(j)
            loss = float(self.score[j, choice[j]] - self.score[j, out_col])
            loads = {x: float(self.edge[x, choice[x]]) for x in current if x != j}
            rows = {x: int(self.rows[x, choice[x]]) for x in current if x != j}
            room = float(base[bins].sum()) - sum(loads.values())
            added: list[tuple[int, int]] = []
            total = 0.0
            for i in entrants:
                opts = self._on_site_options(i, bins)
                opts = opts[(gain[i, opts] > _EPS) & (self.edge[i, opts] <= room + _EPS)]
                if not len(opts):
                    continue
                k = int(opts[np.argmax(gain[i, opts])])
                trial = {**loads, i: float(self.edge[i, k])}
                if self._pack_site(bins, base, trial) is None:
                    continue
                loads, rows = trial, {**rows, i: int(self.rows[i, k])}
                added.append((i, k))
                total += float(gain[i, k])
                room -= float(self.edge[i, k])
            if added and total - loss > _EPS and self._cloud_ok({j: out_col, **dict(added)}, choice, cap):
                packed = self._pack_site(bins, base, loads)
                assert packed is not None
                self._apply_site(bins, choice, rows, packed, {j: out_col})
                return True
        return False

    def consume(self, choice: I, capacity: dict[str, float]) -> None:
        for r, used in zip(self.resources, self._used(choice), strict=True):
            capacity[r] = capacity.get(r, 0.0) - float(used)

    def rows_of(self, choice: I) -> list[I]:
        out = [np.full(len(b.devices), NONE, dtype=np.int64) for b in self.buckets]
        for i, (bi, d) in enumerate(self.owners):
            row = int(self.rows[i, choice[i]])
            out[bi][d] = NONE if row == UNSERVED else row
        return out

    def nodes_of(self, choice: I) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, (bi, d) in enumerate(self.owners):
            res = int(self.edge_res[i, choice[i]])
            if res >= 0:
                out[self.buckets[bi].devices.ids[d]] = self.resources[res].split("/", 1)[1]
        return out
