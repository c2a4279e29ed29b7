"""Hypothesis strategies: small random planner instances (models, pools, devices, deployments).

An instance may have several models, several edge and cloud pools (each with its own clients),
several deployments with priorities selecting overlapping sets of devices, block profiles measured
on a hardware class beside the host's, ``HardwareClass`` overrides of the catalog, and a current
configuration (and edge node) for some devices — valid or not, as a re-plan meets them.
"""

from __future__ import annotations

from hypothesis import strategies as st

from controller.planner import catalog
from controller.planner.types import (
    HOST,
    PRECISIONS,
    Batching,
    ConfigKey,
    DeploymentInput,
    DeviceInput,
    HardwareClassSpec,
    Link,
    Pattern,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
    VariantInfo,
)

MIB = 2**20
HUGE_SLOTS = 10**9
#: Classes devices and pools are drawn from: catalog ones, one only a policy defines, one nobody does.
DEVICE_CLASSES = ("phone-cpu", "edge-npu", "weird-class")
EDGE_CLASSES = ("edge-npu", "phone-cpu", "custom-edge")
MEASURED_CLASSES = ("phone-cpu", "edge-npu", "cloud-gpu", "weird-class")


@st.composite
def models(draw: st.DrawFn, name: str = "m") -> PlannerModel:
    cuts = draw(st.integers(1, 4))
    blocks = cuts + 1
    extra = draw(st.lists(st.sampled_from(PRECISIONS[1:]), unique=True, max_size=3))
    precisions = tuple(p for p in PRECISIONS if p == "fp32" or p in extra)
    block_ms: dict[tuple[str, str, int], tuple[float, ...]] = {}
    block_bytes: dict[str, tuple[int, ...]] = {}
    block_loss: dict[str, tuple[float, ...]] = {}
    variants: dict[str, VariantInfo] = {}
    times = st.floats(0.05, 20.0, allow_nan=False)
    # Some classes measured the blocks themselves (the median of their agents' reports).
    measured = draw(st.lists(st.sampled_from(MEASURED_CLASSES), unique=True, max_size=2))
    for p in precisions:
        b1 = tuple(draw(st.lists(times, min_size=blocks, max_size=blocks)))
        block_ms[(HOST, p, 1)] = b1
        if draw(st.booleans()):
            block_ms[(HOST, p, 32)] = tuple(t * draw(st.floats(4.0, 32.0)) for t in b1)
        for klass in measured:
            if draw(st.booleans()):
                factor = draw(st.floats(0.1, 5.0))
                block_ms[(klass, p, 1)] = tuple(t * factor * (1.0 + 0.1 * k) for k, t in enumerate(b1))
        sizes = tuple(draw(st.lists(st.integers(1, 40 * MIB), min_size=blocks, max_size=blocks)))
        block_bytes[p] = sizes
        losses = (
            (0.0,) * blocks
            if p == "fp32"
            else tuple(draw(st.lists(st.floats(0.0, 0.01), min_size=blocks, max_size=blocks)))
        )
        block_loss[p] = losses
        quality = 1.0 if p == "fp32" else max(0.0, 1.0 - sum(losses) * draw(st.floats(0.5, 1.5)))
        variants[p] = VariantInfo(p, sum(sizes), quality)
    boundary = tuple(draw(st.lists(st.integers(1, 200_000), min_size=blocks + 1, max_size=blocks + 1)))
    overhead = {(HOST, 1): draw(st.floats(0.0, 0.05)), (HOST, 32): draw(st.floats(0.0, 0.1))}
    for klass in measured:
        if draw(st.booleans()):
            overhead[(klass, 1)] = draw(st.floats(0.0, 0.2))
    dispatch: dict[tuple[str, int], float] = {}
    for klass in measured:
        if draw(st.booleans()):
            dispatch[(klass, 1)] = draw(st.floats(0.0, 0.5))
            if draw(st.booleans()):
                dispatch[(klass, 32)] = draw(st.floats(0.0, 0.5))
    return PlannerModel(
        name=name,
        cut_indices=tuple(
            sorted(draw(st.lists(st.integers(1, 500), min_size=cuts, max_size=cuts, unique=True)))
        ),
        boundary_bytes=boundary,
        precisions=precisions,
        block_ms=block_ms,
        block_bytes=block_bytes,
        block_loss=block_loss,
        variants=variants,
        call_overhead_ms=overhead,
        dispatch_ms=dispatch,
        estimated_loss=frozenset(p for p in precisions if p != "fp32" and draw(st.booleans())),
    )


