"""An exact solver for the planner's problem, as a MILP: the reference ``plan`` is measured against.

A binary per (device, undominated configuration, edge node where the configuration uses the edge),
exactly one per device (including "unserved"), every edge node and cloud pool within its capacity,
maximising the sum of scores — the same objective ``plan`` maximises, on the same configuration
tables, with the whole configuration space of every device (a configuration that another beats on
score while using no more of either pool can never be needed, so those are left out: exact).

Needs scipy (HiGHS through ``scipy.optimize.milp``), which comes with the ``models`` extra; meant for
benchmarks and tests on instances of a few thousand devices, not for production fleets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.planner.allocate import UNSERVED_SCORE
from controller.planner.configs import F, I
from controller.planner.plan import prepare
from controller.planner.search import Prices
from controller.planner.types import Binding, Pattern, Plan, PlanInput, Tier


@dataclass(frozen=True, slots=True)
class ExactResult:
    objective: float  # the optimum (nan if the solver stopped without a solution)
    local_objective: float  # everyone on its best configuration that needs no shared capacity
    status: str
    binaries: int


def objective(result: Plan) -> float:
    """A plan's objective on the exact solver's terms: unserved devices count ``UNSERVED_SCORE``."""
    unserved = sum(1 for x in result.infeasible if x.binding is Binding.CAPACITY)
    return result.objective + unserved * UNSERVED_SCORE


def solve_exact(data: PlanInput, *, time_limit_s: float = 120.0) -> ExactResult:
    from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

    prepared = prepare(data)
    resources: dict[str, int] = {}
    caps: list[float] = []
    for p in data.pools:
        keys = (
            [(f"{p.name}/{n}", p.node_capacity_slots) for n in p.nodes]
            if p.tier is Tier.EDGE
            else [(p.name, p.capacity_slots)]
        )
        for key, cap in keys:
            resources[key] = len(caps)
            caps.append(cap)
    nodes = {p.name: p.nodes for p in data.pools}
    costs: list[float] = []
    dev_of: list[int] = []
    res_rows: list[int] = []
    res_cols: list[int] = []
    res_vals: list[float] = []
    local_total = 0.0
    n_dev = 0
    for b in prepared.buckets:
        index, devices = b.index, b.devices
        t = index.table
        rows = np.arange(t.size)
        uses_edge = t.uses_edge
        for d in range(len(devices)):
            scores = index.score(devices, np.full(len(rows), d), rows, Prices())
            free = scores[t.pattern == int(Pattern.LOCAL)]
            best_free = float(np.max(free)) if len(free) else -np.inf
            local_total += best_free if np.isfinite(best_free) else UNSERVED_SCORE
            options: list[tuple[float, list[tuple[int, float]]]] = [(UNSERVED_SCORE, [])]
            for r in undominated(scores, t.edge_slots, t.cloud_slots, best_free):
                cloud = [(resources[b.cloud_pool], float(t.cloud_slots[r]))] if t.cloud_slots[r] > 0 else []
                if uses_edge[r]:
                    for n in nodes[b.edge_pool]:
                        edge = (resources[f"{b.edge_pool}/{n}"], float(t.edge_slots[r]))
                        options.append((float(scores[r]), [edge, *cloud]))
                else:
                    options.append((float(scores[r]), cloud))
            for score, loads in options:
                col = len(costs)
                costs.append(-score)
                dev_of.append(n_dev)
                for res, val in loads:
                    res_rows.append(res)
                    res_cols.append(col)
                    res_vals.append(val)
            n_dev += 1
    columns = len(costs)
    if columns == 0:
        return ExactResult(0.0, 0.0, "nothing to plan", 0)
    one = csr_matrix((np.ones(columns), (np.asarray(dev_of), np.arange(columns))), shape=(n_dev, columns))
    cap = csr_matrix((res_vals, (res_rows, res_cols)), shape=(len(caps), columns))
    res = milp(
        c=np.asarray(costs),
        constraints=[LinearConstraint(one, 1, 1), LinearConstraint(cap, -np.inf, np.asarray(caps))],
        integrality=np.ones(columns),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6},
    )
    value = -float(res.fun) if res.x is not None else float("nan")
    return ExactResult(value, local_total, str(res.message), columns)


def undominated(scores: F, edge: F, cloud: F, floor: float) -> I:
    """Rows not beaten on score by one using no more of either pool, among those at least ``floor``."""
    cand = np.flatnonzero(np.isfinite(scores) & (scores >= floor))
    order = cand[np.argsort(-scores[cand], kind="stable")]
    kept: list[int] = []
    ke: list[float] = []
    kc: list[float] = []
    for r in order.tolist():
        e, c = float(edge[r]), float(cloud[r])
        if ke and np.any((np.asarray(ke) <= e + 1e-12) & (np.asarray(kc) <= c + 1e-12)):
            continue
        kept.append(r)
        ke.append(e)
        kc.append(c)
    return np.asarray(kept, dtype=np.int64)
