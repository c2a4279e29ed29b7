"""Hypothesis strategies: small random planner instances (models, pools, devices, deployments)."""

from __future__ import annotations

from hypothesis import strategies as st

from controller.planner.types import (
    HOST,
    PRECISIONS,
    Batching,
    DeploymentInput,
    DeviceInput,
    Link,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
    VariantInfo,
)

MIB = 2**20
HUGE_SLOTS = 10**9


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
    for p in precisions:
        b1 = tuple(draw(st.lists(times, min_size=blocks, max_size=blocks)))
        block_ms[(HOST, p, 1)] = b1
        if draw(st.booleans()):
            block_ms[(HOST, p, 32)] = tuple(t * draw(st.floats(4.0, 32.0)) for t in b1)
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
        call_overhead_ms={(HOST, 1): draw(st.floats(0.0, 0.05)), (HOST, 32): draw(st.floats(0.0, 0.1))},
    )


links = st.builds(
    Link,
    bandwidth_mbps=st.floats(1.0, 1000.0),
    rtt_ms=st.floats(0.5, 80.0),
    rtt_p95_ms=st.one_of(st.none(), st.floats(1.0, 150.0)),
)


@st.composite
def instances(draw: st.DrawFn, *, capacitated: bool = False, max_devices: int = 10) -> PlanInput:
    model = draw(models())
    n = draw(st.integers(1, max_devices))
    ids = [f"d{i:03d}" for i in range(n)]
    pools: list[PoolInput] = []

    def slots() -> int:
        return draw(st.integers(1, 3)) if capacitated else HUGE_SLOTS

    if draw(st.booleans()):
        pools.append(
            PoolInput(
                name="edge",
                tier=Tier.EDGE,
                hardware_class=draw(st.sampled_from(["edge-npu", "phone-cpu", "custom-edge"])),
                nodes=tuple(f"e{i}" for i in range(draw(st.integers(1, 3)))),
                slots_per_node=slots(),
                utilization_cap=draw(st.floats(0.3, 0.9)),
                default_link=draw(links),
                cloud_link=draw(st.one_of(st.none(), links)),
                clients=frozenset(draw(st.lists(st.sampled_from(ids), unique=True)))
                if draw(st.booleans())
                else None,
            )
        )
    if draw(st.booleans()):
        pools.append(
            PoolInput(
                name="cloud",
                tier=Tier.CLOUD,
                hardware_class="cloud-gpu",
                nodes=tuple(f"g{i}" for i in range(draw(st.integers(1, 2)))),
                slots_per_node=slots(),
                utilization_cap=draw(st.floats(0.3, 0.9)),
                default_link=draw(links),
            )
        )
    devices = tuple(
        DeviceInput(
            id=i,
            hardware_class=draw(st.sampled_from(["phone-cpu", "edge-npu", "weird-class"])),
            memory_bytes=draw(st.sampled_from([0, 8 * MIB, 64 * MIB, 512 * MIB, 4096 * MIB])),
            links={name: draw(links) for name in ("edge", "cloud") if draw(st.booleans())},
        )
        for i in ids
    )
    tiers = {t: tuple(p for p in PRECISIONS if draw(st.booleans()) or p == "fp32") for t in Tier}
    deployment = DeploymentInput(
        name="dep",
        model=model.name,
        device_ids=tuple(ids),
        slo_ms=draw(st.floats(5.0, 200.0)),
        percentile=draw(st.sampled_from([50.0, 95.0, 99.0])),
        min_quality=draw(st.floats(0.95, 1.0)),
        precisions=tiers,
        partitioning=draw(st.sampled_from([True, True, True, False])),
        memory_headroom=draw(st.floats(0.0, 0.5)),
        request_rate=draw(st.floats(0.1, 50.0)),
        batching=draw(st.one_of(st.none(), st.builds(Batching, st.integers(1, 64), st.floats(0.0, 10.0)))),
    )
    return PlanInput(
        devices=devices, models={model.name: model}, deployments=(deployment,), pools=tuple(pools)
    )
