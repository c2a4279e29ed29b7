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

Latency model. What is predicted is not uniformly the deployment's percentile: compute is
deterministic, the round trip is taken at p95 for SLOs at p90 and above (where measured), but the
queueing term is the *mean* wait (a busy node's p95 wait is several times its mean, so the tail of
requests queued behind others is under-stated; the utilisation cap is what keeps it short) and
bandwidth is the link's mean. In detail:

* compute of a segment on a class: the sum of its blocks' batch-1 times less one call overhead per
  extra block (the additive model ``controller.toolchain.profile`` validates), never less than its
  slowest block (nor than ``MIN_SEGMENT_MS``: an overhead larger than the blocks it is taken from
  must not make a segment free), from the class's measured profile where agents reported one, else
  the host's times the class's scale (``catalog``); plus, once, what the class's agents measured
  their serving path to add to a segment call (``PlannerModel.dispatch_ms``; not for a whole model
  answered locally, which goes through no serving queue);
* batching on a serving tier (``Batching`` with ``max_batch_size > 1`` and a delay > 0; otherwise it
  is off, as in ``agent/serving/batcher.py``): the expected batch is ``min(max_batch_size, max(1,
  rate_at_node * max_queue_delay))``, where ``rate_at_node`` is the deployment's request rate times
  the devices the pool serves for it, over the pool's nodes — the rate a node sees when all of them
  offload, so it is an *upper* bound: the batch's call time (the compute a request waits for) is not
  under-estimated, and the per-sample cost (what slots are charged) is the cheapest such a node
  reaches; fewer offloading devices form smaller batches. A batch's call time is interpolated
  linearly between the profiled batch-1 and batch-32 figures of the segment (extrapolated beyond
  32; a batch never costs less than one request alone, nor more than its requests one by one). A
  model without a batch-32 profile is served a request at a time (batch 1);
* queueing on a serving tier: the mean wait of an M/D/1 queue at the pool's utilisation cap ``rho``
  (planned as if the node were that busy, whatever its planned load), ``rho / (2 (1 - rho)) *
  service``, where ``service`` is the call time (of the expected batch when batching); without
  batching divided by ``slots_per_node`` (M/D/c approximated as M/D/1 over c servers); a batching
  segment runs one batch at a time, so there c = 1 and the batcher's maximum delay is added (an
  upper bound on how long a batch takes to form);
* each hop: a round trip plus the request's crossing bytes and the response's output bytes at the
  link's bandwidth.
* every segment time of a class (compute, and so the queueing that follows from it) is multiplied by
  ``PlannerModel.compute_scale`` of the class, where served requests measured it running slower or
  faster than its profiles (``controller.service.calibration``);
* a partitioned request also costs the device what it does around its segment and the hops (taking
  the request in, encoding the activations, decoding the answer): ``PlannerModel.request_overhead_ms``
  of its class, measured from served requests (``controller.service.calibration``); nothing where
  none was measured.

