"""What the planner reads and what it decides: plain frozen values, no I/O, no clock.

The planner never sees policy files, the store or protobuf: ``controller.planner.inputs`` turns
those into a ``PlanInput`` (group membership resolved to device ids, profiles resolved to numbers),
and ``plan(PlanInput) -> Plan`` is a pure function of it.

Units: milliseconds, bytes, megabits per second, requests per second. Model positions are *block
boundaries*: a model profiled between k cut points has k + 1 blocks, and boundary ``b`` (0..k+1)
sits before block ``b`` — 0 is the model inputs, k + 1 its outputs. ``PlannerModel.cut_indices``
maps a boundary to the model's own cut index (its node position) for output.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "fp16", "int8", "int4")
#: Profiles measured on the controller host (what hardware classes scale from).
HOST = "host"
BATCH_SIZES = (1, 32)


class Tier(enum.Enum):
    DEVICE = "device"
    EDGE = "edge"
    CLOUD = "cloud"


class Pattern(enum.IntEnum):
    """Where a device's model runs. Integer-valued: the config tables keep it in a numpy array."""

    LOCAL = 0
    DEVICE_EDGE = 1
    DEVICE_CLOUD = 2
    DEVICE_EDGE_CLOUD = 3

    @property
    def label(self) -> str:
        return _PATTERN_LABELS[self]

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return _PATTERN_TIERS[self]


_PATTERN_LABELS = {
    Pattern.LOCAL: "local",
    Pattern.DEVICE_EDGE: "device+edge",
    Pattern.DEVICE_CLOUD: "device+cloud",
    Pattern.DEVICE_EDGE_CLOUD: "device+edge+cloud",
}
_PATTERN_TIERS = {
    Pattern.LOCAL: (Tier.DEVICE,),
    Pattern.DEVICE_EDGE: (Tier.DEVICE, Tier.EDGE),
    Pattern.DEVICE_CLOUD: (Tier.DEVICE, Tier.CLOUD),
    Pattern.DEVICE_EDGE_CLOUD: (Tier.DEVICE, Tier.EDGE, Tier.CLOUD),
}


class Binding(enum.Enum):
    """The constraint that keeps a device from meeting its objectives."""

    MEMORY = "memory"  # nothing the device may run fits its memory
    ACCURACY = "accuracy"  # nothing that fits meets the accuracy floor
    LATENCY = "latency"  # something meets the floor, nothing (even with free capacity) meets the SLO
    CAPACITY = "capacity"  # a plan meeting both exists, but the shared capacity it needs is taken
    NO_PROFILE = "no_profile"  # the model has no block profiles to plan with


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """A network path as measured (or assumed): one-way bandwidth and round-trip time."""

    bandwidth_mbps: float
    rtt_ms: float
    #: Round-trip time at the 95th percentile, when measured; used for SLOs at p90 and above.
    rtt_p95_ms: float | None = None

    def rtt_at(self, percentile: float) -> float:
        return self.rtt_p95_ms if percentile >= 90.0 and self.rtt_p95_ms is not None else self.rtt_ms

    def transfer_ms(self, nbytes: float, percentile: float) -> float:
        """Round trip plus the time to put ``nbytes`` on the wire."""
        return self.rtt_at(percentile) + nbytes * 8.0 / (self.bandwidth_mbps * 1000.0)


@dataclass(frozen=True, slots=True)
class HardwareClassSpec:
    """How fast one hardware class is, where nothing was measured on it (see ``catalog``).

    ``latency_scale[p]`` multiplies the controller host's measured block latency at precision ``p``
    (batch 1); ``batch_scale[p]`` does the same for the per-sample cost at batch 32 (accelerators
    amortise far better than CPUs). A precision missing from ``precisions`` does not run here.
    """

    name: str
    precisions: tuple[str, ...]
    memory_bytes: int
    latency_scale: Mapping[str, float]
    batch_scale: Mapping[str, float]
    call_overhead_ms: float | None = None  # None: the host's, scaled like fp32
    source: str = "catalog"  # catalog | policy:<name> | measured


@dataclass(frozen=True, slots=True)
class VariantInfo:
    """A whole-model variant: what a device holds as its fallback."""

    precision: str
    size_bytes: int
    quality: float  # relative to fp32 (1.0 = as good as fp32)


