"""Turning a chosen row of a configuration table into a ``DevicePlan`` a person can read.

Every plan carries its prediction broken down (compute and queueing per segment, transfer per hop),
and a one-line reason: what was chosen and why it meets (or which constraint binds and by how much).
``--explain DEVICE`` adds the best configuration of every other pattern and why it lost.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.planner.allocate import Bucket
from controller.planner.configs import NONE, ConfigTable, compute_scale
from controller.planner.search import Prices, TableIndex
from controller.planner.types import (
    Alternative,
    Binding,
    ConfigKey,
    DevicePlan,
    HopPlan,
    Pattern,
    SegmentPlan,
    Tier,
)

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Possible:
    """What a device could have had, had capacity been free."""

    fits: bool  # some configuration fits its memory
    floor: bool  # ... and meets the accuracy floor
    meets: bool  # ... and the SLO too
    best_row: int  # the best meeting row with free capacity (-1: none)


def key_of(table: ConfigTable, row: int, edge_pool: str = "", cloud_pool: str = "") -> ConfigKey:
    """The configuration at ``row``, naming the pools it uses (a table is shared by every bucket
    with the same content, so the bucket says which pools its rows mean)."""
    pattern = Pattern(int(table.pattern[row]))
    a, e = int(table.a[row]), int(table.e[row])
    names = table.precisions
    precisions = tuple(names[int(p)] for p in (table.pd[row], table.pe[row], table.pc[row]) if p != NONE)
    cuts: tuple[int, ...] = {
        Pattern.LOCAL: (),
        Pattern.DEVICE_EDGE: (a,),
        Pattern.DEVICE_CLOUD: (a,),
        Pattern.DEVICE_EDGE_CLOUD: (a, e),
    }[pattern]
    return ConfigKey(
        pattern,
        cuts,
        precisions,
        edge_pool if pattern in _USES_EDGE else "",
        cloud_pool if pattern in _USES_CLOUD else "",
    )


_USES_EDGE = (Pattern.DEVICE_EDGE, Pattern.DEVICE_EDGE_CLOUD)
_USES_CLOUD = (Pattern.DEVICE_CLOUD, Pattern.DEVICE_EDGE_CLOUD)


def row_of(table: ConfigTable, key: ConfigKey, edge_pool: str, cloud_pool: str) -> int:
    """The row of ``key`` in ``table`` (whose rows use ``edge_pool``/``cloud_pool``), or -1 when the
    table has no such configuration (a precision no longer allowed, a pool no longer reachable)."""
    if (key.edge_pool and key.edge_pool != edge_pool) or (key.cloud_pool and key.cloud_pool != cloud_pool):
        return NONE
    lookup = _keys(table)
    return lookup.get(ConfigKey(key.pattern, key.cuts, key.precisions), NONE)


_KEY_CACHE: dict[int, tuple[ConfigTable, dict[ConfigKey, int]]] = {}


def _keys(table: ConfigTable) -> dict[ConfigKey, int]:
    cached = _KEY_CACHE.get(id(table))
    if cached is not None and cached[0] is table:
        return cached[1]
    lookup = {key_of(table, r): r for r in range(table.size)}
    _KEY_CACHE.clear()  # one table at a time is all a plan needs; never grows
    _KEY_CACHE[id(table)] = (table, lookup)
    return lookup


def nothing_fits(index: TableIndex, usable: float) -> str:
    t = index.table
    smallest = float(np.min(t.head_bytes[t.pattern == int(Pattern.LOCAL)], initial=np.inf))
    return (
        f"nothing fits: the smallest variant it may run needs {_mib(smallest)} but only {_mib(usable)} "
        f"of its memory may be used (after {t.deployment.memory_headroom:.0%} headroom)"
    )


def possible(bucket: Bucket) -> list[Possible]:
    """Per device, what it could have had with free capacity (vectorised over the bucket)."""
    index, devices = bucket.index, bucket.devices
    n, groups = len(devices), index.groups
    rows, scores = index.best_meeting(devices, Prices())
    dev = np.repeat(np.arange(n), groups)
    grp = np.tile(np.arange(groups), n)
    fits: npt.NDArray[np.bool_] = np.asarray(index.fits(devices, dev, grp)).reshape(n, groups)
    good = np.zeros(groups, dtype=bool)
    good[index.sorted_group] = True  # groups with a row that meets the floor
    any_fit: npt.NDArray[np.bool_] = np.asarray(fits.any(axis=1))
    floor_ok: npt.NDArray[np.bool_] = np.asarray((fits & good).any(axis=1))
    return [
        Possible(bool(any_fit[d]), bool(floor_ok[d]), bool(np.isfinite(scores[d])), int(rows[d]))
        for d in range(n)
    ]


def bucket_plans(
    bucket: Bucket,
    rows: npt.NDArray[np.int64],
    fallback_rows: list[int],
    placement: Mapping[str, str],
    notes: Mapping[str, str],
    explain_devices: Collection[str],
) -> tuple[list[DevicePlan], list[int]]:
    """The plans of the bucket's devices that got a row, and the positions of those that got none."""
    index, devices = bucket.index, bucket.devices
    t = index.table
    dep = t.deployment
    have = np.flatnonzero(rows != NONE)
    missing = np.flatnonzero(rows == NONE).tolist()
    if not len(have):
        return [], missing
    chosen = rows[have]
    latency = index.latency(devices, have, chosen)
    score = index.score(devices, have, chosen, Prices())
    first_hop = index.link_ms(devices, have, index.row_group[chosen])
    local_rows = np.flatnonzero(t.pattern == int(Pattern.LOCAL))
    local_best = _best_local(bucket, have, local_rows)
    can = possible(bucket)
    plans: list[DevicePlan] = []
    for i, d in enumerate(have.tolist()):
        row = int(chosen[i])
        device_id = devices.ids[d]
        key = key_of(t, row, bucket.edge_pool, bucket.cloud_pool)
        local = key.pattern is Pattern.LOCAL
        fb_row = row if local else fallback_rows[d]
        compute = float(t.device_ms[row] + t.edge_ms[row] + t.cloud_ms[row])
        queue = float(t.queue_ms[row])
        overhead = float(t.overhead_ms[row])
        lat = float(latency[i])
        quality = float(t.quality[row])
        meets_slo = lat <= dep.slo_ms + _EPS
        meets_acc = quality >= dep.min_quality - _EPS
        node = placement.get(device_id, "") if key.pattern in _USES_EDGE else ""
        plan = DevicePlan(
            device_id=device_id,
            deployment=dep.name,
            model=t.model.name,
            key=key,
            segments=_segments(t, row, device_id, node, key.cloud_pool),
            hops=_hops(t, row, float(first_hop[i])),
            edge_pool=key.edge_pool,
            edge_node=node,
            cloud_pool=key.cloud_pool,
            fallback=t.precisions[int(t.pd[fb_row])] if fb_row != NONE else "",
            fallback_meets_floor=fb_row != NONE and float(t.quality[fb_row]) >= dep.min_quality - _EPS,
            latency_ms=lat,
            compute_ms=compute,
            transfer_ms=lat - compute - queue - overhead,
            queue_ms=queue,
            quality=quality,
            memory_bytes=int(t.head_bytes[row] + (0.0 if local else devices.fallback_bytes[d])),
            memory_limit_bytes=int(devices.usable_bytes[d]),
            slo_ms=dep.slo_ms,
            min_quality=dep.min_quality,
            meets_slo=meets_slo,
            meets_accuracy=meets_acc,
            score=float(score[i]),
            binding=_binding(meets_slo and meets_acc, can[d]),
            reason="",
            overhead_ms=overhead,
        )
        note = notes.get(device_id)
        reason = "; ".join(
            [
                _reason(plan, bucket, d, row, can[d], local_best[i]),
                *disclosures(bucket, row),
                *([note] if note else []),
            ]
        )
        alts = _alternatives(bucket, d, row) if device_id in explain_devices else ()
        plans.append(dataclasses.replace(plan, reason=reason, alternatives=alts))
    return plans, missing


