"""A slow, obvious re-implementation of the planner's model, for checking the fast one against.

It enumerates every configuration of every device with plain loops, straight from the documented
model (``controller/planner/configs.py``'s docstring) and the score (``types.Weights``), sharing no
code with the planner but the input types and the hardware catalog. Exhaustive enumeration is the
definition of a right answer on an uncapacitated instance.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from controller.planner import catalog
from controller.planner.types import (
    HOST,
    DeploymentInput,
    DeviceInput,
    HardwareClassSpec,
    Link,
    Pattern,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
)

EPS = 1e-9


@dataclass(frozen=True)
class Option:
    pattern: Pattern
    cuts: tuple[int, ...]
    precisions: tuple[str, ...]
    latency: float
    quality: float
    memory: float
    edge_slots: float
    cloud_slots: float
    score: float
    fits: bool


def _times(model: PlannerModel, spec: HardwareClassSpec, p: str, batch: int) -> list[float] | None:
    measured = model.block_ms.get((spec.name, p, batch))
    if measured is not None:
        return list(measured)
    host = model.block_ms.get((HOST, p, batch))
    if host is None:
        return None
    scale = (spec.latency_scale if batch == 1 else spec.batch_scale).get(p, 1.0)
    return [t * scale for t in host]


def _overhead(model: PlannerModel, spec: HardwareClassSpec, batch: int) -> float:
    if (spec.name, batch) in model.call_overhead_ms:
        return model.call_overhead_ms[(spec.name, batch)]
    if spec.call_overhead_ms is not None:
        return spec.call_overhead_ms
    scale = (spec.latency_scale if batch == 1 else spec.batch_scale).get("fp32", 1.0)
    return model.call_overhead_ms.get((HOST, batch), 0.0) * scale


def _floor(blocks: list[float], start: int, end: int, overhead: float) -> float:
    """Blocks [start, end) as one call: their sum less the extra calls' overheads, never less than
    the slowest of them nor 1 microsecond."""
    part = blocks[start:end]
    return max(sum(part) - (len(part) - 1) * overhead, max(part), 1e-3)


def _dispatch(model: PlannerModel, spec: HardwareClassSpec, batch: int) -> float:
    """What the class's serving path adds to one segment call (the batch-1 figure where the batch
    was not measured; nothing where neither was)."""
    one = model.dispatch_ms.get((spec.name, 1), 0.0)
    return model.dispatch_ms.get((spec.name, batch), one)


def segment_ms(
    model: PlannerModel, spec: HardwareClassSpec, p: str, start: int, end: int, *, dispatched: bool = True
) -> float:
    """A segment's batch-1 time; ``dispatched=False`` for a whole model answered locally (no serving
    queue: no dispatch cost)."""
    if end <= start:
        return 0.0
    blocks = _times(model, spec, p, 1)
    assert blocks is not None
    dispatch = _dispatch(model, spec, 1) if dispatched else 0.0
    return _floor(blocks, start, end, _overhead(model, spec, 1)) + dispatch


def batch_ms(
    model: PlannerModel, spec: HardwareClassSpec, p: str, start: int, end: int, batch: float
) -> tuple[float, float]:
    """(call time of a batch of ``batch`` rows, the rows it holds): linear between the batch-1 and
    batch-32 calls, per row at most a call alone and at least nothing; batch 1 without a batch-32
    profile."""
    one = segment_ms(model, spec, p, start, end)
    blocks = _times(model, spec, p, 32)
    if blocks is None or batch <= 1.0 or end <= start:
        return one, 1.0
    full = _floor(blocks, start, end, _overhead(model, spec, 32)) + _dispatch(model, spec, 32)
    per_row = min(max((full - one) / 31.0, 0.0), one)
    return one + (batch - 1.0) * per_row, batch


def deployment_of(data: PlanInput, device_id: str) -> DeploymentInput | None:
    """The highest-priority deployment selecting the device (ties: by name)."""
    deps = [d for d in data.deployments if device_id in d.device_ids]
    return min(deps, key=lambda d: (-d.priority, d.name)) if deps else None


def pools_of(
    data: PlanInput, device_id: str, dep: DeploymentInput
) -> tuple[PoolInput | None, PoolInput | None]:
    """The first edge and the first cloud pool of the deployment the device can reach."""
    if not dep.partitioning:
        return None, None
    by_name = {p.name: p for p in data.pools}

    def first(tier: Tier) -> PoolInput | None:
        names = dep.edge_pools if tier is Tier.EDGE else dep.cloud_pools
        if not names:
            names = tuple(sorted(p.name for p in data.pools if p.tier is tier))
        for name in names:
            p = by_name.get(name)
            if p and p.tier is tier and p.nodes and (p.clients is None or device_id in p.clients):
                return p
        return None

    return first(Tier.EDGE), first(Tier.CLOUD)


def clients(data: PlanInput, dep: DeploymentInput, pool: PoolInput) -> int:
    """Devices of the deployment that the pool serves (their first pool of its tier)."""
    count = 0
    for device in data.devices:
        if deployment_of(data, device.id) is not dep:
            continue
        edge, cloud = pools_of(data, device.id, dep)
        count += pool in (edge, cloud)
    return count


def allowed(dep: DeploymentInput, tier: Tier, spec: HardwareClassSpec, model: PlannerModel) -> list[str]:
    return [p for p in model.precisions if p in dep.precisions.get(tier, ()) and p in spec.precisions]


def options(
    data: PlanInput,
    device: DeviceInput,
    dep: DeploymentInput,
    edge: PoolInput | None,
    cloud: PoolInput | None,
) -> tuple[list[Option], str]:
    """Every configuration of ``device`` and the precision of its fallback ('' if none fits)."""
    model = data.models[dep.model]
    spec = catalog.resolve(device.hardware_class, data.hardware)
    usable = (device.memory_bytes or spec.memory_bytes) * (1.0 - dep.memory_headroom)
    nb = model.blocks
    w = data.weights
    dev_p = allowed(dep, Tier.DEVICE, spec, model)
    # fallback
    fb_choice: tuple[bool, float, float] | None = None
    fb_name, fb_bytes = "", 0.0
    for p in dev_p:
        size = model.variants[p].size_bytes
        if size > usable:
            continue
        q = model.variants[p].quality
        key = (q >= dep.min_quality - EPS, q, -segment_ms(model, spec, p, 0, nb, dispatched=False))
        if fb_choice is None or key > fb_choice:
            fb_choice, fb_name, fb_bytes = key, p, float(size)

    out: list[Option] = []

    def add(
        pattern: Pattern,
        cuts: tuple[int, ...],
        precisions: tuple[str, ...],
        lat: float,
        q: float,
        mem: float,
        es: float,
        cs: float,
    ) -> None:
        meets = lat <= dep.slo_ms + EPS and q >= dep.min_quality - EPS
        if meets:
            score = 1.0 + q - w.latency_weight * lat / dep.slo_ms - w.capacity_weight * (es + cs)
        else:
            score = -(max(0.0, lat / dep.slo_ms - 1.0) + 10.0 * max(0.0, dep.min_quality - q))
            score -= 0.0 if pattern is Pattern.LOCAL else 1.0
        out.append(Option(pattern, cuts, precisions, lat, q, mem, es, cs, score, mem <= usable))

    for p in dev_p:
        add(
            Pattern.LOCAL,
            (),
            (p,),
            segment_ms(model, spec, p, 0, nb, dispatched=False),
            model.variants[p].quality,
            model.variants[p].size_bytes,
            0,
            0,
        )
    if not dep.partitioning:
        return out, fb_name

    served = {pool.name: clients(data, dep, pool) for pool in (edge, cloud) if pool is not None}

    def serve(
        pool: PoolInput, pspec: HardwareClassSpec, p: str, start: int, end: int
    ) -> tuple[float, float, float]:
        rho = min(pool.utilization_cap, 0.95)
        mean = rho / (2 * (1 - rho))
        b = dep.batching
        if b is not None and b.max_batch_size > 1 and b.max_queue_delay_ms > 0:
            rate = dep.request_rate * served[pool.name] / len(pool.nodes)
            batch = min(b.max_batch_size, max(1.0, rate * b.max_queue_delay_ms / 1000.0))
            compute, rows = batch_ms(model, pspec, p, start, end, batch)
            wait = mean * compute + b.max_queue_delay_ms
            service = compute / rows
        else:
            compute = segment_ms(model, pspec, p, start, end)
            wait = mean * compute / pool.slots_per_node
            service = compute
        return compute, wait, dep.request_rate * service / 1000.0

    def quality(parts: list[tuple[str, int, int]]) -> float:
        names = {p for p, _, _ in parts}
        if len(names) == 1:
            return model.variants[names.pop()].quality
        return 1.0 - sum(sum(model.block_loss[p][s:e]) for p, s, e in parts)

    def link(pool: PoolInput) -> Link:
        return device.links.get(pool.name, pool.default_link)

    def hop(lk: Link, nbytes: float) -> float:
        return lk.rtt_at(dep.percentile) + nbytes * 8.0 / (lk.bandwidth_mbps * 1000.0)

    heads: list[tuple[int, str | None]] = [(0, None)] + [(a, p) for a in range(1, nb) for p in dev_p]
    out_b = model.output_bytes
    specs = {pool.name: catalog.resolve(pool.hardware_class, data.hardware) for pool in (edge, cloud) if pool}
    for a, pd in heads:
        dev_ms = segment_ms(model, spec, pd, 0, a) if pd else 0.0
        head_mem = (sum(model.block_bytes[pd][:a]) if pd else 0.0) + fb_bytes
        head_part = [(pd, 0, a)] if pd else []
        for target, pool in ((Pattern.DEVICE_EDGE, edge), (Pattern.DEVICE_CLOUD, cloud)):
            if pool is None:
                continue
            pspec = specs[pool.name]
            tier = Tier.EDGE if target is Pattern.DEVICE_EDGE else Tier.CLOUD
            for p in allowed(dep, tier, pspec, model):
                compute, wait, slots = serve(pool, pspec, p, a, nb)
                lat = dev_ms + hop(link(pool), model.boundary_bytes[a] + out_b) + compute + wait
                q = quality([*head_part, (p, a, nb)])
                es, cs = (slots, 0.0) if tier is Tier.EDGE else (0.0, slots)
                add(target, (a,), tuple(x for x in (pd, p) if x), lat, q, head_mem, es, cs)
        if edge is None or cloud is None:
            continue
        espec, cspec = specs[edge.name], specs[cloud.name]
        cloud_link = edge.cloud_link or cloud.default_link
        for e in range(a + 1, nb):
            for pe, pc in itertools.product(
                allowed(dep, Tier.EDGE, espec, model), allowed(dep, Tier.CLOUD, cspec, model)
            ):
                ec, ew, es = serve(edge, espec, pe, a, e)
                cc, cw, cs = serve(cloud, cspec, pc, e, nb)
                lat = (
                    dev_ms
                    + hop(link(edge), model.boundary_bytes[a] + out_b)
                    + ec
                    + ew
                    + hop(cloud_link, model.boundary_bytes[e] + out_b)
                    + cc
                    + cw
                )
                q = quality([*head_part, (pe, a, e), (pc, e, nb)])
                add(
                    Pattern.DEVICE_EDGE_CLOUD,
                    (a, e),
                    tuple(x for x in (pd, pe, pc) if x),
                    lat,
                    q,
                    head_mem,
                    es,
                    cs,
                )
    return out, fb_name


def best(
    data: PlanInput,
    device: DeviceInput,
    dep: DeploymentInput,
    edge: PoolInput | None,
    cloud: PoolInput | None,
) -> Option | None:
    opts = [o for o in options(data, device, dep, edge, cloud)[0] if o.fits]
    return max(opts, key=lambda o: o.score) if opts else None