@dataclass(frozen=True, slots=True)
class PlannerModel:
    """One model as the planner sees it: blocks between its profiled cut points.

    ``block_ms[(hardware_class, precision, batch)]`` holds per-block latency (ms per call at batch 1;
    ms per *call* at batch 32 too — a batch of another size is interpolated between the two, see
    ``configs``), measured on ``HOST`` or, for a hardware class, the median over devices of that
    class that profiled it. ``call_overhead_ms[(hardware_class or HOST, batch)]``: the cost of one
    call at that batch, which a segment of several blocks pays once.
    ``dispatch_ms[(hardware_class, batch)]``: what that class's agents measured their serving path
    to add to one segment call (the hand-off to the model's thread and back); every segment on the
    class pays it once, none where it was not measured.
    ``block_loss[p][k]`` is the quality lost when block k alone runs at p (0 for fp32);
    ``block_bytes[p][k]`` its weights at p.
    """

    name: str
    cut_indices: tuple[int, ...]  # the model cut index of each inner boundary 1..k
    boundary_bytes: tuple[int, ...]  # bytes per sample crossing each boundary 0..k+1 (0: the inputs)
    precisions: tuple[str, ...]  # precisions with profiled blocks and a whole-model variant
    block_ms: Mapping[tuple[str, str, int], tuple[float, ...]]
    block_bytes: Mapping[str, tuple[int, ...]]
    block_loss: Mapping[str, tuple[float, ...]]
    variants: Mapping[str, VariantInfo]
    call_overhead_ms: Mapping[tuple[str, int], float] = field(default_factory=dict)
    dispatch_ms: Mapping[tuple[str, int], float] = field(default_factory=dict)
    #: Precisions whose per-block losses were not measured and were spread from the whole variant's.
    estimated_loss: frozenset[str] = frozenset()
    #: Per device hardware class, what a partitioned request costs the device beyond its own segment
    #: and the hops (taking the request in, encoding the activations, decoding the answer, answering),
    #: as measured from its requests (``controller.service.calibration``); nothing where absent.
    request_overhead_ms: Mapping[str, float] = field(default_factory=dict)
    #: Per hardware class, how much slower (> 1) or faster its served segments ran than their block
    #: profiles predict, as measured from its requests (``controller.service.calibration``): every
    #: segment time of the class is multiplied by it; 1 where absent.
    compute_scale: Mapping[str, float] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return len(self.boundary_bytes) - 1

    @property
    def output_bytes(self) -> int:
        return self.boundary_bytes[-1]


@dataclass(frozen=True, slots=True)
class DeviceInput:
    id: str
    hardware_class: str
    memory_bytes: int = 0  # 0: the hardware class's default
    #: Measured links from this device, by pool name (edge pools and cloud pools it talks to).
    links: Mapping[str, Link] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolInput:
    """Edge nodes or cloud GPU workers that accept offloaded segments.

    Capacity is in *slots*: ``slots_per_node`` executions at once per node, of which at most
    ``utilization_cap`` may be planned busy, so queues stay short. A request needing ``s`` ms of a
    node at ``r`` requests/s occupies ``r * s / 1000`` slots.
    """

    name: str
    tier: Tier
    hardware_class: str
    nodes: tuple[str, ...]
    slots_per_node: int = 1
    utilization_cap: float = 0.7
    default_link: Link = Link(bandwidth_mbps=50.0, rtt_ms=10.0)
    cloud_link: Link | None = None  # edge pools: the path on to the cloud
    #: Devices that can reach this pool (edge sites); None: every device of a deployment naming it.
    clients: frozenset[str] | None = None

    @property
    def capacity_slots(self) -> float:
        return len(self.nodes) * self.slots_per_node * self.utilization_cap

    @property
    def node_capacity_slots(self) -> float:
        return self.slots_per_node * self.utilization_cap


@dataclass(frozen=True, slots=True)
class Batching:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 5.0


@dataclass(frozen=True, slots=True)
class DeploymentInput:
    name: str
    model: str
    device_ids: tuple[str, ...]
    slo_ms: float
    percentile: float = 95.0
    min_quality: float = 0.99  # relative to fp32
    priority: int = 0
    precisions: Mapping[Tier, tuple[str, ...]] = field(default_factory=lambda: {t: PRECISIONS for t in Tier})
    partitioning: bool = True
    edge_pools: tuple[str, ...] = ()
    cloud_pools: tuple[str, ...] = ()
    memory_headroom: float = 0.2
    request_rate: float = 1.0
    batching: Batching | None = None