def _segments(
    t: ConfigTable, row: int, device_id: str, node: str, cloud_pool: str
) -> tuple[SegmentPlan, ...]:
    nb = t.model.blocks
    a, e = int(t.a[row]), int(t.e[row])
    names = t.precisions
    out: list[SegmentPlan] = []
    local = int(t.pattern[row]) == int(Pattern.LOCAL)
    if t.pd[row] != NONE:
        end = nb if local else a
        out.append(
            _segment(t, Tier.DEVICE, 0, end, names[int(t.pd[row])], device_id, float(t.device_ms[row]))
        )
    if t.pe[row] != NONE:
        out.append(
            _segment(
                t,
                Tier.EDGE,
                a,
                e,
                names[int(t.pe[row])],
                node,
                float(t.edge_ms[row]),
                float(t.edge_queue_ms[row]),
                float(t.edge_slots[row]),
            )
        )
    if t.pc[row] != NONE:
        out.append(
            _segment(
                t,
                Tier.CLOUD,
                e,
                nb,
                names[int(t.pc[row])],
                cloud_pool,
                float(t.cloud_ms[row]),
                float(t.cloud_queue_ms[row]),
                float(t.cloud_slots[row]),
            )
        )
    return tuple(out)


def _segment(
    t: ConfigTable,
    tier: Tier,
    start: int,
    end: int,
    precision: str,
    where: str,
    compute: float,
    queue: float = 0.0,
    slots: float = 0.0,
) -> SegmentPlan:
    spec = {Tier.DEVICE: t.device, Tier.EDGE: t.edge_tier, Tier.CLOUD: t.cloud_tier}[tier]
    scale = compute_scale(t.model, spec.spec) if spec is not None else 1.0
    return SegmentPlan(
        tier=tier,
        start=start,
        end=end,
        start_cut=cut_index(t, start),
        end_cut=cut_index(t, end),
        precision=precision,
        where=where,
        compute_ms=compute,
        queue_ms=queue,
        slots=slots,
        profiled_ms=compute / scale,
    )


