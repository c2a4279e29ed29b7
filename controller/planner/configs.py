"""Every configuration a device of one kind could run, as columns of numbers.

A configuration is a pattern (local, device+edge, device+cloud, device+edge+cloud), the block
boundaries where the model is cut, and a precision per segment. Everything about it that does not
depend on the individual device — compute time on each tier, queueing, quality, weights held on the
device, shared capacity used, bytes on each hop — is computed once per *table* (deployment, device
class, edge pool, cloud pool) and kept in numpy arrays; ``evaluate`` then adds what does depend on
the device (its links, its memory) for many devices at once.

Segments run blocks ``[a, b)``: the device ``[0, a)``, the edge ``[a, e)``, the cloud ``[e, B)``.
A device segment may be empty (the phone only forwards its inputs: full offload); a segment placed on
a serving tier never is.

Latency model (predicted at the deployment's percentile):

* compute of a segment on a class: the sum of its blocks' batch-1 times less one call overhead per
  extra block (the additive model ``controller.toolchain.profile`` validates), from the class's
  measured profile where agents reported one, else the host's times the class's scale (``catalog``);
* queueing on a serving tier: the mean wait of an M/D/1 queue at the pool's utilisation cap,
  ``rho / (2 (1 - rho)) * service``, plus the batcher's maximum delay when batching is on;
* each hop: a round trip plus the request's crossing bytes and the response's output bytes at the
  link's bandwidth.

Quality: a configuration running one precision everywhere has that whole variant's measured quality;
a mix loses, per block, what that block alone lost at its precision (additive, from the block
sensitivities measured at import). Shared capacity: ``rate * service / 1000`` slots, where the
service time is per sample at batch 32 when the serving tier batches, else the batch-1 time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.planner.types import (
    HOST,
    DeploymentInput,
    HardwareClassSpec,
    Link,
    Pattern,
    PlannerModel,
    PoolInput,
    Tier,
)

F = npt.NDArray[np.float64]
I = npt.NDArray[np.int64]  # noqa: E741 - the conventional short name for an index array
B = npt.NDArray[np.bool_]

#: Precision index in the table's precision columns; -1 marks an empty segment.
NONE = -1


@dataclass(frozen=True, slots=True)
class Tier_:
    """One tier of a table: the class it runs on and the precisions it may use there."""

    spec: HardwareClassSpec
    precisions: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class ConfigTable:
    model: PlannerModel
    deployment: DeploymentInput
    device: Tier_
    edge_pool: PoolInput | None
    cloud_pool: PoolInput | None
    precisions: tuple[str, ...]  # the names behind the precision indices
    pattern: I
    a: I  # device segment [0, a)
    e: I  # edge segment [a, e); cloud segment [e, B)
    pd: I
    pe: I
    pc: I
    device_ms: F
    edge_ms: F
    cloud_ms: F
    edge_queue_ms: F
    cloud_queue_ms: F
    fixed_transfer_ms: F  # the edge -> cloud hop: the same for every device of the table
    quality: F
    head_bytes: F  # weights on the device (local: the whole variant)
    edge_slots: F
    cloud_slots: F
    hop1_bytes: F  # device <-> first serving tier, request and response
    hop2_bytes: F  # edge <-> cloud
    #: Every column is about the same configuration at the same row.
    size: int

    @property
    def queue_ms(self) -> F:
        return self.edge_queue_ms + self.cloud_queue_ms

    @property
    def base_ms(self) -> F:
        """Latency apart from the device's own links."""
        return self.device_ms + self.edge_ms + self.cloud_ms + self.queue_ms + self.fixed_transfer_ms

    @property
    def uses_shared(self) -> B:
        return np.asarray(self.pattern != int(Pattern.LOCAL))


class _Times:
    """Prefix sums of a model's block times on one class, one row per precision of the table:
    the time of any segment of any row is two lookups, for whole columns of configurations at once."""

    def __init__(self, model: PlannerModel, spec: HardwareClassSpec, allowed: tuple[str, ...]) -> None:
        nb = model.blocks
        self.b1 = np.zeros((len(model.precisions), nb + 1))
        self.per_sample = np.zeros((len(model.precisions), nb + 1))
        self.overhead_b1 = _overhead(model, spec, 1)
        # Per precision: one without a batch-32 profile pays a whole call per sample.
        self.overhead_sample = np.full(len(model.precisions), _overhead(model, spec, 32) / 32.0)
        for i, p in enumerate(model.precisions):
            if p not in allowed:
                continue
            b1 = _block_times(model, spec, p, 1, spec.latency_scale.get(p, 1.0))
            b32 = _block_times(model, spec, p, 32, spec.batch_scale.get(p, 1.0))
            assert b1 is not None  # batch 1 is always profiled (_block_times raises otherwise)
            self.b1[i, 1:] = np.cumsum(b1)
            # A model with a fixed batch of 1 has no batch-32 profile: a sample then costs a call.
            if b32 is not None:
                self.per_sample[i, 1:] = np.cumsum(b32 / 32.0)
            else:
                self.per_sample[i, 1:] = self.b1[i, 1:]
                self.overhead_sample[i] = self.overhead_b1

    def segment(self, p: I, start: I, end: I, *, per_sample: bool = False) -> F:
        """Time of blocks [start, end) at precision index p, row by row; 0 where p is NONE or the
        segment is empty. Less one call overhead per block beyond the first (the additive model)."""
        sums = self.per_sample if per_sample else self.b1
        row = np.where(p == NONE, 0, p)
        overhead = self.overhead_sample[row] if per_sample else self.overhead_b1
        value = sums[row, end] - sums[row, start] - (end - start - 1) * overhead
        return np.where((p == NONE) | (end <= start), 0.0, np.maximum(value, 0.0))