@dataclass(frozen=True, slots=True)
class Weights:
    """The objective: a device that meets both objectives scores ``1 + quality - latency_weight *
    latency / SLO - capacity_weight * slots``; one that does not scores below 0, less the further it
    misses. ``hysteresis`` is added to a device's current configuration, so a re-plan moves a device
    only for a gain larger than that."""

    latency_weight: float = 0.01
    capacity_weight: float = 0.001
    hysteresis: float = 0.005


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """A device's configuration, comparable across plans (what hysteresis keeps)."""

    pattern: Pattern
    cuts: tuple[int, ...]  # inner boundaries used: () local, (c,) one cut, (c1, c2) two
    precisions: tuple[str, ...]  # one per segment, device first
    edge_pool: str = ""
    cloud_pool: str = ""


@dataclass(frozen=True, slots=True)
class PlanInput:
    devices: tuple[DeviceInput, ...]
    models: Mapping[str, PlannerModel]
    deployments: tuple[DeploymentInput, ...]
    pools: tuple[PoolInput, ...] = ()
    hardware: Mapping[str, HardwareClassSpec] = field(default_factory=dict)
    current: Mapping[str, ConfigKey] = field(default_factory=dict)
    #: The edge node each device's current plan uses (hysteresis keeps the node as well as the key).
    current_edge_node: Mapping[str, str] = field(default_factory=dict)
    weights: Weights = field(default_factory=Weights)


# --- outputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    tier: Tier
    start: int  # block boundary
    end: int
    start_cut: int  # the model's cut index (0: the model inputs)
    end_cut: int  # (0: the model outputs)
    precision: str
    where: str  # device id, edge node, or cloud pool
    compute_ms: float
    queue_ms: float = 0.0
    slots: float = 0.0  # shared capacity it occupies (serving tiers)
    #: ``compute_ms`` as the block profiles alone predict it, before ``PlannerModel.compute_scale``.
    profiled_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class HopPlan:
    source: Tier
    target: Tier
    bytes_per_request: int  # both directions
    transfer_ms: float


@dataclass(frozen=True, slots=True)
class Alternative:
    """Another configuration the planner weighed, for ``--explain``."""

    key: ConfigKey
    latency_ms: float
    quality: float
    memory_bytes: int
    score: float
    why_not: str
    cut_indices: tuple[int, ...] = ()  # the key's cuts as the model's cut indices (0: at the inputs)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device_id: str
    deployment: str
    model: str
    key: ConfigKey
    segments: tuple[SegmentPlan, ...]
    hops: tuple[HopPlan, ...]
    edge_pool: str
    edge_node: str
    cloud_pool: str
    fallback: str  # the whole-model variant the device runs alone; '' when none fits
    fallback_meets_floor: bool
    latency_ms: float
    compute_ms: float
    transfer_ms: float
    queue_ms: float
    quality: float
    memory_bytes: int
    memory_limit_bytes: int
    slo_ms: float
    min_quality: float
    meets_slo: bool
    meets_accuracy: bool
    score: float
    binding: Binding | None
    reason: str
    alternatives: tuple[Alternative, ...] = ()
    #: The device's own handling of a partitioned request (``PlannerModel.request_overhead_ms``),
    #: part of ``latency_ms`` beside compute, queue and transfer.
    overhead_ms: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.meets_slo and self.meets_accuracy


@dataclass(frozen=True, slots=True)
class Infeasible:
    """A device the planner could give nothing to run (e.g. nothing fits its memory)."""

    device_id: str
    deployment: str
    binding: Binding
    reason: str


@dataclass(frozen=True, slots=True)
class NodeUsage:
    pool: str
    node: str
    tier: Tier
    capacity_slots: float
    used_slots: float
    devices: int


@dataclass(frozen=True, slots=True)
class Plan:
    devices: tuple[DevicePlan, ...]  # by device id
    infeasible: tuple[Infeasible, ...]
    unplanned: tuple[tuple[str, str], ...]  # (device id, why) for devices no deployment selects
    usage: tuple[NodeUsage, ...]
    objective: float

    def device(self, device_id: str) -> DevicePlan | None:
        return next((d for d in self.devices if d.device_id == device_id), None)