def cut_index(t: ConfigTable, boundary: int) -> int:
    """The model's cut index of a block boundary; 0 for the model inputs and outputs (as
    ``BlockProfile`` numbers them)."""
    if boundary <= 0 or boundary >= t.model.blocks:
        return 0
    return t.model.cut_indices[boundary - 1]


def _hops(t: ConfigTable, row: int, first_hop_ms: float) -> tuple[HopPlan, ...]:
    pattern = Pattern(int(t.pattern[row]))
    if pattern is Pattern.LOCAL:
        return ()
    target = Tier.CLOUD if pattern is Pattern.DEVICE_CLOUD else Tier.EDGE
    hops = [HopPlan(Tier.DEVICE, target, int(t.hop1_bytes[row]), first_hop_ms)]
    if pattern is Pattern.DEVICE_EDGE_CLOUD:
        hops.append(HopPlan(Tier.EDGE, Tier.CLOUD, int(t.hop2_bytes[row]), float(t.fixed_transfer_ms[row])))
    return tuple(hops)


def _binding(feasible: bool, possible: Possible) -> Binding | None:
    if feasible:
        return None
    if not possible.fits:
        return Binding.MEMORY
    if not possible.floor:
        return Binding.ACCURACY
    if not possible.meets:
        return Binding.LATENCY
    return Binding.CAPACITY


def describe_key(key: ConfigKey, t: ConfigTable) -> str:
    """``device+edge: device int8 inputs..cut 130, edge-west fp16 cut 130..outputs``: one line, in the
    model's own cut indices."""
    if key.pattern is Pattern.LOCAL:
        return f"local {key.precisions[0]}"
    nb = t.model.blocks
    bounds = [0, *key.cuts, nb] if key.pattern is Pattern.DEVICE_EDGE_CLOUD else [0, key.cuts[0], nb]
    tiers = list(key.pattern.tiers)
    if bounds[1] == 0:  # nothing on the device: it only forwards its inputs
        tiers, bounds = tiers[1:], bounds[1:]

    def at(b: int) -> str:
        return "inputs" if b == 0 else "outputs" if b >= nb else f"cut {cut_index(t, b)}"

    parts: list[str] = []
    for tier, (start, end), p in zip(tiers, itertools.pairwise(bounds), key.precisions, strict=False):
        where = {Tier.DEVICE: "device", Tier.EDGE: key.edge_pool, Tier.CLOUD: key.cloud_pool}[tier]
        parts.append(f"{where} {p} {at(start)}..{at(end)}")
    return f"{key.pattern.label}: " + ", ".join(parts)


