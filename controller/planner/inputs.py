"""From what the controller knows (a registered ``Model``) to what the planner reads (``PlannerModel``).

Pure functions of domain values. A model is plannable once an import has built its variants and
profiled its blocks (``fleetctl models import --eval-data --precisions``): the blocks between the
profiled cut points become the planner's blocks; a precision is offered when every block has a
batch-1 time at it and a whole-model variant exists (the fallback is always a whole variant).

Quality is relative to fp32: task accuracy over fp32's when the eval data had labels, else the
cosine similarity to fp32 (agreement for class outputs). A block's own loss at a precision is what
the import measured with only that block lowered (``Model.block_accuracy``); its weights are the
size of its block artifact. Where one of those is missing, the whole variant's figure is spread over
the blocks in proportion to their fp32 time, and the model says so (``estimated_loss``), so an
explanation never passes an estimate off as a measurement.

Hardware classes whose agents profiled the blocks (``Model.class_profiles``, the median over the
devices of the class) get those times; the planner scales the host's for the others. The same goes
for the call overhead a segment of several blocks saves per extra block: the host's as measured at
import (``Model.call_overhead``), a class's median where its agents reported one
(``Model.class_call_overhead``), and so does what the class's serving path adds to every segment
call (its ``dispatch_ms``; nothing for a class no agent measured).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

from common.types import CutPoint, Device, Model, ModelVariant, TensorSpec
from controller.planner import catalog
from controller.planner.types import (
    HOST,
    PRECISIONS,
    Batching,
    ConfigKey,
    DeploymentInput,
    DeviceInput,
    Link,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
    VariantInfo,
    Weights,
)
from controller.planner.types import HardwareClassSpec as PlannerClassSpec
from controller.policy import Link as PolicyLink
from controller.policy import PolicySet, selectors

#: A dimension the model leaves open (other than the batch) counts as this many elements when
#: estimating bytes on the wire: small, so an unknown does not make every cut look expensive.
UNKNOWN_DIM = 1


def planner_model(model: Model) -> PlannerModel | None:
    """The planner's view of ``model``; None when it has no usable block profile yet."""
    blocks = [b for b in model.block_profiles if not b.error and b.latency_ms > 0]
    cuts = sorted({c for b in blocks for c in (b.start_cut, b.end_cut) if c > 0})
    spans = list(zip([0, *cuts], [*cuts, 0], strict=True))
    times: dict[tuple[str, str, int], tuple[float, ...]] = {}
    for precision in {b.precision for b in blocks}:
        for batch in sorted({b.batch_size for b in blocks}):
            found = {
                (b.start_cut, b.end_cut): b.latency_ms
                for b in blocks
                if (b.precision, b.batch_size) == (precision, batch)
            }
            if all(s in found for s in spans):
                times[(HOST, precision, batch)] = tuple(found[s] for s in spans)
    variants = {v.precision or v.variant: v for v in model.variants}
    precisions = tuple(p for p in PRECISIONS if (HOST, p, 1) in times and p in variants)
    if "fp32" not in precisions:
        return None
    fp32 = variants["fp32"]
    quality = {p: _quality(variants[p], fp32) for p in precisions}
    share = _shares(times[(HOST, "fp32", 1)])
    sizes = {
        (b.start_cut, b.end_cut, b.precision): b.artifact_size_bytes for b in blocks if b.artifact_size_bytes
    }
    block_bytes = {
        p: tuple(sizes[(a, e, p)] for a, e in spans)
        if all((a, e, p) in sizes for a, e in spans)
        else tuple(int(variants[p].size_bytes * s) for s in share)
        for p in precisions
    }
    measured = _block_losses(model, spans, precisions)
    block_loss = {p: measured.get(p) or tuple((1.0 - quality[p]) * s for s in share) for p in precisions}
    block_loss["fp32"] = (0.0,) * len(spans)
    times.update(_class_times(model, spans))
    overheads = {(HOST, c.batch_size): c.latency_ms for c in model.call_overhead if c.latency_ms >= 0}
    overheads.update(
        {
            (c.hardware_class, c.batch_size): c.latency_ms
            for c in model.class_call_overhead
            if c.devices > 0 and c.latency_ms >= 0
        }
    )
    dispatch = {
        (c.hardware_class, c.batch_size): c.dispatch_ms
        for c in model.class_call_overhead
        if c.devices > 0 and c.dispatch_ms > 0
    }
    by_index = {c.index: c for c in model.cut_points}
    boundary = [_bytes(fp32.inputs), *(_cut_bytes(by_index.get(c)) for c in cuts), _bytes(fp32.outputs)]
    return PlannerModel(
        name=model.name,
        cut_indices=tuple(cuts),
        boundary_bytes=tuple(boundary),
        precisions=precisions,
        block_ms=times,
        block_bytes=block_bytes,
        block_loss=block_loss,
        variants={p: VariantInfo(p, variants[p].size_bytes, quality[p]) for p in precisions},
        call_overhead_ms=overheads,
        dispatch_ms=dispatch,
        estimated_loss=frozenset(p for p in precisions if p != "fp32" and p not in measured),
    )