links = st.builds(
    Link,
    bandwidth_mbps=st.floats(1.0, 1000.0),
    rtt_ms=st.floats(0.5, 80.0),
    rtt_p95_ms=st.one_of(st.none(), st.floats(1.0, 150.0)),
)


@st.composite
def hardware(draw: st.DrawFn) -> dict[str, HardwareClassSpec]:
    """``HardwareClass`` policies: catalog classes overridden field by field, and one new class."""
    out: dict[str, HardwareClassSpec] = {}
    for name in draw(st.lists(st.sampled_from(("phone-cpu", "edge-npu", "cloud-gpu")), unique=True)):
        base = catalog.resolve(name)
        scale = draw(
            st.one_of(
                st.none(),
                st.dictionaries(st.sampled_from(PRECISIONS), st.floats(0.05, 8.0), min_size=1, max_size=2),
            )
        )
        kept = draw(st.one_of(st.none(), st.lists(st.sampled_from(PRECISIONS), unique=True, min_size=1)))
        out[name] = catalog.merge(
            base,
            precisions=tuple(p for p in PRECISIONS if p in kept) if kept is not None else None,
            memory_bytes=draw(st.one_of(st.none(), st.sampled_from([64 * MIB, 1024 * MIB]))),
            latency_scale=scale,
            call_overhead_ms=draw(st.one_of(st.none(), st.floats(0.0, 0.1))),
            source=f"policy:{name}",
        )
    if draw(st.booleans()):
        fast = draw(st.floats(0.05, 1.0))
        out["custom-edge"] = HardwareClassSpec(
            "custom-edge",
            PRECISIONS[:3],
            8 * 1024 * MIB,
            dict.fromkeys(PRECISIONS, fast),
            dict.fromkeys(PRECISIONS, fast / 4),
            source="policy:custom-edge",
        )
    return out


def _pool_names(tier: Tier, count: int) -> list[str]:
    return [f"{tier.value}-{chr(ord('a') + i)}" for i in range(count)]


@st.composite
def instances(
    draw: st.DrawFn, *, capacitated: bool = False, max_devices: int = 10, priorities: bool = True
) -> PlanInput:
    """A random instance. ``priorities``: whether deployments may differ in priority (else all 0)."""
    names = ["m0", "m1"][: draw(st.integers(1, 2))]
    planner_models = {name: draw(models(name)) for name in names}
    n = draw(st.integers(1, max_devices))
    ids = [f"d{i:03d}" for i in range(n)]
    pools: list[PoolInput] = []

    def slots() -> int:
        return draw(st.integers(1, 3)) if capacitated else HUGE_SLOTS

    def clients() -> frozenset[str] | None:
        return frozenset(draw(st.lists(st.sampled_from(ids), unique=True))) if draw(st.booleans()) else None

    for name in _pool_names(Tier.EDGE, draw(st.integers(0, 2))):
        pools.append(
            PoolInput(
                name=name,
                tier=Tier.EDGE,
                hardware_class=draw(st.sampled_from(EDGE_CLASSES)),
                nodes=tuple(f"{name}-n{i}" for i in range(draw(st.integers(1, 3)))),
                slots_per_node=slots(),
                utilization_cap=draw(st.floats(0.3, 0.9)),
                default_link=draw(links),
                cloud_link=draw(st.one_of(st.none(), links)),
                clients=clients(),
            )
        )
    for name in _pool_names(Tier.CLOUD, draw(st.integers(0, 2))):
        pools.append(
            PoolInput(
                name=name,
                tier=Tier.CLOUD,
                hardware_class="cloud-gpu",
                nodes=tuple(f"{name}-g{i}" for i in range(draw(st.integers(1, 2)))),
                slots_per_node=slots(),
                utilization_cap=draw(st.floats(0.3, 0.9)),
                default_link=draw(links),
                clients=clients() if draw(st.booleans()) else None,
            )
        )
    pool_names = [p.name for p in pools]
    # A few measured links, each device's to each pool one of them or none (its pool's default).
    measured = draw(st.lists(links, min_size=1, max_size=3))
    devices = tuple(
        DeviceInput(
            id=i,
            hardware_class=draw(st.sampled_from(DEVICE_CLASSES)),
            memory_bytes=draw(st.sampled_from([0, 8 * MIB, 64 * MIB, 512 * MIB, 4096 * MIB])),
            links={
                name: measured[k]
                for name in pool_names
                if (k := draw(st.integers(-1, len(measured) - 1))) >= 0
            },
        )
        for i in ids
    )
    deployments: list[DeploymentInput] = []
    for k in range(draw(st.integers(1, 3))):
        selected = (
            ids if k == 0 and draw(st.booleans()) else draw(st.lists(st.sampled_from(ids), unique=True))
        )
        tiers = {t: tuple(p for p in PRECISIONS if draw(st.booleans()) or p == "fp32") for t in Tier}
        edge_names = [p for p in pool_names if p.startswith("edge")]
        cloud_names = [p for p in pool_names if p.startswith("cloud")]
        deployments.append(
            DeploymentInput(
                name=f"dep{k}",
                model=draw(st.sampled_from(names)),
                device_ids=tuple(selected),
                slo_ms=draw(st.floats(5.0, 200.0)),
                percentile=draw(st.sampled_from([50.0, 95.0, 99.0])),
                min_quality=draw(st.floats(0.95, 1.0)),
                priority=draw(st.integers(0, 2)) if priorities else 0,
                precisions=tiers,
                partitioning=draw(st.sampled_from([True, True, True, False])),
                # Named pools in an order of its own (a pool of the other tier is ignored), or all.
                edge_pools=tuple(draw(st.permutations(edge_names + cloud_names[:1])))[
                    : draw(st.integers(0, len(edge_names) + min(1, len(cloud_names))))
                ],
                cloud_pools=tuple(draw(st.permutations(cloud_names)))[
                    : draw(st.integers(0, len(cloud_names)))
                ],
                memory_headroom=draw(st.floats(0.0, 0.5)),
                request_rate=draw(st.floats(0.1, 50.0)),
                batching=draw(
                    st.one_of(st.none(), st.builds(Batching, st.integers(1, 64), st.floats(0.0, 10.0)))
                ),
            )
        )
    current, nodes = draw(currents(devices, planner_models, pools))
    return PlanInput(
        devices=devices,
        models=planner_models,
        deployments=tuple(deployments),
        pools=tuple(pools),
        hardware=draw(hardware()),
        current=current,
        current_edge_node=nodes,
    )