def _reason(
    plan: DevicePlan, bucket: Bucket, d: int, row: int, can: Possible, local: tuple[float, float, str] | None
) -> str:
    t = bucket.index.table
    what = describe_key(plan.key, t)
    slo = f"{plan.slo_ms:g} ms p{t.deployment.percentile:g} SLO"
    floor = f"{plan.min_quality:g} accuracy floor"
    measured = f"{plan.latency_ms:.1f} ms, accuracy {plan.quality:.4f}"
    kept = _kept_by_hysteresis(bucket, d, row, can.best_row)
    if plan.binding is None:
        tail = ""
        if plan.key.pattern is not Pattern.LOCAL and local is not None:
            lat, q, name = local
            tail = f"; local {name} would take {lat:.1f} ms at accuracy {q:.4f}"
        return f"{what}: {measured} (meets the {slo} and the {floor}){tail}" + (f"; {kept}" if kept else "")
    if plan.binding is Binding.ACCURACY:
        return f"{what}: {measured}; {accuracy_note(bucket, d)}"
    if plan.binding is Binding.LATENCY:
        return f"{what}: {measured}; nothing that meets the {floor} meets the {slo}: this is the closest"
    if plan.binding is Binding.CAPACITY and can.best_row != NONE:
        if kept:
            return f"{what}: {measured}; {kept}"
        return f"{what}: {measured}; {capacity_note(bucket, d, can.best_row)}"
    return f"{what}: {measured}"


def _kept_by_hysteresis(bucket: Bucket, d: int, row: int, best: int) -> str:
    """Why the device stays on its current configuration although ``best`` scores higher, when the
    gain is within the hysteresis margin ('' otherwise)."""
    if best in (NONE, row) or int(bucket.current[d]) != row:
        return ""
    index = bucket.index
    dev = np.asarray([d, d])
    scores = index.score(bucket.devices, dev, np.asarray([row, best]), Prices())
    gain = float(scores[1] - scores[0])
    margin = index.weights.hysteresis
    if not (_EPS < gain <= margin + _EPS):
        return ""
    want = key_of(index.table, best, bucket.edge_pool, bucket.cloud_pool)
    return (
        f"kept as it is by hysteresis: {describe_key(want, index.table)} would score {gain:.4f} more, "
        f"below the hysteresis margin of {margin:g}"
    )


def _over_capacity(bucket: Bucket, row: int) -> str:
    """'' when one device on ``row`` fits the shared capacity; else how far it is over (its edge share
    against one node, its cloud share against the whole pool)."""
    t = bucket.index.table
    rate = f"{t.deployment.request_rate:g} req/s"
    if t.pe[row] != NONE and t.edge_slots[row] > bucket.edge_node_slots + _EPS:
        return (
            f"needs {t.edge_slots[row]:.2f} slots of an edge node at {rate}, and a node of {bucket.edge_pool} "
            f"holds {bucket.edge_node_slots:.2f}"
        )
    if t.cloud_slots[row] > bucket.cloud_pool_slots + _EPS:
        return (
            f"needs {t.cloud_slots[row]:.2f} slots of {bucket.cloud_pool} at {rate}, and the pool holds "
            f"{bucket.cloud_pool_slots:.2f}"
        )
    return ""


def _best_meeting_that_fits_alone(bucket: Bucket, d: int) -> int:
    """The device's best configuration meeting both objectives whose shared load fits an empty node
    and pool (-1: none) — dense over the table, for the few devices whose best one does not."""
    index, devices = bucket.index, bucket.devices
    t = index.table
    rows = np.arange(t.size)
    dev = np.full(t.size, d)
    lat = index.latency(devices, dev, rows)
    ok = (
        index.fits(devices, dev, index.row_group)
        & (lat <= index.slo + _EPS)
        & (t.quality >= index.floor - _EPS)
        & (~t.uses_edge | (t.edge_slots <= bucket.edge_node_slots + _EPS))
        & (t.cloud_slots <= bucket.cloud_pool_slots + _EPS)
    )
    if not ok.any():
        return NONE
    scores = np.where(ok, index.score(devices, dev, rows, Prices()), -np.inf)
    return int(np.argmax(scores))


