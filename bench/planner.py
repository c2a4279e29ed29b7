"""Benchmark: the fleet planner's speed, its optimality against exact references, and its plans
against four baselines on a heterogeneous MiniLM fleet. One run prints everything.

Usage::

    .venv/bin/python bench/planner.py [--quick] [--refresh] [--json OUT]

1. **Speed**: ``plan()`` on synthetic fleets of 10,000 and 100,000 phones (20 cut points, 4
   precisions, phone/edge/cloud tiers, 100 edge nodes in 50 sites, one cloud pool), wall time of
   the whole call (configuration tables, search, capacity, node placement, explanations). The same
   run times a naive dense scan (score every configuration of every device) on the 10,000 fleet as
   the baseline the ratio is printed against. Goal: 10,000 devices in under 2 s. Then heavily
   contended fleets — thousands of phones wanting far more of one or a few edge sites (2 nodes of
   one slot each) than they hold — timed against that 10,000-device run (a ratio, so it reads the
   same on any machine): what capacity allocation and its site moves cost when they bind hardest.
2. **Optimality, uncapacitated**: every device's choice against exhaustive enumeration (the dense
   scan), 1,000 devices: count of devices whose score differs.
3. **Optimality, capacitated**: 1,000 devices competing for tight edge and cloud pools; the
   planner's objective against an exact MILP (scipy's HiGHS) of the same problem: every
   undominated configuration of every device on every edge node it could use, per-node and
   per-pool capacities. Reported: the gap in the objective, and the gap in what the objective
   gains over "everyone local" (the part of the objective that capacity decides). Goal: within 2%.
4. **MiniLM fleet**: phones with 5-100 Mbit/s links, 5 edge nodes, one cloud GPU pool, MiniLM's
   measured block profiles (the toolchain run on the cached export, cached after the first run):
   mean and p95 predicted latency, SLO attainment and mean accuracy of the planner against
   all-local fp32, all-local best precision, all-cloud fp32 and a Neurosurgeon-style single cut at
   fp32 (device + cloud, the cut that minimises latency). Baselines ignore capacity, as those
   schemes do; how far over its capacity each one would put the cloud pool is printed too.

Not a test: it prints tables and the goal lines and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from controller.planner import plan, synthetic
from controller.planner.exact import objective, solve_exact
from controller.planner.plan import prepare
from controller.planner.search import Prices
from controller.planner.types import (
    DeploymentInput,
    Link,
    Plan,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
)

console = Console(width=132) if not Console().is_terminal else Console()
SPEED_GOAL_S = 2.0
MILP_GAP_GOAL = 0.02


# --------------------------------------------------------------------------------------------------
# 1. Speed


def speed_instance(devices: int, seed: int = 1) -> PlanInput:
    return synthetic.instance(
        seed,
        devices=devices,
        cuts=20,
        edge_sites=50,
        nodes_per_site=2,
        slots_per_node=4,
        cloud_workers=16,
        slo_ms=35.0,
    )


#: (devices, edge sites) of the contended speed runs.
CONTENDED = ((2_000, 1), (5_000, 1), (10_000, 5))


def contended_instance(devices: int, sites: int, seed: int = 2) -> PlanInput:
    """Many phones over few edge sites of 2 one-slot nodes, a one-slot cloud pool: the edge is
    wanted several times over."""
    return synthetic.instance(
        seed,
        devices=devices,
        cuts=8,
        edge_sites=sites,
        nodes_per_site=2,
        slots_per_node=1,
        cloud_workers=1,
        cloud_slots=1,
        slo_ms=30.0,
        request_rate=20.0,
    )


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    times: list[float] = []
    result = None
    for _ in range(repeat):
        begin = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times), result


def dense_scan(data: PlanInput) -> dict[str, float]:
    """Every configuration of every device scored, the best taken: exhaustive enumeration."""
    best: dict[str, float] = {}
    for b in prepare(data).buckets:
        index, devices = b.index, b.devices
        rows = np.arange(index.table.size)
        for d in range(len(devices)):
            scores = index.score(devices, np.full(len(rows), d), rows, Prices())
            best[devices.ids[d]] = float(np.max(scores))
    return best


def section_speed(quick: bool, out: dict[str, Any]) -> None:
    console.rule("1. speed")
    sizes = [10_000] if quick else [10_000, 100_000]
    rows: list[list[str]] = []
    for n in sizes:
        data = speed_instance(n)
        seconds, result = timed(lambda data=data: plan(data), repeat=3 if n <= 10_000 else 1)
        assert isinstance(result, Plan)
        patterns: dict[str, int] = {}
        for p in result.devices:
            patterns[p.key.pattern.label] = patterns.get(p.key.pattern.label, 0) + 1
        rows.append([f"{n:,}", f"{seconds:.2f}", ", ".join(f"{k} {v}" for k, v in sorted(patterns.items()))])
        out.setdefault("speed", {})[str(n)] = {"seconds": seconds, "patterns": patterns}
    data = speed_instance(10_000)
    dense_s, _ = timed(lambda: dense_scan(data))
    table = Table("devices", "plan() s", "patterns chosen")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    ten = out["speed"]["10000"]["seconds"]
    console.print(
        f"dense exhaustive scan of the same 10,000 devices (scores only, no capacity): {dense_s:.2f} s; "
        f"plan() is {dense_s / ten:.1f}x faster while also allocating capacity and explaining"
    )
    out["speed"]["dense_scan_10000_s"] = dense_s
    _goal(ten < SPEED_GOAL_S, f"10,000 devices planned in {ten:.2f} s (goal < {SPEED_GOAL_S:g} s)")
    contended = Table("contended fleet", "plan() s", "vs 10,000 uncontended", "on the edge", "max node use")
    for devices, sites in CONTENDED[:1] if quick else CONTENDED:
        data = contended_instance(devices, sites)
        seconds, result = timed(lambda data=data: plan(data))
        assert isinstance(result, Plan)
        util = max(u.used_slots / u.capacity_slots for u in result.usage if u.tier is Tier.EDGE)
        edge = sum(1 for p in result.devices if p.edge_node)
        contended.add_row(
            f"{devices:,} devices, {sites} site(s) x 2 nodes",
            f"{seconds:.2f}",
            f"{seconds / ten:.1f}x",
            f"{edge:,}",
            f"{util:.0%}",
        )
        out["speed"].setdefault("contended", []).append(
            {"devices": devices, "sites": sites, "seconds": seconds, "ratio_to_10000": seconds / ten}
        )
    console.print(contended)


# --------------------------------------------------------------------------------------------------
# 2./3. Optimality


def section_uncapacitated(out: dict[str, Any]) -> None:
    console.rule("2. optimality without capacity limits: exhaustive enumeration")
    data = synthetic.instance(
        3, devices=1000, cuts=12, edge_sites=10, slots_per_node=10**6, cloud_slots=10**6
    )
    result = plan(data)
    exhaustive = dense_scan(data)
    mismatched = [p.device_id for p in result.devices if abs(p.score - exhaustive[p.device_id]) > 1e-7]
    console.print(
        f"{len(result.devices)} devices planned; {len(mismatched)} differ from exhaustive enumeration "
        f"(max |diff| {max((abs(p.score - exhaustive[p.device_id]) for p in result.devices), default=0):.2e})"
    )
    out["uncapacitated"] = {"devices": len(result.devices), "mismatched": len(mismatched)}
    _goal(not mismatched, "every device's choice equals exhaustive enumeration")


#: (seed, requests/s per device): the higher the rate, the more the pools are over-asked.
CAPACITATED = ((0, 20.0), (1, 40.0), (2, 80.0))


def capacitated_instance(seed: int, rate: float = 20.0) -> PlanInput:
    # Tight: phones that can barely meet the SLO locally, a few edge slots per site, a small cloud pool.
    return synthetic.instance(
        seed,
        devices=1000,
        cuts=8,
        edge_sites=10,
        nodes_per_site=2,
        slots_per_node=1,
        cloud_workers=2,
        cloud_slots=1,
        slo_ms=25.0,
        request_rate=rate,
        min_quality=0.995,
    )


def _demand(data: PlanInput) -> float:
    """How much shared capacity the devices would take if it were unlimited, over what there is
    (the most over-asked pool): above 1 the pools really are contended."""
    free = uncapped(data)
    wanted: dict[str, float] = {}
    for d in plan(free).devices:
        for s in d.segments:
            pool = d.edge_pool if s.tier is Tier.EDGE else d.cloud_pool if s.tier is Tier.CLOUD else ""
            if pool:
                wanted[pool] = wanted.get(pool, 0.0) + s.slots
    return max((w / p.capacity_slots for p in data.pools if (w := wanted.get(p.name, 0.0))), default=0.0)


def uncapped(data: PlanInput) -> PlanInput:
    """``data`` with every pool big enough for every device at once: as many nodes as devices (more
    slots per node would shorten the queues too, and so change what devices want)."""
    n = max(len(data.devices), 1)

    def more(p: PoolInput) -> PoolInput:
        return dataclasses.replace(p, nodes=(*p.nodes, *(f"{p.name}-x{i}" for i in range(n))))

    return dataclasses.replace(data, pools=tuple(more(p) for p in data.pools))


def section_capacitated(quick: bool, out: dict[str, Any]) -> None:
    console.rule("3. optimality with shared capacity: exact MILP (HiGHS)")
    table = Table(
        "seed",
        "req/s",
        "planner",
        "MILP optimum",
        "all local",
        "gap",
        "gap of the gain",
        "unconstrained wants",
        "max pool use",
        "plan s",
        "MILP s",
        "MILP status",
    )
    gaps: list[float] = []
    for seed, rate in CAPACITATED[: 1 if quick else None]:
        data = capacitated_instance(seed, rate)
        plan_s, result = timed(lambda data=data: plan(data))
        ours = objective(result)
        milp_s, exact = timed(lambda data=data: solve_exact(data, time_limit_s=120.0))
        best, local, status = exact.objective, exact.local_objective, exact.status
        gap = (best - ours) / abs(best)
        gain_gap = (best - ours) / (best - local) if best > local else 0.0
        gaps.append(gap)
        util = max((u.used_slots / u.capacity_slots for u in result.usage if u.capacity_slots), default=0.0)
        wants = _demand(data)
        table.add_row(
            str(seed),
            f"{rate:g}",
            f"{ours:.3f}",
            f"{best:.3f}",
            f"{local:.3f}",
            f"{gap:.3%}",
            f"{gain_gap:.2%}",
            f"{wants:.1f}x capacity",
            f"{util:.0%}",
            f"{plan_s:.2f}",
            f"{milp_s:.1f}",
            "optimal" if status.startswith("Optimization terminated successfully") else status[:28],
        )
        out.setdefault("capacitated", []).append(
            {
                "seed": seed,
                "rate": rate,
                "planner": ours,
                "milp": best,
                "local": local,
                "gap": gap,
                "gain_gap": gain_gap,
                "max_utilisation": util,
                "milp_status": status,
            }
        )
    console.print(table)
    _goal(max(gaps) <= MILP_GAP_GOAL, f"objective within {max(gaps):.3%} of the MILP optimum (goal <= 2%)")


# --------------------------------------------------------------------------------------------------
# 4. MiniLM fleet against baselines


CACHE = Path(".cache/models/minilm/planner_model.json")


def minilm_model(refresh: bool) -> tuple[PlannerModel, str]:
    """MiniLM's planner model from the toolchain (variants + block profiles, as an import measures
    them), cached in ``.cache`` after the first run (it takes about a minute)."""
    if CACHE.exists() and not refresh:
        return _load(CACHE), f"{CACHE} (measured by an earlier run; --refresh to measure again)"
    model = _measure_minilm()
    if model.name == "minilm":
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(_dump(model)))
    return model, "measured now on the cached export (import-equivalent)"


def _dump(m: PlannerModel) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    d["block_ms"] = [[list(k), list(v)] for k, v in m.block_ms.items()]
    d["call_overhead_ms"] = [[list(k), v] for k, v in m.call_overhead_ms.items()]
    d["estimated_loss"] = sorted(m.estimated_loss)
    return d


def _load(path: Path) -> PlannerModel:
    from controller.planner.types import VariantInfo

    d = json.loads(path.read_text())
    return PlannerModel(
        name=d["name"],
        cut_indices=tuple(d["cut_indices"]),
        boundary_bytes=tuple(d["boundary_bytes"]),
        precisions=tuple(d["precisions"]),
        block_ms={(k[0], k[1], int(k[2])): tuple(v) for k, v in d["block_ms"]},
        block_bytes={p: tuple(v) for p, v in d["block_bytes"].items()},
        block_loss={p: tuple(v) for p, v in d["block_loss"].items()},
        variants={p: VariantInfo(**v) for p, v in d["variants"].items()},
        call_overhead_ms={(k[0], int(k[1])): v for k, v in d["call_overhead_ms"]},
        estimated_loss=frozenset(d["estimated_loss"]),
    )


def _measure_minilm() -> PlannerModel:
    import tempfile

    from common.types import Model, ModelVariant
    from controller.onnx_check import inspect_onnx
    from controller.planner.inputs import planner_model
    from controller.toolchain.evaldata import load_eval_data
    from controller.toolchain.minilm import cached_minilm
    from controller.toolchain.model_profile import profile_model
    from controller.toolchain.variants import build_variants

    art = cached_minilm()
    if art is None:
        console.print("no cached MiniLM export (make minilm): using a synthetic MiniLM-shaped model")
        return synthetic.model(__import__("random").Random(5), name="minilm", cuts=7)
    inputs, outputs = inspect_onnx(art.model_path)
    data = load_eval_data(art.eval_path, inputs, outputs)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers' advice, once per block, is noise here
    with tempfile.TemporaryDirectory() as work:
        results = build_variants(art.model_path, data, ["fp32", "fp16", "int8", "int4"], Path(work))
        methods = {r.precision: r.method for r in results if r.accepted}
        prof = profile_model(art.model_path.read_bytes(), data, methods, workdir=Path(work))
    variants = tuple(
        ModelVariant(
            variant=r.precision,
            sha256=r.sha256,
            size_bytes=r.size_bytes,
            inputs=inputs,
            outputs=outputs,
            precision=r.precision,
            method=r.method,
            accuracy=r.metrics.accuracy,
            agreement=r.metrics.agreement,
            cosine=r.metrics.cosine,
        )
        for r in results
        if r.accepted
    )
    model = Model(
        name="minilm", variants=variants, cut_points=prof.cut_points, block_profiles=prof.block_profiles
    )
    pm = planner_model(model)
    assert pm is not None
    return pm


#: Phones of three generations (a HardwareClass policy would say this): how much slower than one
#: controller-host core each precision runs. The mid one is the catalog's phone-cpu.
PHONES = {
    "phone-low": {"fp32": 6.0, "fp16": 6.0, "int8": 4.0, "int4": 4.0},
    "phone-cpu": {"fp32": 2.5, "fp16": 2.5, "int8": 2.0, "int4": 2.0},
    "phone-high": {"fp32": 1.3, "fp16": 1.3, "int8": 1.0, "int4": 1.0},
}


def minilm_fleet(model: PlannerModel, devices: int, seed: int = 11) -> PlanInput:
    """A heterogeneous fleet: three phone generations (30% low, 50% mid, 20% high end), 5-100 Mbit/s
    links with 4-30 ms round trips to a site of 5 edge nodes, a slower path to one cloud GPU pool."""
    import random

    from controller.planner.catalog import GIB, merge, resolve
    from controller.planner.types import DeviceInput

    rng = random.Random(seed)
    ids = [f"phone-{i:05d}" for i in range(devices)]
    edge_nodes = tuple(f"edge-{i}" for i in range(5))
    pools = (
        PoolInput(
            "edge",
            Tier.EDGE,
            "edge-npu",
            edge_nodes,
            slots_per_node=2,
            utilization_cap=0.7,
            default_link=Link(50.0, 8.0),
            cloud_link=Link(1000.0, 15.0),
        ),
        PoolInput(
            "cloud",
            Tier.CLOUD,
            "cloud-gpu",
            ("gpu-0", "gpu-1"),
            slots_per_node=4,
            utilization_cap=0.7,
            default_link=Link(20.0, 45.0),
        ),
    )
    base = resolve("phone-cpu")
    hardware = {
        name: merge(base, latency_scale=scale, source=f"policy:{name}") for name, scale in PHONES.items()
    }
    hardware = {k: dataclasses.replace(v, name=k) for k, v in hardware.items()}
    fleet = []
    for i in ids:
        bw = rng.uniform(5.0, 100.0)
        rtt = rng.uniform(4.0, 30.0)
        klass = rng.choices(list(PHONES), weights=(0.3, 0.5, 0.2))[0]
        fleet.append(
            DeviceInput(
                i,
                klass,
                memory_bytes=rng.choice([1 * GIB, 2 * GIB, 4 * GIB]),
                links={
                    "edge": Link(bw, rtt, rtt * 1.6),
                    "cloud": Link(bw * 0.6, rtt + 35.0, (rtt + 35.0) * 1.4),
                },
            )
        )
    dep = DeploymentInput(
        name="minilm-phones",
        model=model.name,
        device_ids=tuple(ids),
        slo_ms=30.0,
        percentile=95.0,
        min_quality=0.995,
        request_rate=0.5,
    )
    return PlanInput(
        devices=tuple(fleet), models={model.name: model}, deployments=(dep,), pools=pools, hardware=hardware
    )


def baselines(data: PlanInput) -> dict[str, Plan]:
    free = uncapped(data)
    dep = data.deployments[0]
    only = lambda **kw: dataclasses.replace(free, deployments=(dataclasses.replace(dep, **kw),))  # noqa: E731
    fp32 = ("fp32",)
    return {
        "all-local fp32": plan(only(partitioning=False, precisions={t: fp32 for t in Tier})),
        "all-local best precision": plan(only(partitioning=False)),
        "all-cloud fp32": plan(
            only(precisions={Tier.DEVICE: (), Tier.EDGE: (), Tier.CLOUD: fp32}, edge_pools=("none",))
        ),
        "neurosurgeon (1 cut, fp32)": _neurosurgeon(free),
    }


def _neurosurgeon(data: PlanInput) -> Plan:
    """Device + cloud only, fp32 everywhere, the cut with the lowest latency for each device (what
    Neurosurgeon optimises), whatever that does to accuracy floors or capacity."""
    dep = dataclasses.replace(
        data.deployments[0],
        precisions={t: ("fp32",) for t in Tier},
        edge_pools=("none",),
        min_quality=0.0,
        slo_ms=1e9,
    )
    weights = dataclasses.replace(data.weights, latency_weight=1e6)  # latency alone decides
    result = plan(dataclasses.replace(data, deployments=(dep,), weights=weights))
    # Judge it against the real objectives.
    real = data.deployments[0]
    devices = tuple(
        dataclasses.replace(
            p,
            slo_ms=real.slo_ms,
            min_quality=real.min_quality,
            meets_slo=p.latency_ms <= real.slo_ms,
            meets_accuracy=p.quality >= real.min_quality,
        )
        for p in result.devices
    )
    return dataclasses.replace(result, devices=devices)


def summarise(p: Plan) -> dict[str, float]:
    lat = [d.latency_ms for d in p.devices]
    return {
        "devices": len(p.devices),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if lat else float("nan"),
        "slo_attainment": sum(d.meets_slo for d in p.devices) / max(len(p.devices), 1),
        "objectives_met": sum(d.feasible for d in p.devices) / max(len(p.devices), 1),
        "mean_accuracy": statistics.fmean(d.quality for d in p.devices) if p.devices else float("nan"),
        "cloud_slots": sum(s.slots for d in p.devices for s in d.segments if s.tier is Tier.CLOUD),
        "edge_slots": sum(s.slots for d in p.devices for s in d.segments if s.tier is Tier.EDGE),
    }


def section_minilm(refresh: bool, quick: bool, out: dict[str, Any]) -> None:
    console.rule("4. heterogeneous MiniLM fleet: planner vs baselines (predicted)")
    model, source = minilm_model(refresh)
    console.print(
        f"MiniLM profile: {source}; {model.blocks} blocks, precisions {', '.join(model.precisions)}"
    )
    data = minilm_fleet(model, 500 if quick else 2000)
    cap = {p.name: p.capacity_slots for p in data.pools}
    runs = {"planner": plan(data), **baselines(data)}
    table = Table(
        "scheme",
        "mean ms",
        "p95 ms",
        "SLO met",
        "SLO+floor met",
        "mean accuracy",
        "edge slots",
        "cloud slots",
    )
    for name, p in runs.items():
        s = summarise(p)
        over = lambda used, pool: f"{used:.2f}" + (" [red](over)[/red]" if used > cap[pool] + 1e-9 else "")  # noqa: E731
        table.add_row(
            name,
            f"{s['mean_ms']:.1f}",
            f"{s['p95_ms']:.1f}",
            f"{s['slo_attainment']:.1%}",
            f"{s['objectives_met']:.1%}",
            f"{s['mean_accuracy']:.4f}",
            over(s["edge_slots"], "edge"),
            over(s["cloud_slots"], "cloud"),
        )
        out.setdefault("minilm", {})[name] = s
    console.print(table)
    console.print(
        f"SLO {data.deployments[0].slo_ms:g} ms at p95, accuracy floor {data.deployments[0].min_quality:g} of fp32; "
        f"capacity: edge {cap['edge']:.2f} slots, cloud {cap['cloud']:.2f} slots (baselines are not held to it)"
    )


def _goal(ok: bool, text: str) -> None:
    console.print(("[green]GOAL MET[/green] " if ok else "[red]GOAL NOT MET[/red] ") + text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller instances (a smoke run)")
    parser.add_argument("--refresh", action="store_true", help="measure MiniLM's profile again")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out: dict[str, Any] = {}
    section_speed(args.quick, out)
    section_uncapacitated(out)
    section_capacitated(args.quick, out)
    section_minilm(args.refresh, args.quick, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
