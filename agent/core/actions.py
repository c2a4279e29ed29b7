"""Outputs of the agent core: what the driver must do. Each is safe to repeat."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.snapshot import AgentSnapshot
from common.types import AgentMessage, Assignment, DeviceIdentity, ProfileRequest, TelemetryRecord


@dataclass(frozen=True, slots=True)
class Enroll:
    """Exchange the configured bootstrap token for an identity; answer with EnrollSucceeded/Failed."""


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Open the control stream as ``identity``; answer with StreamOpened or StreamClosed."""

    identity: DeviceIdentity


@dataclass(frozen=True, slots=True)
class CloseStream:
    reason: str


@dataclass(frozen=True, slots=True)
class Send:
    message: AgentMessage


@dataclass(frozen=True, slots=True)
class FetchArtifact:
    """Download (resuming any partial download) and verify; answer with ArtifactReady/Failed."""

    assignment: Assignment


@dataclass(frozen=True, slots=True)
class LoadModel:
    """Load, smoke-test and swap in; answer with ModelLoaded/ModelLoadFailed.

    ``restore`` is set when re-loading the last acknowledged model at start-up from the local cache.
    """

    assignment: Assignment
    restore: bool = False


@dataclass(frozen=True, slots=True)
class PrepareSegments:
    """Make the assignment's segments ready — download (resuming, verified) and load the device's own
    segment and those it serves others, unload the rest — and route by its plan from then on; answer
    with SegmentsReady/SegmentsFailed. ``restore``: after a restart, from the local cache."""

    assignment: Assignment
    restore: bool = False


@dataclass(frozen=True, slots=True)
class FetchProfileArtifacts:
    """Download (resuming, verified) every block artifact and the inputs of ``request`` into the
    cache; answer with ProfileArtifactsReady/Failed. The same download path as FetchArtifact."""

    request: ProfileRequest


@dataclass(frozen=True, slots=True)
class RunProfile:
    """Time the request's blocks (its artifacts are in the cache) off the serving path, at most one
    profile at a time; answer with ProfileDone, whose report carries any failure."""

    request: ProfileRequest


@dataclass(frozen=True, slots=True)
class PersistIdentity:
    identity: DeviceIdentity


@dataclass(frozen=True, slots=True)
class PersistSnapshot:
    snapshot: AgentSnapshot


@dataclass(frozen=True, slots=True)
class Fatal:
    """The agent cannot go on without operator action (e.g. a refused bootstrap token)."""

    reason: str


# --- the telemetry outbox (durable, on the driver's disk; see agent.core.telemetry) -----------------


@dataclass(frozen=True, slots=True)
class AppendTelemetry:
    """Write the record to the outbox before anything sends it (the driver enforces the outbox's
    budget, answering with OutboxTrimmed for what it drops)."""

    record: TelemetryRecord


@dataclass(frozen=True, slots=True)
class DeleteTelemetry:
    """The controller has every record up to this sequence: delete them from the outbox."""

    up_to_sequence: int


@dataclass(frozen=True, slots=True)
class LoadTelemetry:
    """Read up to ``limit`` records after ``after_sequence`` from the outbox, oldest first; answer
    with TelemetryLoaded."""

    after_sequence: int
    limit: int


@dataclass(frozen=True, slots=True)
class RenumberTelemetry:
    """Renumber every record in the outbox, in order, from ``start_at`` (the controller holds
    sequences above ours: our state was lost)."""

    start_at: int


Action = (
    Enroll
    | OpenStream
    | CloseStream
    | Send
    | FetchArtifact
    | LoadModel
    | PrepareSegments
    | FetchProfileArtifacts
    | RunProfile
    | PersistIdentity
    | PersistSnapshot
    | Fatal
    | AppendTelemetry
    | DeleteTelemetry
    | LoadTelemetry
    | RenumberTelemetry
)