def _block_losses(
    model: Model, spans: Sequence[tuple[int, int]], precisions: Sequence[str]
) -> dict[str, tuple[float, ...]]:
    """Per precision, each block's measured quality loss relative to fp32 (only precisions measured
    on every block), from the metric whole variants are judged by."""
    rows = {(a.start_cut, a.end_cut, a.precision): a for a in model.block_accuracy if not a.error}
    ref = rows.get((0, 0, "fp32"))
    if ref is None:
        return {}
    metric = next((m for m in ("accuracy", "cosine", "agreement") if getattr(ref, m) is not None), None)
    if metric is None:
        return {}
    base = float(getattr(ref, metric))
    out: dict[str, tuple[float, ...]] = {}
    for p in precisions:
        if p == "fp32":
            continue
        values = [getattr(rows[(a, e, p)], metric) if (a, e, p) in rows else None for a, e in spans]
        if any(v is None for v in values) or base <= 0:
            continue
        # Relative to fp32, like variant quality; a block that scored above fp32 by noise costs nothing.
        out[p] = tuple(max(0.0, (base - float(v)) / base) for v in values if v is not None)
    return out


def _class_times(
    model: Model, spans: Sequence[tuple[int, int]]
) -> dict[tuple[str, str, int], tuple[float, ...]]:
    """Block times per (hardware class, precision, batch) where the class measured every block."""
    found: dict[tuple[str, str, int], dict[tuple[int, int], float]] = {}
    for c in model.class_profiles:
        if c.devices > 0 and not c.error and c.latency_ms > 0:
            found.setdefault((c.hardware_class, c.precision, c.batch_size), {})[(c.start_cut, c.end_cut)] = (
                c.latency_ms
            )
    return {key: tuple(v[s] for s in spans) for key, v in found.items() if all(s in v for s in spans)}


def _quality(v: ModelVariant, fp32: ModelVariant) -> float:
    if v is fp32:
        return 1.0
    if v.accuracy is not None and fp32.accuracy:
        return min(1.0, v.accuracy / fp32.accuracy)
    if v.cosine is not None:
        return v.cosine
    if v.agreement is not None:
        return v.agreement
    return 1.0 if v.precision == "fp32" else 0.0  # unmeasured: never preferred over a measured one


def _shares(times: Sequence[float]) -> list[float]:
    total = sum(times)
    return [t / total for t in times] if total > 0 else [1.0 / len(times)] * len(times)


def _bytes(specs: Sequence[TensorSpec]) -> int:
    """Bytes per sample of tensors as declared (the first dimension is the batch)."""
    total = 0
    for spec in specs:
        dims = [d if d > 0 else UNKNOWN_DIM for d in spec.shape[1:]]
        total += math.prod(dims) * spec.dtype.itemsize
    return total


def _cut_bytes(cut: CutPoint | None) -> int:
    if cut is None:
        return 0
    if cut.bytes_per_sample >= 0:
        return cut.bytes_per_sample
    return _bytes(cut.tensors)


# --- policies + the controller's state -> PlanInput ------------------------------------------------


