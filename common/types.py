"""Domain types shared by controller, agent and simulator.

Plain frozen dataclasses: no protobuf here (``common.serde`` converts), no I/O. Times are integer
milliseconds since the Unix epoch (``*_ms``) so they serialise exactly.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.fastinit import slot_init

PHONE_CPU = "phone-cpu"
EDGE_NPU = "edge-npu"
CLOUD_GPU = "cloud-gpu"
#: Built-in hardware classes; operators may define more (any name matching HARDWARE_CLASS_RE).
KNOWN_HARDWARE_CLASSES = (PHONE_CPU, EDGE_NPU, CLOUD_GPU)
HARDWARE_CLASS_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Device ids and model names: DNS-label-like, so they are safe in topics, paths and URLs.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")

DEFAULT_VARIANT = "fp32"


class DataType(enum.Enum):
    """Tensor element types; the value is the numpy dtype name (little-endian on the wire)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"

    # Members are singletons compared by identity, so identity is a correct hash; Enum's own hashes
    # the name in Python code, and DataType keys the dict lookups of every tensor on the serving path.
    __hash__ = object.__hash__

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]


_ITEMSIZE = {
    DataType.FLOAT32: 4,
    DataType.FLOAT16: 2,
    DataType.FLOAT64: 8,
    DataType.INT8: 1,
    DataType.UINT8: 1,
    DataType.INT16: 2,
    DataType.INT32: 4,
    DataType.INT64: 8,
    DataType.BOOL: 1,
}


@slot_init  # made for every served request: see common.fastinit
@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor as raw little-endian C-order bytes (``encoding`` '': as they are; "zlib": those
    bytes compressed, as peers may send activations when it pays for the link)."""

    name: str
    dtype: DataType
    shape: tuple[int, ...]
    data: bytes
    encoding: str = ""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as declared by the model; -1 marks a dynamic dimension."""

    name: str
    dtype: DataType
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    hardware_class: str
    cpu_cores: int = 0
    memory_bytes: int = 0
    execution_providers: tuple[str, ...] = ()
    os: str = ""
    onnxruntime_version: str = ""
    agent_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlannedSegment:
    """One segment of a planned model: blocks ``start_cut..end_cut`` (0: the model inputs as start,
    its outputs as end, as ``BlockProfile`` numbers them) at ``precision`` on ``tier`` (device,
    edge or cloud), run by ``where`` (the device itself, an edge node's device id, a cloud pool)."""

    tier: str
    start_cut: int
    end_cut: int
    precision: str
    where: str
    #: The segment's ONNX artifact ('' until built): what the device loads for its own segment, and
    #: what it names when it asks a peer to run one.
    artifact_sha256: str = ""
    artifact_size_bytes: int = 0
    #: Who runs it, for segments on serving tiers (the edge node, or the cloud pool's workers).
    endpoints: tuple[SegmentEndpoint, ...] = ()
    #: The planner's prediction for this hop: compute per request, the queueing wait on a serving
    #: tier, and the transfer to it and back (what request telemetry is checked against).
    predicted_compute_ms: float = 0.0
    predicted_queue_ms: float = 0.0
    predicted_transfer_ms: float = 0.0
    #: The compute the block profiles alone predict, before calibration from telemetry scaled it
    #: (``controller.service.calibration``; 0: not recorded, and then ``predicted_compute_ms`` is).
    profiled_compute_ms: float = 0.0

    @property
    def uncalibrated_compute_ms(self) -> float:
        """What the profiles predict for this segment's compute, calibration left out."""
        return self.profiled_compute_ms or self.predicted_compute_ms