Quality: a configuration running one precision everywhere has that whole variant's measured quality;
a mix loses, per block, what that block alone lost at its precision (additive, from the block
sensitivities measured at import). Shared capacity: ``rate * service / 1000`` slots, where the
service time is the per-sample cost (a batch's call time over its expected batch) when the serving
tier batches, else the batch-1 time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.planner.types import (
    BATCH_SIZES,
    HOST,
    Batching,
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
#: The least time a non-empty segment takes (ms), whatever the overheads subtracted.
MIN_SEGMENT_MS = 1e-3
#: The batch size the batched profile is measured at.
PROFILED_BATCH = BATCH_SIZES[-1]


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
    overhead_ms: F  # the device's own handling of a partitioned request (0 for local rows)
    quality: F
    head_bytes: F  # weights on the device (local: the whole variant)
    edge_slots: F
    cloud_slots: F
    hop1_bytes: F  # device <-> first serving tier, request and response
    hop2_bytes: F  # edge <-> cloud
    #: Every column is about the same configuration at the same row.
    size: int
    #: The serving tiers' classes and precisions (None: the tier is not available).
    edge_tier: Tier_ | None = None
    cloud_tier: Tier_ | None = None
    #: The batch a request of a batching deployment is expected to run in, per serving tier (1: off).
    edge_batch: float = 1.0
    cloud_batch: float = 1.0

    @property
    def queue_ms(self) -> F:
        return self.edge_queue_ms + self.cloud_queue_ms

    @property
    def base_ms(self) -> F:
        """Latency apart from the device's own links."""
        return (
            self.device_ms
            + self.edge_ms
            + self.cloud_ms
            + self.queue_ms
            + self.fixed_transfer_ms
            + self.overhead_ms
        )

    @property
    def uses_shared(self) -> B:
        return np.asarray(self.pattern != int(Pattern.LOCAL))

    @property
    def uses_edge(self) -> B:
        """Rows with an edge segment: each needs an edge node, whatever load it puts on it."""
        return np.asarray(self.pe != NONE)


class _Times:
    """Prefix sums of a model's block times on one class, one row per precision of the table, at
    batch 1 and at the profiled batch (per call): the time of any segment of any row is a few
    lookups, for whole columns of configurations at once."""

    def __init__(self, model: PlannerModel, spec: HardwareClassSpec, allowed: tuple[str, ...]) -> None:
        nb, npre = model.blocks, len(model.precisions)
        self.b1 = np.zeros((npre, nb + 1))
        self.bn = np.zeros((npre, nb + 1))
        #: The slowest block of every range [start, end), per precision (the floor of a segment).
        self.max1 = np.zeros((npre, nb + 1, nb + 1))
        self.maxn = np.zeros((npre, nb + 1, nb + 1))
        #: Precisions with a batched profile (a model with a fixed batch of 1 has none).
        self.batched = np.zeros(npre, dtype=bool)
        self.overhead_b1 = _overhead(model, spec, 1)
        self.overhead_bn = _overhead(model, spec, PROFILED_BATCH)
        self.dispatch_b1 = model.dispatch_ms.get((spec.name, 1), 0.0)
        self.dispatch_bn = model.dispatch_ms.get((spec.name, PROFILED_BATCH), self.dispatch_b1)
        self.scale = compute_scale(model, spec)
        for i, p in enumerate(model.precisions):
            if p not in allowed:
                continue
            b1 = _block_times(model, spec, p, 1, spec.latency_scale.get(p, 1.0))
            bn = _block_times(model, spec, p, PROFILED_BATCH, spec.batch_scale.get(p, 1.0))
            assert b1 is not None  # batch 1 is always profiled (_block_times raises otherwise)
            self.b1[i, 1:] = np.cumsum(b1)
            self.max1[i] = _range_max(b1)
            if bn is not None:
                self.batched[i] = True
                self.bn[i, 1:] = np.cumsum(bn)
                self.maxn[i] = _range_max(bn)

    def segment(self, p: I, start: I, end: I, *, dispatched: bool = True) -> F:
        """Batch-1 time of blocks [start, end) at precision index p, row by row; 0 where p is NONE or
        the segment is empty. Less one call overhead per block beyond the first (the additive
        model), never less than its slowest block nor ``MIN_SEGMENT_MS``; plus the class's dispatch
        cost unless not ``dispatched`` (a whole model answered locally: no serving queue, and a
        fast one runs inline)."""
        dispatch = self.dispatch_b1 if dispatched else 0.0
        return self._call(self.b1, self.max1, self.overhead_b1, dispatch, p, start, end)

    def batch_call(self, p: I, start: I, end: I, batch: float) -> tuple[F, F]:
        """(the call time of a batch of ``batch`` rows, the rows it really holds) per row: ``batch``
        where the precision has a batched profile, 1 where it has none (served one at a time)."""
        t1 = self.segment(p, start, end)
        row = np.where(p == NONE, 0, p)
        rows = np.where(self.batched[row], batch, 1.0)
        if batch <= 1.0:
            return t1, rows
        tn = self._call(self.bn, self.maxn, self.overhead_bn, self.dispatch_bn, p, start, end)
        # Linear in the rows between the two profiled sizes; per row never dearer than a call alone,
        # a batch never cheaper than a single request.
        per_row = np.clip((tn - t1) / (PROFILED_BATCH - 1), 0.0, t1)
        return np.where(rows > 1.0, t1 + (rows - 1.0) * per_row, t1), rows

    def _call(self, sums: F, maxima: F, overhead: float, dispatch: float, p: I, start: I, end: I) -> F:
        row = np.where(p == NONE, 0, p)
        s, e = np.clip(start, 0, sums.shape[1] - 1), np.clip(end, 0, sums.shape[1] - 1)
        value = sums[row, e] - sums[row, s] - (e - s - 1) * overhead
        value = (np.maximum(np.maximum(value, maxima[row, s, e]), MIN_SEGMENT_MS) + dispatch) * self.scale
        return np.where((p == NONE) | (end <= start), 0.0, value)


def compute_scale(model: PlannerModel, spec: HardwareClassSpec) -> float:
    """What the class's segment times are multiplied by: measured against its profiles (1: not)."""
    return model.compute_scale.get(spec.name, 1.0)


def _range_max(times: F) -> F:
    """``out[s, e]`` = the largest of ``times[s:e]`` (0 where e <= s)."""
    n = len(times)
    out = np.zeros((n + 1, n + 1))
    for s in range(n):
        out[s, s + 1 :] = np.maximum.accumulate(times[s:])
    return out


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
    arrivals: tuple[float, float] = (0.0, 0.0),
) -> ConfigTable:
    """Every configuration a device of ``device_spec`` in ``deployment`` could run, given the edge
    and cloud pools it can reach (None: that tier is not available to it). ``arrivals``: the
    requests/s one node of the edge pool and one worker of the cloud pool would see for this
    deployment if all of its devices they serve offloaded there (what the expected batch is taken
    from when the deployment batches; see the module's docstring)."""
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
    return _columns(model, deployment, dev, edge, edge_tier, cloud, cloud_tier, arrivals, *cols)


def _columns(
    model: PlannerModel,
    deployment: DeploymentInput,
    dev: Tier_,
    edge: tuple[PoolInput, HardwareClassSpec] | None,
    edge_tier: Tier_ | None,
    cloud: tuple[PoolInput, HardwareClassSpec] | None,
    cloud_tier: Tier_ | None,
    arrivals: tuple[float, float],
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
    device_ms = np.where(
        local, dev_times.segment(pd, zero, a, dispatched=False), dev_times.segment(pd, zero, a)
    )

    loss = np.stack([np.concatenate(([0.0], np.cumsum(model.block_loss[p]))) for p in names])
    weights = np.stack([np.concatenate(([0.0], np.cumsum(model.block_bytes[p]))) for p in names])
    variant_quality = np.asarray([model.variants[p].quality for p in names])
    variant_bytes = np.asarray([float(model.variants[p].size_bytes) for p in names])

    def _lookup(table: F, p: I, at: I) -> F:
        return np.where(p == NONE, 0.0, table[np.where(p == NONE, 0, p), at])

    lost = _lookup(loss, pd, a)
    head = np.where(local, variant_bytes[np.where(pd == NONE, 0, pd)], _lookup(weights, pd, a))
    edge_batch = expected_batch(deployment.batching, arrivals[0]) if edge_tier is not None else 1.0
    cloud_batch = expected_batch(deployment.batching, arrivals[1]) if cloud_tier is not None else 1.0
    edge_ms, edge_slots, edge_wait = _serving(
        edge_times_of(model, edge_tier), edge, pe, a, e, deployment, edge_batch
    )
    cloud_ms, cloud_slots, cloud_wait = _serving(
        edge_times_of(model, cloud_tier), cloud, pc, e, end, deployment, cloud_batch
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
    overhead = np.where(local, 0.0, model.request_overhead_ms.get(dev.spec.name, 0.0))
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
        overhead_ms=overhead,
        quality=quality,
        head_bytes=head,
        edge_slots=edge_slots,
        cloud_slots=cloud_slots,
        hop1_bytes=hop1,
        hop2_bytes=hop2,
        size=n,
        edge_tier=edge_tier,
        cloud_tier=cloud_tier,
        edge_batch=edge_batch,
        cloud_batch=cloud_batch,
    )


def edge_times_of(model: PlannerModel, tier: Tier_ | None) -> _Times | None:
    return _Times(model, tier.spec, tier.precisions) if tier is not None else None


def batching_on(batching: Batching | None) -> bool:
    """Whether a serving node batches at all (``agent/serving/batcher.py``: a batch of at most one
    row, or no delay to wait for others, is no batching)."""
    return batching is not None and batching.max_batch_size > 1 and batching.max_queue_delay_ms > 0


def expected_batch(batching: Batching | None, rate_at_node: float) -> float:
    """``min(max_batch_size, max(1, rate_at_node * max_queue_delay))``: the rows that arrive while a
    batch waits for its delay, at most a full batch; 1 where batching is off."""
    if batching is None or not batching_on(batching):
        return 1.0
    return float(min(batching.max_batch_size, max(1.0, rate_at_node * batching.max_queue_delay_ms / 1000.0)))


def _serving(
    times: _Times | None,
    pool: tuple[PoolInput, HardwareClassSpec] | None,
    p: I,
    start: I,
    end: I,
    deployment: DeploymentInput,
    batch: float,
) -> tuple[F, F, F]:
    """Per row: (compute ms of a request on the serving tier — its batch's call time when batching —,
    slots it occupies at the deployment's request rate, mean queueing ms); zeros where the tier is
    not used."""
    if times is None or pool is None:
        zeros = np.zeros(len(p))
        return zeros, zeros, zeros
    spec = pool[0]
    rho = min(spec.utilization_cap, 0.95)
    factor = rho / (2.0 * (1.0 - rho))
    if batching_on(deployment.batching):
        assert deployment.batching is not None
        compute, rows = times.batch_call(p, start, end, batch)
        service = compute / rows
        # One batch at a time per segment: one server; plus the batcher's delay (at most).
        wait = factor * compute + deployment.batching.max_queue_delay_ms
    else:
        compute = times.segment(p, start, end)
        service = compute
        wait = factor * compute / max(spec.slots_per_node, 1)  # M/D/c as M/D/1 over c servers
    wait = np.where(p == NONE, 0.0, wait)
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
