"""Inputs to the agent core. The driver (daemon or simulator) turns I/O outcomes into these."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.snapshot import AgentSnapshot
from agent.core.telemetry import OutboxState
from common.errors import EdgefleetError
from common.types import (
    Assignment,
    AssignmentFailure,
    ControllerMessage,
    DeviceIdentity,
    InferenceRecord,
    LinkMeasurement,
    ProfileReport,
    TelemetryRecord,
)


@dataclass(frozen=True, slots=True)
class Started:
    """The driver is up. ``identity``/``snapshot`` are what the data dir held (None on first boot)."""

    identity: DeviceIdentity | None
    snapshot: AgentSnapshot | None
    #: What the telemetry outbox holds (records a previous run made and the controller never acked).
    outbox: OutboxState | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the core checks its deadlines (see ``AgentCore.next_wakeup``)."""


@dataclass(frozen=True, slots=True)
class EnrollSucceeded:
    identity: DeviceIdentity


@dataclass(frozen=True, slots=True)
class EnrollFailed:
    error: EdgefleetError


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The control stream is open; the core answers with a Hello."""


@dataclass(frozen=True, slots=True)
class StreamClosed:
    error: EdgefleetError | None = None


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: ControllerMessage


@dataclass(frozen=True, slots=True)
class ArtifactReady:
    assignment: Assignment


@dataclass(frozen=True, slots=True)
class ArtifactFailed:
    """Fetching failed. Transient errors are retried with backoff; permanent ones fail the version."""

    assignment: Assignment
    error: EdgefleetError
    failure: AssignmentFailure | None = None


@dataclass(frozen=True, slots=True)
class ModelLoaded:
    """The runtime swapped this assignment's model in (it passed its smoke test)."""

    assignment: Assignment


@dataclass(frozen=True, slots=True)
class ModelLoadFailed:
    """The runtime refused the model; the previous model (last-known-good) keeps serving."""

    assignment: Assignment
    failure: AssignmentFailure
    message: str


@dataclass(frozen=True, slots=True)
class SegmentsReady:
    """Every segment of this assignment is loaded; the device routes by its plan now."""

    assignment: Assignment


@dataclass(frozen=True, slots=True)
class SegmentsFailed:
    """A segment could not be fetched or loaded. ``transient``: worth retrying with backoff (the
    controller could not be reached); otherwise the version fails (its model still serves alone)."""

    assignment: Assignment
    message: str
    transient: bool = False


@dataclass(frozen=True, slots=True)
class TelemetryLoaded:
    """The outbox's answer to LoadTelemetry (``requested``: the limit it was asked for)."""

    records: tuple[TelemetryRecord, ...]
    requested: int


@dataclass(frozen=True, slots=True)
class OutboxTrimmed:
    """The outbox dropped ``dropped`` records with sequences in ``first..last`` to stay within its
    budget (size or age): they are gone."""

    dropped: int
    first_sequence: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class LinksMeasured:
    """The device measured its links to these pools from its own traffic (they replace what it was
    told for the same pools)."""

    links: tuple[LinkMeasurement, ...]


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The partitioned path went down (``degraded``: requests are answered by the fallback) or came
    back; recorded as a device event so the controller sees what an outage cost."""

    degraded: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InferenceDone:
    record: InferenceRecord


@dataclass(frozen=True, slots=True)
class ProfileArtifactsReady:
    """Every artifact of the profile request (blocks and inputs) is in the local cache, verified."""

    request_id: str


@dataclass(frozen=True, slots=True)
class ProfileArtifactsFailed:
    """Fetching a profile request's artifacts failed: transient errors are retried with backoff;
    permanent ones end the profile with a report that says why."""

    request_id: str
    error: EdgefleetError


@dataclass(frozen=True, slots=True)
class ProfileDone:
    """The profiler finished (its report carries each block's timing or error)."""

    report: ProfileReport


Event = (
    Started
    | Tick
    | EnrollSucceeded
    | EnrollFailed
    | StreamOpened
    | StreamClosed
    | MessageReceived
    | ArtifactReady
    | ArtifactFailed
    | ModelLoaded
    | ModelLoadFailed
    | InferenceDone
    | PathChanged
    | LinksMeasured
    | TelemetryLoaded
    | OutboxTrimmed
    | ProfileArtifactsReady
    | ProfileArtifactsFailed
    | ProfileDone
    | SegmentsReady
    | SegmentsFailed
)