@dataclass(frozen=True, slots=True)
class SegmentEndpoint:
    """A peer that runs a segment: its device id, the address of its SegmentService, its weight."""

    device_id: str
    address: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ServedSegment:
    """A segment a serving node keeps loaded for the devices it serves, with its batching."""

    artifact_sha256: str
    artifact_size_bytes: int
    model_name: str
    start_cut: int
    end_cut: int
    precision: str
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AssignmentPlan:
    """How the fleet planner placed a device's model (see ``controller.planner``)."""

    deployment: str
    pattern: str  # local | device+edge | device+cloud | device+edge+cloud
    segments: tuple[PlannedSegment, ...] = ()
    edge_pool: str = ""
    edge_node: str = ""
    cloud_pool: str = ""
    fallback_variant: str = ""
    predicted_latency_ms: float = 0.0
    predicted_accuracy: float = 0.0
    #: The deployment's objective: at most ``slo_ms`` at ``percentile`` (0: none).
    slo_ms: float = 0.0
    percentile: float = 0.0
    #: The deployment's priority: its requests go first in a serving node's queue.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class LinkMeasurement:
    """A device's network path to one compute pool (``rtt_p95_ms`` 0: not measured)."""

    pool: str
    bandwidth_mbps: float
    rtt_ms: float
    rtt_p95_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Assignment:
    """Desired state for one device; ``version`` increases by one each time it changes.

    ``plan`` is set when the fleet planner made it: the model/variant are then what the device runs
    on its own (the whole model for a local plan, the fallback for a partitioned one)."""

    version: int
    model_name: str = ""
    variant: str = ""
    artifact_sha256: str = ""
    artifact_size_bytes: int = 0
    plan: AssignmentPlan | None = None
    #: Segments this device runs for others (it is an edge node or a cloud worker of a pool).
    serve: tuple[ServedSegment, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.model_name

    @property
    def own_segment(self) -> PlannedSegment | None:
        """The segment this device runs itself in a partitioned plan (None: local plan, a plan with
        nothing on the device, or no plan)."""
        if self.plan is None or self.plan.pattern == "local":
            return None
        return next((s for s in self.plan.segments if s.tier == "device"), None)

    def segment_artifacts(self) -> tuple[tuple[str, int], ...]:
        """(sha256, size) of every segment artifact the device must hold besides its model: its own
        segment and the segments it serves (each once)."""
        wanted: dict[str, int] = {}
        own = self.own_segment
        if own is not None and own.artifact_sha256:
            wanted[own.artifact_sha256] = own.artifact_size_bytes
        for s in self.serve:
            wanted.setdefault(s.artifact_sha256, s.artifact_size_bytes)
        return tuple(wanted.items())


class AssignmentFailure(enum.Enum):
    """Why an agent could not apply an assignment. All are permanent for that version."""

    CHECKSUM_MISMATCH = "checksum_mismatch"
    LOAD_FAILED = "load_failed"
    SMOKE_TEST_FAILED = "smoke_test_failed"
    ARTIFACT_NOT_FOUND = "artifact_not_found"
    FETCH_FAILED = "fetch_failed"


@dataclass(frozen=True, slots=True)
class ReportedState:
    acked_version: int = 0
    active_sha256: str = ""
    last_known_good_sha256: str = ""
    active_model_name: str = ""
    active_variant: str = ""


@dataclass(frozen=True, slots=True)
class ModelVariant:
    variant: str
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    created_at_ms: int = 0
    # How the toolchain built it ('' for a plain upload) and what it measured against fp32
    # (None: not measured, e.g. accuracy without labels).
    precision: str = ""
    method: str = ""
    latency_b1_ms: float = 0.0
    latency_b32_ms: float = 0.0
    accuracy: float | None = None
    agreement: float | None = None
    cosine: float | None = None


@dataclass(frozen=True, slots=True)
class RejectedVariant:
    """A precision candidate the toolchain built and measured but did not accept."""

    precision: str
    method: str
    reason: str


@dataclass(frozen=True, slots=True)
class CutPoint:
    """Where a model can be split: the head is the first ``index`` nodes of its topological order.

    ``tensors`` cross from head to tail (-1 marks a dynamic or unknown dimension);
    ``bytes_per_sample`` is their size per sample, -1 when a non-batch dimension is unknown."""

    index: int
    tensors: tuple[TensorSpec, ...] = ()
    bytes_per_sample: int = -1


@dataclass(frozen=True, slots=True)
class BlockProfile:
    """Measured latency of the block between two consecutive profiled cut points on the controller
    host. ``start_cut`` 0 is the model inputs and ``end_cut`` 0 the model outputs. A block that failed
    to build or run has latency 0 and the reason in ``error``."""

    start_cut: int
    end_cut: int
    precision: str
    batch_size: int
    latency_ms: float
    error: str = ""
    #: The block's ONNX at this precision, stored as an artifact (what agents download to profile it,
    #: and what partitioned inference will run); '' when it could not be built.
    artifact_sha256: str = ""
    artifact_size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class BlockAccuracy:
    """The model's quality on the eval data when only this block runs at ``precision`` and every
    other block at fp32, scored as whole variants are (``None``: not measured, e.g. accuracy without
    labels). The planner predicts a mixed-precision plan additively from these: each block at a lower
    precision costs what it cost alone. ``error`` says why a block could not be measured.

    One entry is the reference, not a block: ``0..0`` at ``fp32`` is the whole fp32 model scored on
    the same rows (``q_fp32`` of ``q = q_fp32 - sum(q_fp32 - q_block)``; no block is ever at fp32)."""

    start_cut: int
    end_cut: int
    precision: str
    accuracy: float | None = None
    cosine: float | None = None
    agreement: float | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ClassBlockProfile:
    """One block at one precision and batch size on one hardware class: the median over the devices
    of that class of their latest reported latency. ``devices`` counts the devices that measured it;
    when none could, latency is 0 and ``error`` is one device's reason."""

    hardware_class: str
    start_cut: int
    end_cut: int
    precision: str
    batch_size: int
    latency_ms: float
    devices: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    variants: tuple[ModelVariant, ...] = ()
    created_at_ms: int = 0
    rejected: tuple[RejectedVariant, ...] = ()
    cut_points: tuple[CutPoint, ...] = ()
    block_profiles: tuple[BlockProfile, ...] = ()
    block_accuracy: tuple[BlockAccuracy, ...] = ()
    #: Model-input rows (an ``.npz``) that agents profile the blocks on; '' before the first build.
    profile_inputs_sha256: str = ""
    profile_inputs_size_bytes: int = 0
    #: The eval data of the latest build, kept so the controller can measure segment mixes exactly.
    eval_data_sha256: str = ""
    eval_data_size_bytes: int = 0
    #: The controller host's call overhead per batch size, measured with the block profiles: what
    #: a segment of m blocks takes is their sum less (m - 1) overheads.
    call_overhead: tuple[CallOverhead, ...] = ()
    #: Block latencies per hardware class, from agents' profile reports (computed, never stored).
    class_profiles: tuple[ClassBlockProfile, ...] = ()
    #: Call overheads per hardware class, from the same reports (computed, never stored).
    class_call_overhead: tuple[ClassCallOverhead, ...] = ()

    def variant(self, name: str) -> ModelVariant | None:
        return next((v for v in self.variants if v.variant == name), None)


@dataclass(frozen=True, slots=True)
class Device:
    """A device as the controller's registry knows it."""

    id: str
    hardware: HardwareProfile
    enrolled_at_ms: int = 0
    connected: bool = False
    last_seen_ms: int = 0
    desired_version: int = 0
    acked_version: int = 0
    assignment: Assignment | None = None
    reported: ReportedState = field(default_factory=ReportedState)
    last_failure: AssignmentFailure | None = None
    last_failure_message: str = ""
    failed_version: int = 0
    records_received: int = 0
    last_sequence: int = 0
    records_dropped: int = 0
    links: tuple[LinkMeasurement, ...] = ()  # as the device last reported them, by pool
    endpoint: str = ""  # where peers reach its SegmentService ('' : it serves none)

    @property
    def converged(self) -> bool:
        return self.acked_version >= self.desired_version


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What enrollment gives a device; the agent persists it and never enrolls again."""

    device_id: str
    credential: str


@dataclass(frozen=True, slots=True)
class BootstrapToken:
    """A stored bootstrap token (the secret itself is kept only as a hash)."""

    token_id: str
    expires_at_ms: int
    uses_total: int
    uses_left: int
    created_at_ms: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class CreatedToken:
    """A token as shown once, at creation."""

    token_id: str
    token: str
    expires_at_ms: int
    uses: int


# --- control stream messages -------------------------------------------------------------------


class Outcome(enum.Enum):
    OK = "ok"
    INVALID_INPUT = "invalid_input"
    NO_MODEL = "no_model"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class InferenceRecord:
    model_sha256: str
    latency_ms: float
    outcome: Outcome
    error: str = ""
    path: str = ""  # local | partitioned | fallback ('': local)
    hops: tuple[HopTiming, ...] = ()  # a partitioned request's, its own segment first
    #: The assignment the device served it under (0: none yet; the agent core stamps it), so the
    #: controller compares it with that plan's predictions, not a later plan's.
    assignment_version: int = 0


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    kind: str
    message: str
    assignment_version: int = 0


@dataclass(frozen=True, slots=True)
class HopLatency:
    """Measured time of one hop over a device's recent requests, beside the plan's prediction."""

    tier: str
    device_id: str
    requests: int
    compute_ms_p50: float
    compute_ms_p95: float
    queue_ms_p50: float
    transfer_ms_p50: float
    mean_batch_size: float
    predicted_compute_ms: float = 0.0
    predicted_queue_ms: float = 0.0
    predicted_transfer_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class DeviceLatency:
    """A device's recent requests (its last ``window`` telemetry records) against its plan: what
    the planner's predictions are checked against. Percentiles are over successful requests on the
    plan's path (partitioned or local); 0 when there are none."""

    device_id: str
    window: int
    requests: int  # inference records in the window, every outcome and path
    outcomes: tuple[tuple[str, int], ...] = ()  # (outcome, count)
    paths: tuple[tuple[str, int], ...] = ()  # (path, count)
    measured: int = 0  # successful requests on the plan's path: what the percentiles are over
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    percentile: float = 0.0  # the deployment's (0: no plan)
    at_percentile_ms: float = 0.0
    predicted_ms: float = 0.0
    slo_ms: float = 0.0
    hops: tuple[HopLatency, ...] = ()

    @property
    def prediction_error(self) -> float | None:
        """(measured - predicted) / predicted at the deployment's percentile; None without both."""
        if not self.measured or self.predicted_ms <= 0:
            return None
        return (self.at_percentile_ms - self.predicted_ms) / self.predicted_ms

    @property
    def meets_slo(self) -> bool | None:
        if not self.measured or self.slo_ms <= 0:
            return None
        return self.at_percentile_ms <= self.slo_ms


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    sequence: int
    timestamp_ms: int
    body: InferenceRecord | DeviceEvent


@dataclass(frozen=True, slots=True)
class Hello:
    hardware: HardwareProfile
    reported: ReportedState
    telemetry_watermark: int = 0
    records_dropped: int = 0
    links: tuple[LinkMeasurement, ...] = ()
    endpoint: str = ""  # HOST:PORT where peers reach its SegmentService


@dataclass(frozen=True, slots=True)
class Heartbeat:
    sent_at_ms: int
    links: tuple[LinkMeasurement, ...] = ()  # set when they changed since last sent


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    records: tuple[TelemetryRecord, ...]


@dataclass(frozen=True, slots=True)
class AssignmentAck:
    version: int
    reported: ReportedState
    failure: AssignmentFailure | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class BlockTiming:
    """One block at one precision and batch size as an agent timed it (median ms per call, with the
    session settings the controller host uses); latency 0 and ``error`` set when it failed."""

    start_cut: int
    end_cut: int
    precision: str
    batch_size: int
    latency_ms: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class CallOverhead:
    """The time of one onnxruntime call to a model that does nothing, at one batch size: the fixed
    cost every block's time includes once (see ``controller.toolchain.profile``). ``dispatch_ms``: what
    an agent's serving path adds to one segment call beyond the model call (the hand-off to the
    model's thread and back through its batch queue, ``agent.profiler.measure_dispatch``); a segment
    pays it once. 0 where nobody measured it (the controller host does not serve)."""

    batch_size: int
    latency_ms: float
    dispatch_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ClassCallOverhead:
    """The call overhead on one hardware class at one batch size: the median over the devices of that
    class of their latest report (``devices`` of them), and the median of their dispatch cost."""

    hardware_class: str
    batch_size: int
    latency_ms: float
    devices: int
    dispatch_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ProfileReport:
    """An agent's answer to a ProfileRequest: every block it was asked to time, failures included.
    ``error`` set means the whole profile failed (e.g. an artifact could not be downloaded)."""

    request_id: str
    model_name: str
    timings: tuple[BlockTiming, ...] = ()
    call_overhead: tuple[CallOverhead, ...] = ()
    error: str = ""


AgentMessage = Hello | Heartbeat | TelemetryBatch | AssignmentAck | ProfileReport


@dataclass(frozen=True, slots=True)
class Welcome:
    heartbeat_interval_ms: int
    telemetry_watermark: int


@dataclass(frozen=True, slots=True)
class TelemetryAck:
    up_to_sequence: int


@dataclass(frozen=True, slots=True)
class ProfileBlock:
    """A block for an agent to profile: its cut range, precision and the artifact holding its ONNX."""

    start_cut: int
    end_cut: int
    precision: str
    artifact_sha256: str
    artifact_size_bytes: int


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    """Time these blocks on your own hardware. The inputs artifact is an ``.npz`` of model-input rows;
    a block's inputs are made by running the fp32 blocks in order on them. Safe to repeat: the agent
    answers a repeated ``request_id`` with the report it already has (or ignores it while running)."""

    request_id: str
    model_name: str
    source_sha256: str
    blocks: tuple[ProfileBlock, ...]
    inputs_sha256: str
    inputs_size_bytes: int
    batch_sizes: tuple[int, ...]
    runs: int


ControllerMessage = Welcome | Assignment | TelemetryAck | ProfileRequest


# --- artifacts, admin, inference ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArtifactManifest:
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class ArtifactChunk:
    offset: int
    data: bytes
    manifest: ArtifactManifest | None = None


@dataclass(frozen=True, slots=True)
class ImportModelHeader:
    name: str
    variant: str = DEFAULT_VARIANT
    size_bytes: int = 0
    precisions: tuple[str, ...] = ()  # precisions to build; empty: register the upload as is
    eval_data_size_bytes: int = 0  # eval data (.npz) sent after the model bytes


@dataclass(frozen=True, slots=True)
class ImportProgress:
    """One step of a model import's variant build, streamed to the client."""

    step: int
    total: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """A segment of a mixed-precision plan: the blocks from ``start_cut`` to ``end_cut`` (0: the
    model's inputs / outputs) at one precision."""

    start_cut: int
    end_cut: int
    precision: str


@dataclass(frozen=True, slots=True)
class SegmentEvaluation:
    """The measured quality of a segment mix on the stored eval data, next to what the additive
    block model predicts for it (``None``: not measurable / not predictable)."""

    model_name: str
    segments: tuple[SegmentSpec, ...]
    rows: int
    accuracy: float | None = None
    cosine: float | None = None
    agreement: float | None = None
    predicted_accuracy: float | None = None
    predicted_cosine: float | None = None
    predicted_agreement: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileRequestRecord:
    """A profile request as the controller keeps it: resent to the device until its report arrives
    (``completed_at_ms`` 0: still pending)."""

    device_id: str
    model_name: str
    request_id: str
    batch_sizes: tuple[int, ...]
    runs: int
    requested_at_ms: int
    completed_at_ms: int = 0

    @property
    def pending(self) -> bool:
        return self.completed_at_ms == 0


@dataclass(frozen=True, slots=True)
class DeviceProfileReport:
    """The latest profile report of one device for one model, with the hardware class it ran on."""

    device_id: str
    hardware_class: str
    reported_at_ms: int
    report: ProfileReport


@dataclass(frozen=True, slots=True)
class AssignResult:
    device: Device
    changed: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    inputs: tuple[Tensor, ...]
    output_names: tuple[str, ...] = ()


@slot_init  # made for every served request: see common.fastinit
@dataclass(frozen=True, slots=True)
class HopTiming:
    """One hop of a partitioned request (``transfer_ms``: to this hop and back)."""

    device_id: str
    tier: str
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    transfer_ms: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True, slots=True)
class InferResponse:
    outputs: tuple[Tensor, ...]
    model_sha256: str
    latency_ms: float
    hops: tuple[HopTiming, ...] = ()
    path: str = "local"  # local | partitioned | fallback (degraded: the partitioned path is down)
    fallback_reason: str = ""