def capacity_note(bucket: Bucket, d: int, best: int) -> str:
    """Why a device that could meet its objectives with free capacity does not: the capacity went to
    others, or what it needs is more than a node (or pool) holds even empty."""
    t = bucket.index.table
    want = describe_key(key_of(t, best, bucket.edge_pool, bucket.cloud_pool), t)
    over = _over_capacity(bucket, best)
    taken = "the shared capacity it needs went to other devices (higher priority, or a better use of it)"
    if not over:
        return f"{want} would meet its objectives, but {taken}"
    alone = _best_meeting_that_fits_alone(bucket, d)
    if alone == NONE:
        return (
            f"{want} would meet its objectives but {over}: nothing that meets them fits the shared "
            "capacity even alone"
        )
    other = describe_key(key_of(t, alone, bucket.edge_pool, bucket.cloud_pool), t)
    return f"{want} would meet its objectives but {over}; {other} would fit, but {taken}"


def offload_note(bucket: Bucket, d: int) -> str:
    """Why a device that can run nothing locally got no offloaded configuration either."""
    index, devices = bucket.index, bucket.devices
    t = index.table
    rows = np.flatnonzero(t.uses_shared)
    dev = np.full(len(rows), d)
    fits = index.fits(devices, dev, index.row_group[rows]) & np.isfinite(index.latency(devices, dev, rows))
    rows = rows[fits]
    head = "nothing it can run locally fits its memory, and"
    if len(rows) and all(_over_capacity(bucket, int(r)) for r in rows):
        least = int(rows[np.argmin(t.edge_slots[rows] + t.cloud_slots[rows])])
        return f"{head} the least shared capacity it can offload with {_over_capacity(bucket, least)}"
    return f"{head} the shared capacity it needs to offload went to other devices"


def accuracy_note(bucket: Bucket, d: int) -> str:
    """Why nothing meets the floor: the best accuracy among what fits the device's memory, and
    whether something that reaches the floor exists but does not fit."""
    index, devices = bucket.index, bucket.devices
    t = index.table
    rows = np.arange(t.size)
    dev = np.full(t.size, d)
    fits = index.fits(devices, dev, index.row_group) & np.isfinite(index.latency(devices, dev, rows))
    floor = f"{index.floor:g} accuracy floor"
    best = float(np.max(t.quality[fits], initial=0.0))
    text = f"nothing that fits its memory reaches the {floor} (the best that fits: {best:.4f})"
    reaching = index.sorted_rows  # the rows that meet the floor
    if len(reaching):
        need = t.head_bytes[reaching] + np.where(t.uses_shared[reaching], devices.fallback_bytes[d], 0.0)
        text += (
            f"; configurations reaching it need at least {_mib(float(need.min()))} of memory, "
            f"{_mib(float(devices.usable_bytes[d]))} may be used"
        )
    return text


def disclosures(bucket: Bucket, row: int) -> list[str]:
    """What a reason must own up to about the figures behind it: a class nobody described, timed as
    the controller host (``catalog``), and an accuracy that is an estimate (``inputs``)."""
    t = bucket.index.table
    out: list[str] = []
    tiers = [("device", t.device)]
    if row != NONE and t.pe[row] != NONE and t.edge_tier is not None:
        tiers.append((f"edge pool {bucket.edge_pool}", t.edge_tier))
    if row != NONE and t.pc[row] != NONE and t.cloud_tier is not None:
        tiers.append((f"cloud pool {bucket.cloud_pool}", t.cloud_tier))
    scaled: dict[str, float] = {}
    for _, tier in tiers:
        scale = compute_scale(t.model, tier.spec)
        if scale != 1.0:
            scaled.setdefault(tier.spec.name, scale)
    if scaled:
        out.append(
            "its compute is scaled from the profiles by what the class's served segments measured on "
            "recent requests: " + ", ".join(f"{name} x{scale:.2f}" for name, scale in sorted(scaled.items()))
        )
    for who, tier in tiers:
        spec = tier.spec
        if spec.source != "unknown":
            continue
        measured = all((spec.name, p, 1) in t.model.block_ms for p in tier.precisions)
        times = "its block times as measured on it" if measured else "block times as the host's (scale 1)"
        memory = f", {_mib(spec.memory_bytes)} of memory unless it reports its own" if who == "device" else ""
        out.append(
            f"the {who}'s hardware class {spec.name!r} is in neither the catalog nor a HardwareClass "
            f"policy: treated as the controller host ({times}, every precision{memory})"
        )
    used = (
        {t.precisions[int(p)] for p in (t.pd[row], t.pe[row], t.pc[row]) if p != NONE}
        if row != NONE
        else set()
    )
    if len(used) > 1 and t.model.estimated_loss:  # a mix: its accuracy is the additive estimate
        estimated = sorted(used & t.model.estimated_loss)
        if estimated:
            out.append(
                f"its accuracy is an estimate: the blocks' own losses at {', '.join(estimated)} were not "
                "measured, so the whole variant's loss is spread over them"
            )
    if row != NONE and t.overhead_ms[row] > 0:
        out.append(
            f"it includes {t.overhead_ms[row]:.2f} ms the device spends on a partitioned request beyond its "
            "segment and the hops, as measured on the class's recent requests"
        )
    return out