def _block_times(model: PlannerModel, spec: HardwareClassSpec, p: str, batch: int, scale: float) -> F | None:
    measured = model.block_ms.get((spec.name, p, batch))
    if measured is not None:
        return np.asarray(measured, dtype=np.float64)
    host = model.block_ms.get((HOST, p, batch))
    if host is None:
        if batch != 1:
            return None  # no batch profile (a model with a fixed batch of 1)
        raise KeyError(f"model {model.name} has no host profile at {p}, batch {batch}")
    return np.asarray(host, dtype=np.float64) * scale


def _overhead(model: PlannerModel, spec: HardwareClassSpec, batch: int) -> float:
    measured = model.call_overhead_ms.get((spec.name, batch))
    if measured is not None:
        return measured
    if spec.call_overhead_ms is not None:
        return spec.call_overhead_ms
    host = model.call_overhead_ms.get((HOST, batch), 0.0)
    scale = (spec.latency_scale if batch == 1 else spec.batch_scale).get("fp32", 1.0)
    return host * scale


def tier_precisions(
    deployment: DeploymentInput, tier: Tier, spec: HardwareClassSpec, model: PlannerModel
) -> tuple[str, ...]:
    """Precisions a tier may run: allowed by the deployment, run by the class, built for the model."""
    allowed = deployment.precisions.get(tier, ())
    return tuple(p for p in model.precisions if p in allowed and p in spec.precisions)


def build_table(
    model: PlannerModel,
    deployment: DeploymentInput,
    device_spec: HardwareClassSpec,
    edge: tuple[PoolInput, HardwareClassSpec] | None,
    cloud: tuple[PoolInput, HardwareClassSpec] | None,
) -> ConfigTable:
    """Every configuration a device of ``device_spec`` in ``deployment`` could run, given the edge
    and cloud pools it can reach (None: that tier is not available to it)."""
    nblocks = model.blocks
    precisions = model.precisions
    index = {p: i for i, p in enumerate(precisions)}
    dev = Tier_(device_spec, tier_precisions(deployment, Tier.DEVICE, device_spec, model))
    edge_tier = (
        Tier_(edge[1], tier_precisions(deployment, Tier.EDGE, edge[1], model)) if edge is not None else None
    )
    cloud_tier = (
        Tier_(cloud[1], tier_precisions(deployment, Tier.CLOUD, cloud[1], model))
        if cloud is not None
        else None
    )
    rows: list[tuple[int, int, int, int, int, int]] = []
    for p in dev.precisions:
        rows.append((Pattern.LOCAL, nblocks, nblocks, index[p], NONE, NONE))
    if deployment.partitioning:
        heads = [(0, NONE)] + [(a, index[p]) for a in range(1, nblocks) for p in dev.precisions]
        if edge_tier is not None:
            for (a, pd), p in itertools.product(heads, edge_tier.precisions):
                rows.append((Pattern.DEVICE_EDGE, a, nblocks, pd, index[p], NONE))
        if cloud_tier is not None:
            for (a, pd), p in itertools.product(heads, cloud_tier.precisions):
                rows.append((Pattern.DEVICE_CLOUD, a, a, pd, NONE, index[p]))
        if edge_tier is not None and cloud_tier is not None:
            for a, pd in heads:
                for e in range(a + 1, nblocks):
                    for pe, pc in itertools.product(edge_tier.precisions, cloud_tier.precisions):
                        rows.append((Pattern.DEVICE_EDGE_CLOUD, a, e, pd, index[pe], index[pc]))
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
    cols = [arr[:, i] for i in range(6)]
    return _columns(model, deployment, dev, edge, edge_tier, cloud, cloud_tier, *cols)