@dataclass(frozen=True, slots=True)
class RouteHop:
    segment_sha256: str
    endpoints: tuple[SegmentEndpoint, ...]
    tier: str
    pool: str = ""


@slot_init  # made for every served request: see common.fastinit
@dataclass(frozen=True, slots=True)
class RunSegmentRequest:
    segment_sha256: str
    inputs: tuple[Tensor, ...]
    route: tuple[RouteHop, ...] = ()
    priority: int = 0
    origin_device: str = ""
    request_id: str = ""
    output_names: tuple[str, ...] = ()
    tier: str = "edge"  # the role this hop plays for the sender
    budget_ms: float = 0.0  # the caller's remaining budget when sent (0: none given)


@slot_init  # made for every served request: see common.fastinit
@dataclass(frozen=True, slots=True)
class RunSegmentResponse:
    outputs: tuple[Tensor, ...]
    hops: tuple[HopTiming, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentStatus:
    device_id: str
    hardware_class: str
    connected: bool
    reported: ReportedState
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    pending_telemetry: int = 0


def validate_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a legal device id / model name, else raise InvalidArgument."""
    from common.errors import InvalidArgument

    if not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid {kind} {value!r}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def validate_hardware_class(value: str) -> str:
    from common.errors import InvalidArgument

    if not HARDWARE_CLASS_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid hardware class {value!r}: use a lowercase DNS label such as "
            f"{', '.join(KNOWN_HARDWARE_CLASSES)}"
        )
    return value


# --- policies ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str
    content: str


@dataclass(frozen=True, slots=True)
class PolicyApply:
    """One ``fleetctl apply``: who, when, from which commit, what it changed."""

    id: int
    applied_at_ms: int
    applied_by: str
    git_commit: str
    git_dirty: bool
    source: str
    digest: str
    documents: int
    devices_changed: int
    summary_json: str = "{}"
    message: str = ""
    #: The canonical policy set applied (JSON); the store keeps it, listings may leave it out.
    policies_json: str = ""


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    device_id: str
    before: str
    after: str