@st.composite
def currents(
    draw: st.DrawFn,
    devices: tuple[DeviceInput, ...],
    planner_models: dict[str, PlannerModel],
    pools: list[PoolInput],
) -> tuple[dict[str, ConfigKey], dict[str, str]]:
    """Current configurations for some devices (of any model: a device that changed deployment keeps
    its old key), and the edge node of those on the edge (sometimes one its pool no longer has)."""
    keys: dict[str, ConfigKey] = {}
    nodes: dict[str, str] = {}
    edge = [p for p in pools if p.tier is Tier.EDGE]
    cloud = [p for p in pools if p.tier is Tier.CLOUD]
    for device in devices:
        if not draw(st.booleans()):
            continue
        model = planner_models[draw(st.sampled_from(sorted(planner_models)))]
        nb = model.blocks
        patterns = [Pattern.LOCAL]
        if edge:
            patterns.append(Pattern.DEVICE_EDGE)
        if cloud:
            patterns.append(Pattern.DEVICE_CLOUD)
        if edge and cloud and nb > 1:
            patterns.append(Pattern.DEVICE_EDGE_CLOUD)
        pattern = draw(st.sampled_from(patterns))
        precision = st.sampled_from(model.precisions)
        edge_pool = (
            draw(st.sampled_from(edge))
            if pattern in (Pattern.DEVICE_EDGE, Pattern.DEVICE_EDGE_CLOUD)
            else None
        )
        cloud_pool = (
            draw(st.sampled_from(cloud))
            if pattern in (Pattern.DEVICE_CLOUD, Pattern.DEVICE_EDGE_CLOUD)
            else None
        )
        if pattern is Pattern.LOCAL:
            key = ConfigKey(pattern, (), (draw(precision),))
        elif pattern is Pattern.DEVICE_EDGE_CLOUD:
            a = draw(st.integers(0, nb - 2))
            e = draw(st.integers(a + 1, nb - 1))
            segs = ([draw(precision)] if a else []) + [draw(precision), draw(precision)]
            key = ConfigKey(
                pattern,
                (a, e),
                tuple(segs),
                edge_pool.name if edge_pool else "",
                cloud_pool.name if cloud_pool else "",
            )
        else:
            a = draw(st.integers(0, nb - 1))
            segs = ([draw(precision)] if a else []) + [draw(precision)]
            key = ConfigKey(
                pattern,
                (a,),
                tuple(segs),
                edge_pool.name if edge_pool else "",
                cloud_pool.name if cloud_pool else "",
            )
        keys[device.id] = key
        if edge_pool is not None:
            nodes[device.id] = draw(st.sampled_from([*edge_pool.nodes, "gone"]))
    return keys, nodes
