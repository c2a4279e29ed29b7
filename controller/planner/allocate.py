"""Sharing edge and cloud capacity: which devices get to offload when not all of them can.

Unconstrained, every device takes its own best configuration (``search``). When that would put
more load on a pool than its capacity, the planner solves the assignment problem

    maximise  sum_d score(d, c_d)   subject to   sum_d slots_r(c_d) <= capacity_r  for every resource r

where a resource is one edge node (a device offloading to an edge pool is served by one of its
nodes, and a node's slots are what it can hold) or one cloud pool (its workers share the load, so
it is planned as one). A multiple-choice knapsack with one knapsack per resource, solved in steps:

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
   left (largest gain per slot first). The best repaired assignment over the iterations is kept,
   and so is the current plan (every device on its current configuration and node, repaired) when
   that scores better.
4. **Site moves.** Whole devices leave gaps on nodes that prices cannot see: within each edge site,
   a device gets in when others can make room for less than it gains, or one leaves when the room
   takes others that gain more. Every move is kept only if it raises the objective; at most a
   number of moves proportional to the site's devices are made.

**Hysteresis** is part of the score: a device's current configuration *on its current edge node*
scores ``hysteresis`` more (on every node when its current node is not known), and packing keeps a
device on its current node whenever it fits there — so re-planning what did not change moves
nobody, not even between the nodes of a site.

``bench/planner.py`` measures the result against an exact MILP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from controller.planner.configs import NONE, B, F, I
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
#: Site moves: at most this many per device that can use the site (and one more), and per move
#: tried, at most this many re-packings that fail before the next candidate is tried.
SITE_MOVES_PER_DEVICE = 2
PACK_TRIES = 8


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
    #: Each device's current edge node ('' none or unknown), for hysteresis; () for none at all.
    current_node: tuple[str, ...] = ()
    #: What one node of the edge pool, and the whole cloud pool, hold (slots at the utilisation cap).
    edge_node_slots: float = 0.0
    cloud_pool_slots: float = 0.0

    def node_of(self, d: int) -> str:
        return self.current_node[d] if self.current_node else ""


def choose(bucket: Bucket, prices: Prices, hysteresis: float) -> tuple[I, F]:
    """Every device's best row at these prices; a device's current row is kept unless another beats
    it by more than ``hysteresis``."""
    rows, scores = bucket.index.best(bucket.devices, prices, bucket.unpriced)
    if bucket.unpriced is None and not (prices.edge or prices.cloud):
        bucket.unpriced = rows.copy()
    has = np.flatnonzero(bucket.current != NONE)
    if len(has):
        current = bucket.index.score(bucket.devices, has, bucket.current[has], prices) + hysteresis
        keep = np.isfinite(current) & (current >= scores[has] - _EPS)  # -inf: it may not run it
        rows[has[keep]] = bucket.current[has[keep]]
        scores[has[keep]] = current[keep]
    return rows, scores


def edge_resource(pool: str, node: str) -> str:
    return f"{pool}/{node}"


@dataclass(eq=False)
class Allocation:
    rows: list[I]
    nodes: dict[str, str] = field(default_factory=dict)  # device id -> the edge node serving it


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
    # What the uncontended devices take stays theirs: place them first, then share what is left. A
    # pool they alone cannot be packed onto (first-fit is not monotone) is contended too.
    while True:
        contended = [i for i, b in enumerate(buckets) if b.edge_pool in over or b.cloud_pool in over]
        quiet = [i for i in range(len(buckets)) if i not in contended]
        trial, placed = dict(capacity), {}
        more = _over_cloud([buckets[i] for i in quiet], [rows[i] for i in quiet], trial)
        more |= _pack([buckets[i] for i in quiet], [rows[i] for i in quiet], nodes, trial, placed)
        if not more:
            break
        over |= more
    capacity.update(trial)
    log.info(
        "capacity binds on %s (%d devices contend); allocating by Lagrangian prices",
        ", ".join(sorted(over)),
        sum(len(buckets[i].devices) for i in contended),
    )
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
    """Place every row with an edge segment on a node of its pool, taking its load out of
    ``capacity``: each device on its current node where it fits (biggest first), the rest biggest
    first on the node with the most room (ties: first by name) — or, when that leaves something
    out, all of them that way. The edge pools where some load fitted no node (nothing is placed on
    those)."""
    loads: dict[str, list[tuple[float, str, str]]] = {}
    for b, r in zip(buckets, rows, strict=True):
        t = b.index.table
        uses = t.uses_edge
        for d, row in enumerate(r.tolist()):
            if row != NONE and uses[row]:
                loads.setdefault(b.edge_pool, []).append(
                    (float(t.edge_slots[row]), b.devices.ids[d], b.node_of(d))
                )
    failed: set[str] = set()
    for pool in sorted(loads):
        names = nodes.get(pool, ())
        room = {n: capacity.get(edge_resource(pool, n), 0.0) for n in names}
        items = sorted(loads[pool], key=lambda x: (-x[0], x[1]))
        got = _place(items, names, room, keep=True) or _place(items, names, room, keep=False)
        if got is None:
            failed.add(pool)
            continue
        where, left = got
        for n, value in left.items():
            capacity[edge_resource(pool, n)] = value
        placed.update(where)
    return failed


def _place(
    items: list[tuple[float, str, str]], names: Sequence[str], room: Mapping[str, float], *, keep: bool
) -> tuple[dict[str, str], dict[str, float]] | None:
    """(device -> node, room left) for ``items`` (load, device, current node), sorted biggest first;
    None when one fits no node. ``keep``: first each on its current node where it fits."""
    if not names:
        return None
    left = dict(room)
    out: dict[str, str] = {}
    rest = items
    if keep:
        rest = []
        for item in items:
            load, device, home = item
            if home in left and left[home] + _EPS >= load:
                left[home] -= load
                out[device] = home
            else:
                rest.append(item)
    for load, device, _ in rest:
        n = min(names, key=lambda x: (-left[x], x))
        if left[n] + _EPS < load:
            return None
        left[n] -= load
        out[device] = n
    return out, left


class _Candidates:
    """Per contended device, its hull candidates as matrices (devices x candidates): score, the
    resource its edge share lands on (an edge node; -1: none) with its slots, and its slots on the
    device's cloud pool. Column 0 is "unserved"; padding has score -inf. ``home``: each device's
    current column (its current row on its current node; -1: none), which carries the hysteresis."""

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
        home: I,
    ) -> None:
        self.buckets, self.owners = buckets, owners
        self.rows, self.score, self.edge_res, self.edge, self.cloud = rows, score, edge_res, edge, cloud
        self.cloud_id, self.resources, self.home = cloud_id, resources, home

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
            uses = b.index.table.uses_edge
            node_ids = (
                [rid[edge_resource(b.edge_pool, n)] for n in nodes.get(b.edge_pool, ())]
                if b.edge_pool
                else []
            )
            cols: list[tuple[int, int]] = []
            for row in sorted(per_bucket[bi][d]):
                if uses[row]:
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
        home = np.full(n, -1, dtype=np.int64)
        # Every (device, row) of a bucket scored at once.
        scored: list[F] = []
        first = 0
        for b in buckets:
            mine = range(first, first + len(b.devices))  # owners are grouped by bucket
            first += len(b.devices)
            dev = np.asarray([owners[i][1] for i in mine for _ in columns[i]], dtype=np.int64)
            r = np.asarray([c[0] for i in mine for c in columns[i]], dtype=np.int64)
            scored.append(b.index.score(b.devices, dev, r, Prices()) if len(r) else np.zeros(0))
        offsets = [0] * len(buckets)
        for i, ((bi, d), cols) in enumerate(zip(owners, columns, strict=True)):
            b = buckets[bi]
            cloud_id[i] = rid.get(b.cloud_pool, -1) if b.cloud_pool else -1
            if not cols:
                continue
            k = len(cols)
            r = np.asarray([c[0] for c in cols], dtype=np.int64)
            res = np.asarray([c[1] for c in cols], dtype=np.int64)
            s = scored[bi][offsets[bi] : offsets[bi] + k]
            offsets[bi] += k
            node = b.node_of(d)
            at = rid.get(edge_resource(b.edge_pool, node), -1) if node and b.edge_pool else -1
            # The bonus goes to the current row on the current node; on every node of it where the
            # current node is not known (or no longer in the pool).
            cur = b.current[d]
            if cur != NONE:
                s = s + np.where((r == cur) & ((res < 0) | (res == at) | (at < 0)), hysteresis, 0.0)
                hit = np.flatnonzero((r == cur) & ((res < 0) | (res == at)))
                if len(hit):
                    home[i] = 1 + int(hit[0])
            rows[i, 1 : k + 1], score[i, 1 : k + 1] = r, s
            edge_res[i, 1 : k + 1] = res
            t = b.index.table
            edge[i, 1 : k + 1] = t.edge_slots[r]
            cloud[i, 1 : k + 1] = t.cloud_slots[r]
        return _Candidates(buckets, owners, rows, score, edge_res, edge, cloud, cloud_id, resources, home)

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
        has = np.flatnonzero(self.home >= 0)
        if len(has):
            # The current plan, where it still fits: hysteresis means it should win unless beaten.
            warm = best_choice.copy()
            warm[has] = self.home[has]
            warm = self._fill(self._repair(warm, cap), cap)
            if float(self.score[at, warm].sum()) > best_value + _EPS:
                best_choice = warm
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
        less load, or no edge at all; no more cloud), so nothing fills up elsewhere. "Unserved"
        takes nothing, so every resource can always be brought within its capacity."""
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
                same_or_less_edge = ((er == cur_er) & (self.edge[users] <= cur_e + _EPS)) | (er < 0)
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
        its nodes (each on its node where it fits, the rest largest first onto the node with most
        room) and is kept only if they fit and the objective (hysteresis included) rises; at most
        ``SITE_MOVES_PER_DEVICE`` moves per device that can use the site."""
        for bins in self._sites().values():
            users = int(np.isin(self.edge_res, bins).any(axis=1).sum())
            site = _Site(self, bins, cap)
            for _ in range(SITE_MOVES_PER_DEVICE * users + 1):
                if not (site.enter_one(choice) or site.evict_one(choice)):
                    break
        return choice

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


class _Site:
    """Moves within one edge site (its nodes are ``bins``) on a ``_Candidates`` choice."""

    def __init__(self, c: _Candidates, bins: list[int], cap: F) -> None:
        self.c, self.bins, self.cap = c, bins, cap
        self.total = float(cap[bins].sum())
        home_res = np.where(c.home >= 0, c.edge_res[np.arange(len(c.home)), np.maximum(c.home, 0)], -1)
        # The node a device's site columns are read on: its current node where that is here (the
        # hysteresis is on it), else the first (the same configurations are on every node).
        self.pref = np.where(np.isin(home_res, bins), home_res, bins[0])
        self.onsite = c.edge_res == self.pref[:, None]

    # --- helpers ----------------------------------------------------------------------------------

    def _state(self, choice: I) -> tuple[I, F, I]:
        c = self.c
        at = np.arange(len(choice))
        res = c.edge_res[at, choice]
        inside = np.flatnonzero(np.isin(res, self.bins))
        return inside, c.score[at, choice], res

    def _entrants(self, choice: I, inside: I, cur_score: F) -> tuple[I, F]:
        """Devices outside the site that some site column would improve (best gain first), and the
        gain of every (device, column) on the site (-inf elsewhere)."""
        gain = np.where(self.onsite, self.c.score - cur_score[:, None], -np.inf)
        best = gain.max(axis=1)
        outside = np.ones(len(choice), dtype=bool)
        outside[inside] = False
        entrants = np.flatnonzero((best > _EPS) & outside)
        return entrants[np.argsort(-best[entrants], kind="stable")], gain

    def _pack(self, loads: Mapping[int, float], homes: Mapping[int, int]) -> dict[int, int] | None:
        """Device -> bin for ``loads``: each on its ``homes`` bin where it fits (largest first), the
        rest largest first onto the bin with most room; or all that way; None when they do not fit."""
        items = sorted(loads.items(), key=lambda x: (-x[1], x[0]))
        for keep in (True, False):
            room = {b: float(self.cap[b]) for b in self.bins}
            out: dict[int, int] = {}
            rest = items
            if keep:
                rest = []
                for dev, load in items:
                    h = homes.get(dev, -1)
                    if h in room and room[h] + _EPS >= load:
                        room[h] -= load
                        out[dev] = h
                    else:
                        rest.append((dev, load))
            ok = True
            for dev, load in rest:
                b = min(self.bins, key=lambda x: (-room[x], x))
                if room[b] + _EPS < load:
                    ok = False
                    break
                room[b] -= load
                out[dev] = b
            if ok:
                return out
        return None

    def _column(self, i: int, row: int, res: int) -> int:
        hit = np.flatnonzero((self.c.rows[i] == row) & (self.c.edge_res[i] == res))
        return int(hit[0])

    def _commit(
        self, choice: I, rows: Mapping[int, int], packed: Mapping[int, int], off: Mapping[int, int]
    ) -> bool:
        """Apply a move (devices re-packed: ``rows`` on ``packed`` bins; ``off``: columns off the
        site) if the cloud pools hold it and it raises the objective."""
        c = self.c
        changes: dict[int, int] = dict(off)
        for dev, b in packed.items():
            cur = int(choice[dev])
            if int(c.rows[dev, cur]) == rows[dev] and int(c.edge_res[dev, cur]) == b:
                continue
            changes[dev] = self._column(dev, rows[dev], b)
        gain = sum(float(c.score[d, k] - c.score[d, choice[d]]) for d, k in changes.items())
        if gain <= _EPS or not self._cloud_ok(changes, choice):
            return False
        for dev, col in changes.items():
            choice[dev] = col
        return True

    def _cloud_ok(self, changes: Mapping[int, int], choice: I) -> bool:
        """Whether moving each device to column ``changes[dev]`` keeps every cloud pool within capacity."""
        c = self.c
        left = self.cap - c._used(choice)
        delta: dict[int, float] = {}
        for dev, col in changes.items():
            c_id = int(c.cloud_id[dev])
            if c_id >= 0:
                delta[c_id] = delta.get(c_id, 0.0) + float(c.cloud[dev, col] - c.cloud[dev, choice[dev]])
        return all(d <= left[k] + _EPS for k, d in delta.items())

    # --- moves ------------------------------------------------------------------------------------

    def _cloud_room(self, choice: I) -> B:
        """Per (device, column): whether the column takes no more of the device's cloud pool than it
        has left (with the device's own share now counted as free)."""
        c = self.c
        at = np.arange(len(choice))
        left = self.cap - c._used(choice)
        room = np.where(c.cloud_id >= 0, left[np.maximum(c.cloud_id, 0)], np.inf)
        return np.asarray(c.cloud - c.cloud[at, choice][:, None] <= room[:, None] + _EPS)

    def enter_one(self, choice: I) -> bool:
        """One device outside gets in, the devices inside making room (cheapest first)."""
        c = self.c
        inside, cur_score, cur_res = self._state(choice)
        entrants, gain = self._entrants(choice, inside, cur_score)
        if not len(entrants):
            return False
        loads = {int(j): float(c.edge[j, choice[j]]) for j in inside}
        rows = {int(j): int(c.rows[j, choice[j]]) for j in inside}
        homes = {int(j): int(cur_res[j]) for j in inside}
        used = sum(loads.values())
        # Room the devices inside can make, cheapest first: each to its best column with less load
        # on its node, or off the site.
        down_j, down_col, down_freed, down_lost = self._downs(choice, inside, cur_res, cur_score)
        # (A step that gains is not a loss: the running maximum keeps the search monotone.)
        cum_lost = np.maximum.accumulate(np.concatenate(([0.0], np.cumsum(down_lost))))
        cum_freed = np.concatenate(([0.0], np.cumsum(down_freed)))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(
                gain[entrants] > _EPS, gain[entrants] / np.maximum(c.edge[entrants], 1e-9), -np.inf
            )
        picks = np.argmax(ratio, axis=1)
        # An entrant that needs at least as much room for at most the gain of one that failed fails
        # too: (load, gain) of the failures, so such entrants are not tried again.
        failed: list[tuple[float, float]] = []
        for i, k in zip(entrants.tolist(), picks.tolist(), strict=True):
            load, want = float(c.edge[i, k]), float(gain[i, k])
            if any(fl <= load + _EPS and fw >= want - _EPS for fl, fw in failed):
                continue
            # Steps worth taking cost less than the gain; packing needs at least this much freed.
            last = int(np.searchsorted(cum_lost, want - _EPS, "left"))
            first = int(np.searchsorted(cum_freed, used + load - self.total - _EPS, "left"))
            for step in range(first, min(last, first + PACK_TRIES)):
                trial_loads = {**loads, i: load}
                trial_rows = {**rows, i: int(c.rows[i, k])}
                trial_homes = {**homes, i: int(self.pref[i])}
                off: dict[int, int] = {}
                for j, col in zip(down_j[:step].tolist(), down_col[:step].tolist(), strict=True):
                    if c.edge_res[j, col] >= 0:
                        trial_loads[j] = float(c.edge[j, col])
                        trial_rows[j] = int(c.rows[j, col])
                    else:
                        trial_loads.pop(j)
                        trial_rows.pop(j)
                        off[j] = col
                packed = self._pack(trial_loads, trial_homes)
                if packed is not None:
                    if self._commit(choice, trial_rows, packed, off):
                        return True
                    break
            failed = [f for f in failed if not (load <= f[0] + _EPS and want >= f[1] - _EPS)]
            failed.append((load, want))
        return False

    def _downs(self, choice: I, inside: I, cur_res: I, cur_score: F) -> tuple[I, I, F, F]:
        """Per device inside, its cheapest way to free load (smallest loss per slot freed): a column
        with less load on its node, or the best off the site that its cloud pool has room for;
        sorted cheapest first."""
        c = self.c
        if not len(inside):
            empty = np.zeros(0)
            return inside, inside, empty, empty
        load = c.edge[inside, choice[inside]][:, None]
        same = (c.edge_res[inside] == cur_res[inside][:, None]) & (c.edge[inside] < load - _EPS)
        off = (c.edge_res[inside] < 0) & self._cloud_room(choice)[inside]
        ok = (same | off) & np.isfinite(c.score[inside])
        freed = np.where(c.edge_res[inside] < 0, load, load - c.edge[inside])
        lost = cur_score[inside][:, None] - c.score[inside]
        ratio = np.where(ok, lost / np.maximum(freed, 1e-9), np.inf)
        col = np.argmin(ratio, axis=1)
        at = np.arange(len(inside))
        order = np.lexsort((inside, ratio[at, col]))
        return inside[order], col[order], freed[at, col][order], lost[at, col][order]

    def evict_one(self, choice: I) -> bool:
        """One device inside leaves (off the site) when the room it frees takes devices outside that
        gain more than it loses."""
        c = self.c
        inside, cur_score, cur_res = self._state(choice)
        if not len(inside):
            return False
        entrants, gain = self._entrants(choice, inside, cur_score)
        if not len(entrants):
            return False
        # Per entrant, the least load any gaining site column of it takes.
        opt_load = np.where(gain[entrants] > _EPS, c.edge[entrants], np.inf)
        least = opt_load.min(axis=1)
        smallest = float(least.min())
        all_loads = {int(j): float(c.edge[j, choice[j]]) for j in inside}
        all_rows = {int(j): int(c.rows[j, choice[j]]) for j in inside}
        used = sum(all_loads.values())
        fits_cloud = self._cloud_room(choice)
        off_col: dict[int, int] = {}
        for j in inside.tolist():
            cols = np.flatnonzero((c.edge_res[j] < 0) & fits_cloud[j])
            off_col[j] = int(cols[np.argmax(c.score[j, cols])])  # "unserved" always qualifies
        loss_of = {j: float(cur_score[j] - c.score[j, off_col[j]]) for j in off_col}
        for j in sorted(off_col, key=lambda x: (loss_of[x], x)):
            room = self.total - (used - all_loads[j])
            if room < smallest - _EPS:
                continue
            loads = {x: v for x, v in all_loads.items() if x != j}
            rows = {x: v for x, v in all_rows.items() if x != j}
            homes = {int(x): int(cur_res[x]) for x in inside}
            total, failures, too_big = 0.0, 0, np.inf
            for e in np.flatnonzero(least <= room + _EPS).tolist():
                if least[e] > room + _EPS or least[e] >= too_big - _EPS:
                    continue
                fit = opt_load[e] <= room + _EPS
                at = int(np.argmax(np.where(fit, gain[entrants[e]], -np.inf)))
                i, load = int(entrants[e]), float(opt_load[e, at])
                trial = {**loads, i: load}
                homes[i] = int(self.pref[i])
                if self._pack(trial, homes) is None:
                    failures += 1
                    too_big = min(too_big, load)
                    if failures >= PACK_TRIES:
                        break
                    continue
                loads, rows = trial, {**rows, i: int(c.rows[i, at])}
                total += float(gain[i, at])
                room -= load
                if room < smallest - _EPS:
                    break
            if total - loss_of[j] > _EPS:
                packed = self._pack(loads, homes)
                assert packed is not None
                if self._commit(choice, rows, packed, {j: off_col[j]}):
                    return True
        return False
