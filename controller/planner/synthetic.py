"""Seeded synthetic planner instances: models, fleets and pools for tests, benchmarks and the simulator.

Nothing here is measured; it produces inputs with the shape real ones have (block times that shrink
with precision, losses that grow with it, crossing tensors that shrink with depth) so the planner can
be exercised at any scale. Same seed, same instance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

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

#: Relative speed, size and typical per-block quality loss of each precision on a CPU host.
_SPEED = {"fp32": 1.0, "fp16": 1.05, "int8": 0.45, "int4": 0.55}
_SIZE = {"fp32": 1.0, "fp16": 0.5, "int8": 0.26, "int4": 0.6}
_LOSS = {"fp32": 0.0, "fp16": 0.0002, "int8": 0.0015, "int4": 0.006}


def model(
    rng: random.Random,
    *,
    name: str = "synthetic",
    cuts: int = 8,
    precisions: Sequence[str] = PRECISIONS,
    total_ms: float = 12.0,
    weight_bytes: int = 90_000_000,
    input_bytes: int = 768,
    hidden_bytes: int = 49_152,
    output_bytes: int = 1536,
) -> PlannerModel:
    blocks = cuts + 1
    shares = [rng.uniform(0.5, 1.5) for _ in range(blocks)]
    total = sum(shares)
    base = [total_ms * s / total for s in shares]
    block_ms: dict[tuple[str, str, int], tuple[float, ...]] = {}
    block_bytes: dict[str, tuple[int, ...]] = {}
    block_loss: dict[str, tuple[float, ...]] = {}
    variants: dict[str, VariantInfo] = {}
    for p in precisions:
        b1 = tuple(t * _SPEED[p] * rng.uniform(0.9, 1.1) for t in base)
        block_ms[(HOST, p, 1)] = b1
        block_ms[(HOST, p, 32)] = tuple(t * 32 * rng.uniform(0.55, 0.75) for t in b1)
        sizes = tuple(int(weight_bytes * _SIZE[p] * s / total) for s in shares)
        block_bytes[p] = sizes
        losses = tuple(_LOSS[p] * rng.uniform(0.3, 1.7) for _ in range(blocks))
        block_loss[p] = losses
        variants[p] = VariantInfo(p, sum(sizes), max(0.0, 1.0 - sum(losses) * rng.uniform(0.8, 1.0)))
    boundary = (
        [input_bytes] + [int(hidden_bytes * rng.uniform(0.6, 1.2)) for _ in range(cuts)] + [output_bytes]
    )
    return PlannerModel(
        name=name,
        cut_indices=tuple(10 * (i + 1) for i in range(cuts)),
        boundary_bytes=tuple(boundary),
        precisions=tuple(precisions),
        block_ms=block_ms,
        block_bytes=block_bytes,
        block_loss=block_loss,
        variants=variants,
        call_overhead_ms={(HOST, 1): 0.02, (HOST, 32): 0.03},
    )


def fleet(
    rng: random.Random,
    *,
    devices: int = 1000,
    edge_sites: int = 10,
    nodes_per_site: int = 2,
    slots_per_node: int = 4,
    cloud_workers: int = 4,
    cloud_slots: int = 8,
    model_name: str = "synthetic",
    slo_ms: float = 40.0,
    min_quality: float = 0.99,
    request_rate: float = 2.0,
    bandwidth_mbps: tuple[float, float] = (5.0, 100.0),
    rtt_ms: tuple[float, float] = (5.0, 40.0),
    memory: Sequence[int] = (2 * 2**30, 4 * 2**30, 256 * 2**20),
    batching: bool = False,
    priorities: Sequence[int] = (0,),
) -> tuple[tuple[DeviceInput, ...], tuple[DeploymentInput, ...], tuple[PoolInput, ...]]:
    """Phones spread over edge sites (one edge pool per site) and one cloud GPU pool."""
    pools: list[PoolInput] = []
    site_of: dict[str, str] = {}
    ids = [f"phone-{i:06d}" for i in range(devices)]
    for s in range(edge_sites):
        members = frozenset(ids[i] for i in range(s, devices, edge_sites))
        for m in members:
            site_of[m] = f"edge-{s:03d}"
        pools.append(
            PoolInput(
                name=f"edge-{s:03d}",
                tier=Tier.EDGE,
                hardware_class="edge-npu",
                nodes=tuple(f"edge-{s:03d}-n{n}" for n in range(nodes_per_site)),
                slots_per_node=slots_per_node,
                utilization_cap=0.7,
                default_link=Link(50.0, 8.0),
                cloud_link=Link(1000.0, 15.0),
                clients=members,
            )
        )
    pools.append(
        PoolInput(
            name="cloud",
            tier=Tier.CLOUD,
            hardware_class="cloud-gpu",
            nodes=tuple(f"gpu-{i}" for i in range(cloud_workers)),
            slots_per_node=cloud_slots,
            utilization_cap=0.7,
            default_link=Link(20.0, 40.0),
        )
    )
    out: list[DeviceInput] = []
    for device_id in ids:
        bw = rng.uniform(*bandwidth_mbps)
        rtt = rng.uniform(*rtt_ms)
        out.append(
            DeviceInput(
                id=device_id,
                hardware_class="phone-cpu",
                memory_bytes=rng.choice(list(memory)),
                links={
                    site_of[device_id]: Link(bw, rtt, rtt * 1.5),
                    "cloud": Link(bw * 0.5, rtt + 30.0, (rtt + 30.0) * 1.5),
                },
            )
        )
    deployments: list[DeploymentInput] = []
    for k, priority in enumerate(priorities):
        selected = tuple(ids[i] for i in range(k, devices, len(priorities)))
        deployments.append(
            DeploymentInput(
                name=f"deploy-{k}",
                model=model_name,
                device_ids=selected,
                slo_ms=slo_ms,
                percentile=95.0,
                min_quality=min_quality,
                priority=priority,
                request_rate=request_rate,
                batching=Batching(32, 5.0) if batching else None,
            )
        )
    return tuple(out), tuple(deployments), tuple(pools)


def instance(seed: int = 0, **kwargs: object) -> PlanInput:
    rng = random.Random(seed)
    cuts = int(kwargs.pop("cuts", 8))  # type: ignore[call-overload]
    m = model(rng, cuts=cuts)
    devices, deployments, pools = fleet(rng, model_name=m.name, **kwargs)  # type: ignore[arg-type]
    return PlanInput(devices=devices, models={m.name: m}, deployments=deployments, pools=pools)
