"""The agent's data dir: identity and snapshot files, written atomically (temp + fsync + rename).

Layout::

    DATA_DIR/identity.json     device id and credential (mode 0600), written once at enrollment
    DATA_DIR/enrollment.json   the id and credential an enrollment in progress asks for (mode 0600);
                               gone once identity.json is written
    DATA_DIR/state.json        the core's AgentSnapshot: what to serve after a restart
    DATA_DIR/artifacts/        downloaded models (content-addressed, see artifact_cache)
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.core.snapshot import AgentSnapshot, FailedVersion
from common.errors import PermanentError
from common.files import atomic_write
from common.types import (
    Assignment,
    AssignmentFailure,
    AssignmentPlan,
    DeviceIdentity,
    PlannedSegment,
    ReportedState,
    SegmentEndpoint,
    ServedSegment,
)

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.identity_path = root / "identity.json"
        self.enrollment_path = root / "enrollment.json"
        self.state_path = root / "state.json"
        self.artifacts = root / "artifacts"
        #: The device this data dir belongs to, once known (for log lines).
        self.device_id = "-"

    def load_identity(self) -> DeviceIdentity | None:
        """The identity from enrollment; None before it. A file that is there but unreadable is a
        PermanentError naming it: guessing would make the device someone else, or no one."""
        raw = self._read_json(self.identity_path)
        if raw is None:
            return None
        identity = _identity_from_json(raw, self.identity_path)
        self.device_id = identity.device_id
        return identity

    def save_identity(self, identity: DeviceIdentity) -> None:
        atomic_write(self.identity_path, json.dumps(asdict(identity)).encode(), mode=0o600)
        self.device_id = identity.device_id
        self.enrollment_path.unlink(missing_ok=True)  # done with: the identity supersedes it

    def pending_enrollment(self, requested_device_id: str = "") -> DeviceIdentity:
        """The device id and credential to enroll with, created and made durable on first use.

        Every attempt, after a lost reply or a restart, must ask for the same pair so that the
        controller can recognise a repeat and answer with the same identity. A different
        ``requested_device_id`` (the operator changed ``--device-id``) starts a new pending enrollment.
        """
        pending = self._load_pending_enrollment()
        if pending is not None and requested_device_id in ("", pending.device_id):
            self.device_id = pending.device_id
            return pending
        if pending is not None:
            log.warning(
                "device=%s enrollment as %s was pending; enrolling as %s instead, as requested",
                requested_device_id,
                pending.device_id,
                requested_device_id,
            )
        pending = DeviceIdentity(
            device_id=requested_device_id or f"dev-{secrets.token_hex(6)}",
            credential=f"efd_{secrets.token_urlsafe(32)}",
        )
        atomic_write(self.enrollment_path, json.dumps(asdict(pending)).encode(), mode=0o600)
        self.device_id = pending.device_id
        return pending

    def _load_pending_enrollment(self) -> DeviceIdentity | None:
        try:
            raw = self._read_json(self.enrollment_path)
            return None if raw is None else _identity_from_json(raw, self.enrollment_path)
        except PermanentError as exc:
            # Nothing in it can be recovered; a fresh pending enrollment replaces it.
            log.error("device=%s %s; starting a new enrollment", self.device_id, exc)
            return None

    def load_snapshot(self) -> AgentSnapshot | None:
        try:
            raw = self._read_json(self.state_path)
            return None if raw is None else _snapshot_from_json(raw)
        except (PermanentError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # A state file we cannot read must not keep the device from serving; start clean and say so.
            log.error(
                "device=%s %s is unreadable (%s); starting without a restored model",
                self.device_id,
                self.state_path,
                exc,
            )
            return None

    def save_snapshot(self, snapshot: AgentSnapshot) -> None:
        atomic_write(self.state_path, json.dumps(_snapshot_to_json(snapshot), sort_keys=True).encode())

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PermanentError(f"{path}: cannot read ({exc})") from exc


def _identity_from_json(raw: Any, path: Path) -> DeviceIdentity:
    try:
        device_id, credential = raw["device_id"], raw["credential"]
    except (KeyError, TypeError) as exc:
        raise PermanentError(f"{path}: not an identity file (missing {exc})") from exc
    if not isinstance(device_id, str) or not isinstance(credential, str) or not device_id or not credential:
        raise PermanentError(f"{path}: not an identity file (device_id and credential must be strings)")
    return DeviceIdentity(device_id=device_id, credential=credential)


def _assignment(raw: Any) -> Assignment | None:
    if raw is None:
        return None
    plan = raw.get("plan")
    if plan is not None:
        segments = tuple(
            PlannedSegment(**{**s, "endpoints": tuple(SegmentEndpoint(**e) for e in s.get("endpoints", ()))})
            for s in plan["segments"]
        )
        plan = AssignmentPlan(**{**plan, "segments": segments})
    serve = tuple(ServedSegment(**x) for x in raw.get("serve", ()))
    return Assignment(**{**raw, "plan": plan, "serve": serve})


def _snapshot_to_json(s: AgentSnapshot) -> dict[str, Any]:
    failed = None
    if s.failed is not None:
        failed = {"version": s.failed.version, "failure": s.failed.failure.value, "message": s.failed.message}
    return {
        "format": STATE_FORMAT,
        "reported": asdict(s.reported),
        "active": asdict(s.active) if s.active else None,
        "last_known_good": asdict(s.last_known_good) if s.last_known_good else None,
        "sequence_reserved_until": s.sequence_reserved_until,
        "records_dropped": s.records_dropped,
        "failed": failed,
        "segments": asdict(s.segments) if s.segments else None,
    }


def _snapshot_from_json(raw: dict[str, Any]) -> AgentSnapshot:
    if raw.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown state format {raw.get('format')!r}")
    failed_raw = raw.get("failed")
    failed = (
        FailedVersion(
            int(failed_raw["version"]), AssignmentFailure(failed_raw["failure"]), str(failed_raw["message"])
        )
        if failed_raw
        else None
    )
    return AgentSnapshot(
        reported=ReportedState(**raw["reported"]),
        active=_assignment(raw.get("active")),
        last_known_good=_assignment(raw.get("last_known_good")),
        sequence_reserved_until=int(raw["sequence_reserved_until"]),
        records_dropped=int(raw["records_dropped"]),
        failed=failed,
        segments=_assignment(raw.get("segments")),
    )
