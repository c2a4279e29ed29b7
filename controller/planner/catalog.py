"""The built-in hardware-class catalog: how fast a class is where nothing was measured on it.

The controller measures every model's blocks on its own host at import; agents can profile the
blocks on their own hardware (``fleetctl models profile``), and the median over the devices of a
class replaces these numbers for that class. Until then a class's latency is the host's times the
scale below. The numbers are *priors*, order-of-magnitude figures for the class a name suggests,
not measurements — a ``HardwareClass`` policy overrides any field, and a measured profile beats both.

=========  =======================================================================================
class      assumption behind the prior
=========  =======================================================================================
phone-cpu  one big core of a recent phone SoC (Cortex-A7x/X class) against one core of a server
           x86 CPU: about 2.5x slower in fp32; fp16 no faster (most phone runtimes upcast on CPU);
           int8 dot-product kernels close part of the gap (2x); int4 is weight-only, like int8.
           4 GiB of memory for models.
edge-npu   an edge node with an NPU (Jetson Orin / Hailo / Ascend class): fast at int8 and fp16,
           fp32 on its CPU cores only; batches amortise well (the NPU is wide). int4 not supported.
cloud-gpu  a data-centre GPU (T4/A10/L4 class) with onnxruntime's CUDA provider: batch 1 is
           launch-bound (about 4x faster than one host core), batch 32 about 40x in fp16.
=========  =======================================================================================

A class that is in neither the catalog nor a policy is treated like the controller host (scale 1,
every precision, 2 GiB) and the planner's reason says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.planner.types import PRECISIONS, HardwareClassSpec

GIB = 1024**3

CATALOG: Mapping[str, HardwareClassSpec] = {
    "phone-cpu": HardwareClassSpec(
        name="phone-cpu",
        precisions=PRECISIONS,
        memory_bytes=4 * GIB,
        latency_scale={"fp32": 2.5, "fp16": 2.5, "int8": 2.0, "int4": 2.0},
        batch_scale={"fp32": 2.5, "fp16": 2.5, "int8": 2.0, "int4": 2.0},
    ),
    "edge-npu": HardwareClassSpec(
        name="edge-npu",
        precisions=("fp32", "fp16", "int8"),
        memory_bytes=16 * GIB,
        latency_scale={"fp32": 1.0, "fp16": 0.25, "int8": 0.15},
        batch_scale={"fp32": 0.8, "fp16": 0.08, "int8": 0.05},
    ),
    "cloud-gpu": HardwareClassSpec(
        name="cloud-gpu",
        precisions=("fp32", "fp16", "int8"),
        memory_bytes=24 * GIB,
        latency_scale={"fp32": 0.3, "fp16": 0.25, "int8": 0.25},
        batch_scale={"fp32": 0.05, "fp16": 0.025, "int8": 0.025},
    ),
}

#: Used for a class nobody described: the controller host itself.
UNKNOWN_CLASS_MEMORY = 2 * GIB


def unknown_class(name: str) -> HardwareClassSpec:
    return HardwareClassSpec(
        name=name,
        precisions=PRECISIONS,
        memory_bytes=UNKNOWN_CLASS_MEMORY,
        latency_scale=dict.fromkeys(PRECISIONS, 1.0),
        batch_scale=dict.fromkeys(PRECISIONS, 1.0),
        source="unknown",
    )


def resolve(name: str, overrides: Mapping[str, HardwareClassSpec] | None = None) -> HardwareClassSpec:
    """The spec of class ``name``: a policy's override where given, else the catalog's, else the host's."""
    if overrides and name in overrides:
        return overrides[name]
    return CATALOG.get(name) or unknown_class(name)


def merge(
    base: HardwareClassSpec,
    *,
    precisions: tuple[str, ...] | None = None,
    memory_bytes: int | None = None,
    latency_scale: Mapping[str, float] | None = None,
    batch_scale: Mapping[str, float] | None = None,
    call_overhead_ms: float | None = None,
    source: str,
) -> HardwareClassSpec:
    """``base`` with the fields a ``HardwareClass`` policy sets replaced (scales per precision).

    A latency scale given without a batch scale moves the batch scale by the same ratio, so that a
    policy that says "int8 is 3x slower here" is not contradicted by the catalog's batch figure —
    and one that restates the catalog's latency scale changes nothing."""
    lat = {**base.latency_scale, **(latency_scale or {})}
    bat = dict(base.batch_scale)
    for p, new in (latency_scale or {}).items():
        old = base.latency_scale.get(p, 1.0)
        batch = base.batch_scale.get(p, old)
        bat[p] = batch * new / old if old > 0 else new
    bat.update(batch_scale or {})
    return HardwareClassSpec(
        name=base.name,
        precisions=precisions if precisions is not None else base.precisions,
        memory_bytes=memory_bytes if memory_bytes is not None else base.memory_bytes,
        latency_scale=lat,
        batch_scale=bat,
        call_overhead_ms=call_overhead_ms if call_overhead_ms is not None else base.call_overhead_ms,
        source=source,
    )