def _best_local(
    bucket: Bucket, have: npt.NDArray[np.int64], local_rows: npt.NDArray[np.int64]
) -> list[tuple[float, float, str] | None]:
    """Per device in ``have``: the latency, accuracy and precision of its best local configuration."""
    index = bucket.index
    t = index.table
    if not len(local_rows):
        return [None] * len(have)
    n, k = len(have), len(local_rows)
    scores = index.score(bucket.devices, np.repeat(have, k), np.tile(local_rows, n), Prices()).reshape(n, k)
    pick = np.argmax(scores, axis=1)
    out: list[tuple[float, float, str] | None] = []
    for i in range(n):
        if not np.isfinite(scores[i, pick[i]]):
            out.append(None)
            continue
        r = int(local_rows[pick[i]])
        out.append((float(index.base[r]), float(t.quality[r]), t.precisions[int(t.pd[r])]))
    return out


def _alternatives(bucket: Bucket, d: int, chosen: int) -> tuple[Alternative, ...]:
    """The best configuration of every pattern (and the best overall, if it was not chosen)."""
    index, devices = bucket.index, bucket.devices
    t = index.table
    rows = np.arange(t.size)
    dev = np.full(t.size, d)
    scores = index.score(devices, dev, rows, Prices())
    latency = index.latency(devices, dev, rows)
    fits = index.fits(devices, dev, index.row_group)
    picks: list[int] = []
    for pattern in Pattern:
        mine = np.flatnonzero(t.pattern == int(pattern))
        if len(mine):
            picks.append(int(mine[int(np.argmax(np.where(fits[mine], scores[mine], -np.inf)))]))
    out: list[Alternative] = []
    for r in sorted(set(picks) - {chosen}, key=lambda r: -scores[r]):
        out.append(
            Alternative(
                key=key_of(t, r, bucket.edge_pool, bucket.cloud_pool),
                latency_ms=float(latency[r]),
                quality=float(t.quality[r]),
                memory_bytes=int(t.head_bytes[r] + (0 if t.pattern[r] == 0 else devices.fallback_bytes[d])),
                score=float(scores[r]),
                why_not=_why_not(
                    bucket,
                    d,
                    r,
                    chosen,
                    float(latency[r]),
                    bool(fits[r]),
                    float(scores[r]),
                    float(scores[chosen]),
                ),
                cut_indices=tuple(cut_index(t, b) for b in key_of(t, r).cuts),
            )
        )
    return tuple(out)


def _why_not(
    bucket: Bucket,
    d: int,
    row: int,
    chosen_row: int,
    latency: float,
    fits: bool,
    score: float,
    chosen: float,
) -> str:
    index = bucket.index
    t = index.table
    if not fits:
        return "does not fit the device's memory (with its fallback)"
    reasons: list[str] = []
    if latency > index.slo + _EPS:
        reasons.append(f"misses the SLO ({latency:.1f} ms > {index.slo:g} ms)")
    if t.quality[row] < index.floor - _EPS:
        reasons.append(f"below the accuracy floor ({t.quality[row]:.4f} < {index.floor:g})")
    if reasons:
        return "; ".join(reasons)
    if score > chosen + _EPS:
        margin = index.weights.hysteresis
        if int(bucket.current[d]) == chosen_row and score - chosen <= margin + _EPS:
            return (
                f"better by {score - chosen:.4f}, below the hysteresis margin of {margin:g}: the current "
                "configuration is kept"
            )
        over = _over_capacity(bucket, row)
        if over:
            return f"better, but it {over}"
        return "better, but the shared capacity it needs went to other devices"
    return f"scores lower ({score:.4f} vs {chosen:.4f}: accuracy, latency and capacity weighed)"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