def _columns(
    model: PlannerModel,
    deployment: DeploymentInput,
    dev: Tier_,
    edge: tuple[PoolInput, HardwareClassSpec] | None,
    edge_tier: Tier_ | None,
    cloud: tuple[PoolInput, HardwareClassSpec] | None,
    cloud_tier: Tier_ | None,
    pattern: I,
    a: I,
    e: I,
    pd: I,
    pe: I,
    pc: I,
) -> ConfigTable:
    nblocks, names = model.blocks, model.precisions
    n = len(pattern)
    end = np.full(n, nblocks)
    zero = np.zeros(n, dtype=np.int64)
    local = pattern == int(Pattern.LOCAL)
    dev_times = _Times(model, dev.spec, dev.precisions)
    device_ms = dev_times.segment(pd, zero, a)

    loss = np.stack([np.concatenate(([0.0], np.cumsum(model.block_loss[p]))) for p in names])
    weights = np.stack([np.concatenate(([0.0], np.cumsum(model.block_bytes[p]))) for p in names])
    variant_quality = np.asarray([model.variants[p].quality for p in names])
    variant_bytes = np.asarray([float(model.variants[p].size_bytes) for p in names])

    def _lookup(table: F, p: I, at: I) -> F:
        return np.where(p == NONE, 0.0, table[np.where(p == NONE, 0, p), at])

    lost = _lookup(loss, pd, a)
    head = np.where(local, variant_bytes[np.where(pd == NONE, 0, pd)], _lookup(weights, pd, a))
    edge_ms, edge_slots, edge_wait = _serving(edge_times_of(model, edge_tier), edge, pe, a, e, deployment)
    cloud_ms, cloud_slots, cloud_wait = _serving(
        edge_times_of(model, cloud_tier), cloud, pc, e, end, deployment
    )
    lost = lost + _lookup(loss, pe, e) - _lookup(loss, pe, a) + _lookup(loss, pc, end) - _lookup(loss, pc, e)
    # One precision everywhere: the whole variant's measured quality; a mix: the additive estimate.
    ref = np.where(pd != NONE, pd, np.where(pe != NONE, pe, pc))
    uniform = ((pd == NONE) | (pd == ref)) & ((pe == NONE) | (pe == ref)) & ((pc == NONE) | (pc == ref))
    quality = np.where(uniform, variant_quality[ref], 1.0 - lost)

    out_bytes = float(model.output_bytes)
    crossing = np.asarray(model.boundary_bytes, dtype=np.float64)
    hop1 = np.where(local, 0.0, crossing[np.minimum(a, nblocks)] + out_bytes)
    two_hops = pattern == int(Pattern.DEVICE_EDGE_CLOUD)
    hop2 = np.where(two_hops, crossing[np.minimum(e, nblocks)] + out_bytes, 0.0)
    link = _edge_cloud_link(edge, cloud)
    rtt = link.rtt_at(deployment.percentile)
    fixed = np.where(two_hops, rtt + hop2 * 8.0 / (link.bandwidth_mbps * 1000.0), 0.0)
    return ConfigTable(
        model=model,
        deployment=deployment,
        device=dev,
        edge_pool=edge[0] if edge else None,
        cloud_pool=cloud[0] if cloud else None,
        precisions=names,
        pattern=pattern,
        a=a,
        e=e,
        pd=pd,
        pe=pe,
        pc=pc,
        device_ms=device_ms,
        edge_ms=edge_ms,
        cloud_ms=cloud_ms,
        edge_queue_ms=edge_wait,
        cloud_queue_ms=cloud_wait,
        fixed_transfer_ms=fixed,
        quality=quality,
        head_bytes=head,
        edge_slots=edge_slots,
        cloud_slots=cloud_slots,
        hop1_bytes=hop1,
        hop2_bytes=hop2,
        size=n,
    )


def edge_times_of(model: PlannerModel, tier: Tier_ | None) -> _Times | None:
    return _Times(model, tier.spec, tier.precisions) if tier is not None else None


def _serving(
    times: _Times | None,
    pool: tuple[PoolInput, HardwareClassSpec] | None,
    p: I,
    start: I,
    end: I,
    deployment: DeploymentInput,
) -> tuple[F, F, F]:
    """Per row: (compute ms of a request on the serving tier, slots it occupies at the deployment's
    request rate, queueing ms); zeros where the tier is not used."""
    if times is None or pool is None:
        zeros = np.zeros(len(p))
        return zeros, zeros, zeros
    compute = times.segment(p, start, end)
    batching = deployment.batching
    service = times.segment(p, start, end, per_sample=True) if batching is not None else compute
    rho = min(pool[0].utilization_cap, 0.95)
    wait = rho / (2.0 * (1.0 - rho)) * service
    if batching is not None:
        wait = np.where(p == NONE, 0.0, wait + batching.max_queue_delay_ms)
    slots = deployment.request_rate * service / 1000.0
    return compute, slots, wait


def _edge_cloud_link(
    edge: tuple[PoolInput, HardwareClassSpec] | None, cloud: tuple[PoolInput, HardwareClassSpec] | None
) -> Link:
    if edge is not None and edge[0].cloud_link is not None:
        return edge[0].cloud_link
    if cloud is not None:
        return cloud[0].default_link
    return Link(bandwidth_mbps=1000.0, rtt_ms=20.0)
