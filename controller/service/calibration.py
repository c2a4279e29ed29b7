"""Calibration from telemetry: what a partitioned request costs the device around its segment (pure).

The planner predicts a partitioned request as the device's segment, each hop's transfer, the serving
tiers' queue and compute. The device also takes the request in, encodes the activations for the next
hop, decodes the answer and answers: work no block profile sees. On the bench's phone (MiniLM, 7 cut
pairs, two runs) that was 0.61-0.85 ms per request in every pair, the one part of the miss that did
not move from pair to pair. The agents report every request with its end-to-end latency and each
hop's compute, queue and transfer, tagged with the assignment version it ran under; what is left
when the parts are taken away is that cost, and this module gives the planner its median per (model,
device hardware class) (``PlannerModel.request_overhead_ms``).

Only comparable requests count: successful, partitioned, and served under the assignment the device
holds now (so the parts are the plan's). A figure needs ``MIN_REQUESTS`` of them, is the median
(robust to the odd slow request), clamped to ``0..MAX_OVERHEAD_MS`` and rounded to ``STEP_MS``, so
noise does not move predictions from one re-plan to the next.

Replayed on two bench runs' measurements (each pair predicted with what the pair before measured),
this took the median prediction error over the last six pairs from 6.0% to 2.7% and from 7.9% to
5.6%.

**Compute.** A class's segments can also run slower or faster than its block profiles say: a phone
that heats up, a node busier than when it profiled (the bench's three agents sharing two cores ran
7-27% over their profiles in one run). Per (model, hardware class of the device that ran the hop),
the median over hops of measured compute over what the profiles predicted for that segment
(``PlannedSegment.profiled_compute_ms``: never a prediction already scaled, so a scale does not feed
back into the next) becomes ``PlannerModel.compute_scale``. Only hops that ran alone (batch 1: the
profile compared is batch 1) and whose segment the profiles put at ``MIN_SCALED_SEGMENT_MS`` or more
count: a segment of one small block is mostly a fixed per-call cost, and its ratio says nothing about
the rest (learned from such segments, x1.78 and x2.44 over-predicted the next bench pairs by 44% and
73%). At least ``MIN_REQUESTS`` hops, clamped to ``MIN_SCALE..MAX_SCALE``, rounded to ``SCALE_STEP``.
Replayed on two bench runs (each pair predicted with the pair before's scale), the median error went
from 16.5% to 11.0% and from 8.7% to 4.9%.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from common.types import Device, InferenceRecord, Outcome, TelemetryRecord
from controller.planner.types import PlanInput

#: Telemetry records read per device, and devices read per plan (the most recently seen first).
WINDOW = 256
MAX_DEVICES = 64
MIN_REQUESTS = 32
MAX_OVERHEAD_MS = 1000.0
STEP_MS = 0.01
MIN_SCALED_SEGMENT_MS = 1.0
MIN_SCALE = 0.5
MAX_SCALE = 2.0
SCALE_STEP = 0.01


@dataclass(frozen=True, slots=True)
class RequestOverhead:
    model: str
    hardware_class: str  # the requesting devices'
    ms: float  # median over ``requests``
    requests: int
    devices: int  # whose requests they were


@dataclass(frozen=True, slots=True)
class ComputeScale:
    model: str
    hardware_class: str  # of the devices that ran the segments
    scale: float  # median of measured over profiled compute
    hops: int
    devices: int  # that ran them


@dataclass(frozen=True, slots=True)
class Calibration:
    """What ``calibrate`` applied."""

    overheads: tuple[RequestOverhead, ...] = ()
    compute: tuple[ComputeScale, ...] = ()


def wanted(devices: Sequence[Device], *, limit: int = MAX_DEVICES) -> list[str]:
    """The devices whose recent telemetry calibration reads: those running a partitioned plan, the
    most recently seen first, at most ``limit``."""
    partitioned = [d for d in devices if _partitioned(d)]
    partitioned.sort(key=lambda d: (-d.last_seen_ms, d.id))
    return [d.id for d in partitioned[:limit]]


def request_overheads(
    devices: Sequence[Device], telemetry: Mapping[str, Sequence[TelemetryRecord]]
) -> tuple[RequestOverhead, ...]:
    """Per (model, device class) with enough comparable requests: the median time a partitioned
    request spent on the device outside its segment and the hops."""
    samples = _Samples()
    for device, body in _served(devices, telemetry):
        assert device.assignment is not None
        parts = sum(h.compute_ms + h.queue_ms + h.transfer_ms for h in body.hops)
        key = (device.assignment.model_name, device.hardware.hardware_class)
        samples.add(key, body.latency_ms - parts, device.id)
    out: list[RequestOverhead] = []
    for (model, cls), median, count, sources in samples.medians():
        ms = round(round(min(MAX_OVERHEAD_MS, max(0.0, median)) / STEP_MS) * STEP_MS, 6)
        if ms > 0:
            out.append(RequestOverhead(model, cls, ms, count, sources))
    return tuple(out)


def compute_scales(
    devices: Sequence[Device], telemetry: Mapping[str, Sequence[TelemetryRecord]]
) -> tuple[ComputeScale, ...]:
    """Per (model, class of the device that ran the hop) with enough comparable hops: the median of
    measured compute over the compute the profiles predicted for that segment."""
    by_id = {d.id: d for d in devices}
    samples = _Samples()
    for device, body in _served(devices, telemetry):
        assert device.assignment is not None and device.assignment.plan is not None
        profiled = {s.tier: s.uncalibrated_compute_ms for s in device.assignment.plan.segments}
        for hop in body.hops:
            want = profiled.get(hop.tier, 0.0)
            ran = by_id.get(hop.device_id)
            if want < MIN_SCALED_SEGMENT_MS or hop.batch_size > 1 or hop.compute_ms <= 0 or ran is None:
                continue
            key = (device.assignment.model_name, ran.hardware.hardware_class)
            samples.add(key, hop.compute_ms / want, hop.device_id)
    out: list[ComputeScale] = []
    for (model, cls), median, count, sources in samples.medians():
        scale = round(round(min(MAX_SCALE, max(MIN_SCALE, median)) / SCALE_STEP) * SCALE_STEP, 6)
        if scale != 1.0:
            out.append(ComputeScale(model, cls, scale, count, sources))
    return tuple(out)


def _served(
    devices: Sequence[Device], telemetry: Mapping[str, Sequence[TelemetryRecord]]
) -> Iterator[tuple[Device, InferenceRecord]]:
    """The comparable requests of the known devices running partitioned plans, with their device."""
    by_id = {d.id: d for d in devices}
    for device_id, records in telemetry.items():
        device = by_id.get(device_id)
        if device is None or not _partitioned(device):
            continue
        assert device.assignment is not None
        for record in records:
            body = record.body
            if isinstance(body, InferenceRecord) and _comparable(body, device.assignment.version):
                yield device, body


@dataclass(slots=True)
class _Samples:
    """Values per (model, hardware class), and the devices they came from."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    sources: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add(self, key: tuple[str, str], value: float, source: str) -> None:
        self.values.setdefault(key, []).append(value)
        self.sources.setdefault(key, set()).add(source)

    def medians(self) -> Iterator[tuple[tuple[str, str], float, int, int]]:
        """(key, median, values, devices) for every key with at least ``MIN_REQUESTS`` values."""
        for key, values in sorted(self.values.items()):
            if len(values) >= MIN_REQUESTS:
                yield key, statistics.median(values), len(values), len(self.sources[key])


