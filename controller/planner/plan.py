"""``plan(PlanInput) -> Plan``: the fleet planner. Pure: no I/O, no clock, same input, same plan.

1. Every device goes to the highest-priority deployment that selects it (ties: by name), and is
   served by the first edge pool and the first cloud pool of that deployment it can reach.
2. Devices sharing a deployment, hardware class and pools share one configuration table
   (``configs``); each device's best configuration is found in it (``search``), exactly as
   exhaustive enumeration would, with its current configuration kept unless another beats it by
   more than the hysteresis.
3. Shared capacity, by priority: the highest priority's devices are allocated first
   (``allocate``), then the next priority gets what is left, and so on.
4. Devices offloading to an edge pool are placed on its nodes: each on its current node
   (``PlanInput.current_edge_node``) where it still fits, the others fullest-first decreasing (the
   biggest loads first, each on the node with the most room); under contention the hysteresis is on
   the current configuration *at* its current node. A cloud pool balances load over its workers by
   itself, so it is planned as one.
5. Every device's plan says what runs where, predicted latency (compute, queueing and transfer per
   hop), accuracy, memory, its fallback, and why (``explain``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from controller.planner import catalog, explain
from controller.planner.allocate import Bucket, allocate, edge_resource
from controller.planner.configs import NONE, ConfigTable, I, batching_on, build_table
from controller.planner.search import Devices, TableIndex
from controller.planner.types import (
    Binding,
    DeploymentInput,
    DeviceInput,
    DevicePlan,
    HardwareClassSpec,
    Infeasible,
    Link,
    NodeUsage,
    Plan,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
)

_EPS = 1e-9


@dataclass(eq=False)
class _Member:
    device: DeviceInput
    deployment: DeploymentInput
    model: PlannerModel
    spec: HardwareClassSpec
    edge: PoolInput | None
    cloud: PoolInput | None
    usable: float


@dataclass(eq=False)
class Prepared:
    """The problem ``plan`` solves, before any device has chosen: buckets of devices sharing a
    configuration table, with their members and fallbacks (exposed for benchmarks that solve the
    same problem another way, e.g. as a MILP)."""

    buckets: list[Bucket]
    members: list[list[_Member]]
    fallbacks: list[list[int]]
    infeasible: list[Infeasible]
    unplanned: list[tuple[str, str]]
    notes: dict[str, str]


def prepare(data: PlanInput) -> Prepared:
    specs = _Specs(data.hardware)
    pools = {p.name: p for p in data.pools}
    members, infeasible, unplanned, notes = _members(data, pools, specs)
    groups: dict[tuple[str, str, str, str], list[_Member]] = defaultdict(list)
    for m in members:
        edge, cloud = m.edge.name if m.edge else "", m.cloud.name if m.cloud else ""
        groups[(m.deployment.name, m.device.hardware_class, edge, cloud)].append(m)
    # Devices each pool serves per deployment: what a batching node's arrival rate is taken from.
    clients: dict[tuple[str, str], int] = defaultdict(int)
    for m in members:
        for pool in (m.edge, m.cloud):
            if pool is not None:
                clients[(m.deployment.name, pool.name)] += 1
    indexes: dict[tuple[object, ...], TableIndex] = {}
    prepared = Prepared([], [], [], infeasible, unplanned, notes)
    for key in sorted(groups):
        ms = groups[key]
        index = _index_for(ms[0], specs, data, indexes, clients)
        table = index.table
        fb_rows = [_fallback_row(table, m.usable) for m in ms]
        devices = Devices.of(
            tuple(m.device.id for m in ms),
            [m.usable for m in ms],
            [float(table.head_bytes[r]) if r != NONE else 0.0 for r in fb_rows],
            [_link(m.device, m.edge) for m in ms],
            [_link(m.device, m.cloud) for m in ms],
            ms[0].deployment.percentile,
        )
        current = np.asarray(
            [
                explain.row_of(table, data.current[m.device.id], key[2], key[3])
                if m.device.id in data.current
                else NONE
                for m in ms
            ],
            dtype=np.int64,
        )
        edge_pool, cloud_pool = ms[0].edge, ms[0].cloud
        nodes = set(edge_pool.nodes) if edge_pool is not None else set()
        current_node: tuple[str, ...] = ()
        if nodes and data.current_edge_node:
            current_node = tuple(_current_node(data, m.device.id, key[2], nodes) for m in ms)
        prepared.buckets.append(
            Bucket(
                index,
                devices,
                key[2],
                key[3],
                current,
                current_node=current_node,
                edge_node_slots=edge_pool.node_capacity_slots if edge_pool is not None else 0.0,
                cloud_pool_slots=cloud_pool.capacity_slots if cloud_pool is not None else 0.0,
            )
        )
        prepared.members.append(ms)
        prepared.fallbacks.append(fb_rows)
    return prepared


def plan(data: PlanInput, *, explain_devices: Collection[str] = ()) -> Plan:
    prepared = prepare(data)
    buckets, infeasible = prepared.buckets, prepared.infeasible
    capacity: dict[str, float] = {}
    nodes: dict[str, tuple[str, ...]] = {}
    for p in data.pools:
        if p.tier is Tier.EDGE:
            nodes[p.name] = p.nodes
            for n in p.nodes:
                capacity[edge_resource(p.name, n)] = p.node_capacity_slots
        else:
            capacity[p.name] = p.capacity_slots
    rows: list[I] = [np.full(len(b.devices), NONE, dtype=np.int64) for b in buckets]
    placement: dict[str, str] = {}
    for priority in sorted({b.index.table.deployment.priority for b in buckets}, reverse=True):
        tier = [i for i, b in enumerate(buckets) if b.index.table.deployment.priority == priority]
        result = allocate([buckets[i] for i in tier], capacity, nodes, data.weights.hysteresis)
        for i, r in zip(tier, result.rows, strict=True):
            rows[i] = r
        placement.update(result.nodes)

    plans: list[DevicePlan] = []
    explain_set = frozenset(explain_devices)
    for b, ms, r, fb in zip(buckets, prepared.members, rows, prepared.fallbacks, strict=True):
        done, missing = explain.bucket_plans(b, r, fb, placement, prepared.notes, explain_set)
        plans.extend(done)
        can = explain.possible(b) if missing else []
        for d in missing:
            m = ms[d]
            owned = explain.disclosures(b, NONE)
            if can[d].fits:
                why = "; ".join([explain.offload_note(b, d), *owned])
                infeasible.append(Infeasible(m.device.id, m.deployment.name, Binding.CAPACITY, why))
            else:
                why = "; ".join([explain.nothing_fits(b.index, m.usable), *owned])
                infeasible.append(Infeasible(m.device.id, m.deployment.name, Binding.MEMORY, why))
    plans.sort(key=lambda p: p.device_id)
    infeasible.sort(key=lambda x: x.device_id)
    return Plan(
        devices=tuple(plans),
        infeasible=tuple(infeasible),
        unplanned=tuple(sorted(prepared.unplanned)),
        usage=tuple(_usage(plans, data.pools)),
        objective=float(sum(p.score for p in plans)),
    )


def _index_for(
    m: _Member,
    specs: _Specs,
    data: PlanInput,
    cache: dict[tuple[object, ...], TableIndex],
    clients: Mapping[tuple[str, str], int],
) -> TableIndex:
    """The table for a member's kind of device. Tables are shared by content: a hundred edge sites
    with the same hardware and link to the cloud have one table, whose rows each bucket reads with
    its own pool names."""
    edge = (m.edge, specs.get(m.edge.hardware_class)) if m.edge else None
    cloud = (m.cloud, specs.get(m.cloud.hardware_class)) if m.cloud else None
    dep = m.deployment

    def arrivals(pool: PoolInput | None) -> float:
        """Requests/s at one node of ``pool`` if every device it serves for the deployment offloaded."""
        if pool is None or not batching_on(dep.batching):
            return 0.0  # only a batching node's expected batch depends on it
        return dep.request_rate * clients.get((dep.name, pool.name), 0) / max(len(pool.nodes), 1)

    rates = (arrivals(m.edge), arrivals(m.cloud))
    content = (
        dep.name,
        m.device.hardware_class,
        None
        if m.edge is None
        else (m.edge.hardware_class, m.edge.utilization_cap, m.edge.slots_per_node, m.edge.cloud_link),
        None
        if m.cloud is None
        else (m.cloud.hardware_class, m.cloud.utilization_cap, m.cloud.slots_per_node, m.cloud.default_link),
        rates,
    )
    index = cache.get(content)
    if index is None:
        table = build_table(m.model, dep, m.spec, edge, cloud, rates)
        index = cache[content] = TableIndex(table, data.weights)
    return index


def _current_node(data: PlanInput, device_id: str, pool: str, nodes: Collection[str]) -> str:
    """The edge node a device's current plan uses, where it is still a node of the device's pool."""
    node = data.current_edge_node.get(device_id, "")
    key = data.current.get(device_id)
    return node if node in nodes and (key is None or key.edge_pool in ("", pool)) else ""


class _Specs:
    def __init__(self, overrides: Mapping[str, HardwareClassSpec]) -> None:
        self._overrides = overrides
        self._cache: dict[str, HardwareClassSpec] = {}

    def get(self, name: str) -> HardwareClassSpec:
        if name not in self._cache:
            self._cache[name] = catalog.resolve(name, self._overrides)
        return self._cache[name]


def _members(
    data: PlanInput, pools: Mapping[str, PoolInput], specs: _Specs
) -> tuple[list[_Member], list[Infeasible], list[tuple[str, str]], dict[str, str]]:
    by_id = {d.id: d for d in data.devices}
    claimed: dict[str, DeploymentInput] = {}
    members: list[_Member] = []
    infeasible: list[Infeasible] = []
    notes: dict[str, list[str]] = defaultdict(list)
    for dep in sorted(data.deployments, key=lambda d: (-d.priority, d.name)):
        model = data.models.get(dep.model)
        edge_pools = _candidates(dep, pools, Tier.EDGE)
        cloud_pools = _candidates(dep, pools, Tier.CLOUD)
        for device_id in sorted(set(dep.device_ids)):
            device = by_id.get(device_id)
            if device is None:
                continue
            if device_id in claimed:
                winner = claimed[device_id]
                notes[device_id].append(
                    f"also selected by deployment {dep.name} (priority {dep.priority}); "
                    f"{winner.name} (priority {winner.priority}) wins"
                )
                continue
            claimed[device_id] = dep
            if model is None or model.blocks < 1 or not model.precisions:
                infeasible.append(
                    Infeasible(
                        device_id,
                        dep.name,
                        Binding.NO_PROFILE,
                        f"model {dep.model} has no measured profile to plan with "
                        "(import it with --eval-data and --precisions)",
                    )
                )
                continue
            spec = specs.get(device.hardware_class)
            memory = device.memory_bytes or spec.memory_bytes
            members.append(
                _Member(
                    device,
                    dep,
                    model,
                    spec,
                    _first_reaching(edge_pools, device_id),
                    _first_reaching(cloud_pools, device_id),
                    usable=memory * (1.0 - dep.memory_headroom),
                )
            )
    unplanned = [(d.id, "no deployment selects it") for d in data.devices if d.id not in claimed]
    return members, infeasible, unplanned, {k: "; ".join(v) for k, v in notes.items()}


def _candidates(dep: DeploymentInput, pools: Mapping[str, PoolInput], tier: Tier) -> list[PoolInput]:
    """The pools of ``tier`` a deployment may offload to, in its order (every such pool, by name,
    when it names none)."""
    if not dep.partitioning:
        return []
    names = dep.edge_pools if tier is Tier.EDGE else dep.cloud_pools
    if not names:
        names = tuple(sorted(n for n, p in pools.items() if p.tier is tier))
    found = [pools[n] for n in names if n in pools]
    return [p for p in found if p.tier is tier and p.nodes]


def _first_reaching(candidates: list[PoolInput], device_id: str) -> PoolInput | None:
    return next((p for p in candidates if p.clients is None or device_id in p.clients), None)


def _link(device: DeviceInput, pool: PoolInput | None) -> Link | None:
    if pool is None:
        return None
    return device.links.get(pool.name, pool.default_link)


def _fallback_row(table: ConfigTable, usable: float) -> int:
    """The whole-model variant the device runs alone: the most accurate that fits and meets the
    floor, the fastest among equals; the most accurate that fits if none meets; -1 if none fits."""
    floor = table.deployment.min_quality
    best: tuple[bool, float, float, int] | None = None
    for row in np.flatnonzero(table.pattern == 0):
        if table.head_bytes[row] > usable:
            continue
        q = float(table.quality[row])
        key = (q >= floor - _EPS, q, -float(table.device_ms[row]), -int(row))
        if best is None or key > best:
            best = key
    return -best[3] if best is not None else NONE


def _usage(plans: list[DevicePlan], pools: tuple[PoolInput, ...]) -> list[NodeUsage]:
    used: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in plans:
        for seg in p.segments:
            if seg.tier is Tier.EDGE:
                used[(p.edge_pool, p.edge_node)].append(seg.slots)
            elif seg.tier is Tier.CLOUD:
                used[(p.cloud_pool, "")].append(seg.slots)
    out: list[NodeUsage] = []
    for pool in sorted(pools, key=lambda x: x.name):
        if pool.tier is Tier.EDGE:
            for node in pool.nodes:
                loads = used.get((pool.name, node), [])
                out.append(
                    NodeUsage(
                        pool.name, node, pool.tier, pool.node_capacity_slots, float(sum(loads)), len(loads)
                    )
                )
        else:
            loads = used.get((pool.name, ""), [])
            out.append(
                NodeUsage(pool.name, "", pool.tier, pool.capacity_slots, float(sum(loads)), len(loads))
            )
    return out