def plan_input(
    policies: PolicySet,
    devices: Sequence[Device],
    models: Mapping[str, Model],
    *,
    links: Mapping[str, Mapping[str, Link]] | None = None,
    current: Mapping[str, ConfigKey] | None = None,
    current_edge_node: Mapping[str, str] | None = None,
    weights: Weights | None = None,
) -> PlanInput:
    """What the planner reads, from applied (or candidate) policies and the controller's view of the
    fleet: group and pool membership resolved by label selectors, hardware classes from the
    catalog with the policies' overrides, models from their import profiles.

    Devices that serve a pool (its nodes: matched by the pool and reporting the address of their
    SegmentService) are not planned as clients, whatever groups select them: they run other devices'
    segments. ``links`` are measured links by device and pool name;
    ``current`` each device's configuration now and ``current_edge_node`` the edge node it uses (for
    hysteresis)."""
    by_id = sorted(devices, key=lambda d: d.id)
    pools: list[PoolInput] = []
    servers: set[str] = set()
    links = links or {}
    cloud_pools = {n for n, p in policies.compute_pools.items() if p.spec.tier == "cloud"}
    for name, pool in sorted(policies.compute_pools.items()):
        spec = pool.spec
        # Only agents that told us where peers reach them can serve (an agent too old to, or never
        # connected, cannot).
        nodes = tuple(sorted(d.id for d in selectors.pool_nodes(pool, by_id) if d.endpoint))
        servers.update(nodes)
        clients = None
        if spec.clients is not None or spec.tier == "edge":
            clients = frozenset(d.id for d in by_id if selectors.can_reach(pool, d))
        pools.append(
            PoolInput(
                name=name,
                tier=Tier.EDGE if spec.tier == "edge" else Tier.CLOUD,
                hardware_class=spec.hardware_class,
                nodes=nodes,
                slots_per_node=spec.slots_per_node,
                utilization_cap=spec.utilization_cap,
                default_link=_link(spec.default_link),
                cloud_link=_measured_cloud_link(nodes, links, cloud_pools)
                or (_link(spec.cloud_link) if spec.cloud_link is not None else None),
                clients=clients,
            )
        )
    deployments: list[DeploymentInput] = []
    for name, dep in sorted(policies.model_deployments.items()):
        ds = dep.spec
        group = policies.device_groups.get(ds.group)
        members = () if group is None else selectors.group_members(group, by_id)
        batching = ds.batching
        deployments.append(
            DeploymentInput(
                name=name,
                model=ds.model,
                device_ids=tuple(d.id for d in members if d.id not in servers),
                slo_ms=ds.objectives.latency.max_ms,
                percentile=ds.objectives.latency.percentile,
                min_quality=ds.objectives.min_accuracy,
                priority=ds.priority,
                precisions={
                    Tier.DEVICE: tuple(ds.precisions.device),
                    Tier.EDGE: tuple(ds.precisions.edge),
                    Tier.CLOUD: tuple(ds.precisions.cloud),
                },
                partitioning=ds.partitioning.enabled,
                edge_pools=tuple(ds.partitioning.edge_pools),
                cloud_pools=tuple(ds.partitioning.cloud_pools),
                memory_headroom=ds.memory_headroom,
                request_rate=ds.request_rate,
                batching=Batching(batching.max_batch_size, batching.max_queue_delay_ms)
                if batching.max_batch_size > 1
                else None,
            )
        )
    wanted = {d.model for d in deployments}
    planner_models = {
        name: pm
        for name in sorted(wanted)
        if name in models and (pm := planner_model(models[name])) is not None
    }
    inputs = tuple(
        DeviceInput(
            id=d.id,
            hardware_class=d.hardware.hardware_class,
            memory_bytes=d.hardware.memory_bytes,
            links=dict(links.get(d.id, {})),
        )
        for d in by_id
        if d.id not in servers
    )
    return PlanInput(
        devices=inputs,
        models=planner_models,
        deployments=tuple(deployments),
        pools=tuple(pools),
        hardware=hardware_classes(policies),
        current=dict(current or {}),
        current_edge_node=dict(current_edge_node or {}),
        weights=weights or Weights(),
    )


def hardware_classes(policies: PolicySet) -> dict[str, PlannerClassSpec]:
    """The catalog's classes with the ``HardwareClass`` policies' overrides applied, field by field."""
    out: dict[str, PlannerClassSpec] = {}
    for name, doc in sorted(policies.hardware_classes.items()):
        spec = doc.spec
        base = catalog.resolve(name)
        merged = catalog.merge(
            base,
            precisions=tuple(spec.precisions) if spec.precisions is not None else None,
            memory_bytes=spec.memory_bytes,
            latency_scale={str(k): v for k, v in spec.latency_scale.items()} if spec.latency_scale else None,
            call_overhead_ms=spec.call_overhead_ms,
            source=f"policy:{name}",
        )
        out[name] = dataclasses.replace(merged, name=name)
    return out


def _measured_cloud_link(
    nodes: Sequence[str], links: Mapping[str, Mapping[str, Link]], cloud_pools: set[str]
) -> Link | None:
    """An edge pool's path on to the cloud as its nodes measured it from the traffic they forward
    (the median over the nodes that did), or None when none has: then the policy's ``cloudLink``."""
    measured = [link for n in nodes for pool, link in links.get(n, {}).items() if pool in cloud_pools]
    if not measured:
        return None
    p95 = [m.rtt_p95_ms for m in measured if m.rtt_p95_ms is not None]
    return Link(
        bandwidth_mbps=statistics.median(m.bandwidth_mbps for m in measured),
        rtt_ms=statistics.median(m.rtt_ms for m in measured),
        rtt_p95_ms=statistics.median(p95) if p95 else None,
    )


def _link(link: PolicyLink) -> Link:
    return Link(bandwidth_mbps=link.bandwidth_mbps, rtt_ms=link.rtt_ms)
