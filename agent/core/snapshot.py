"""The part of the agent's state that survives a restart (written by the driver, atomically)."""

from __future__ import annotations

from dataclasses import dataclass

from common.types import Assignment, AssignmentFailure, ReportedState


@dataclass(frozen=True, slots=True)
class FailedVersion:
    version: int
    failure: AssignmentFailure
    message: str


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    reported: ReportedState
    #: The assignment whose model is active, so a restart serves it again without the controller.
    active: Assignment | None = None
    last_known_good: Assignment | None = None
    #: Telemetry sequence numbers up to here may have been used; a restart continues above it
    #: (so the controller's (device, sequence) dedup never mistakes new records for old ones).
    sequence_reserved_until: int = 0
    records_dropped: int = 0
    failed: FailedVersion | None = None
    #: The assignment whose segments are ready (its own segment, those it serves others), so a
    #: restart routes and serves by it again from the local cache.
    segments: Assignment | None = None