def calibrate(
    data: PlanInput, devices: Sequence[Device], telemetry: Mapping[str, Sequence[TelemetryRecord]]
) -> tuple[PlanInput, Calibration]:
    """``data`` with each model's ``request_overhead_ms`` and ``compute_scale`` set from
    ``telemetry``, and what was set."""
    found = Calibration(request_overheads(devices, telemetry), compute_scales(devices, telemetry))
    overheads: dict[str, dict[str, float]] = {}
    for o in found.overheads:
        overheads.setdefault(o.model, {})[o.hardware_class] = o.ms
    scales: dict[str, dict[str, float]] = {}
    for c in found.compute:
        scales.setdefault(c.model, {})[c.hardware_class] = c.scale
    if not overheads and not scales:
        return data, found
    models = {
        name: dataclasses.replace(
            pm,
            request_overhead_ms=overheads.get(name, pm.request_overhead_ms),
            compute_scale=scales.get(name, pm.compute_scale),
        )
        for name, pm in data.models.items()
    }
    return dataclasses.replace(data, models=models), found


def _partitioned(device: Device) -> bool:
    a = device.assignment
    return a is not None and a.plan is not None and a.plan.pattern != "local" and bool(a.plan.segments)


def _comparable(body: InferenceRecord, version: int) -> bool:
    return (
        body.outcome is Outcome.OK
        and body.path == "partitioned"
        and bool(body.hops)
        and body.assignment_version == version
    )
