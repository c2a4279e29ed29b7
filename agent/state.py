"""The agent's data dir: identity and snapshot files, written atomically (temp + fsync + rename).

Layout::

    DATA_DIR/identity.json   device id and credential (mode 0600), written once at enrollment
    DATA_DIR/state.json      the core's AgentSnapshot: what to serve after a restart
    DATA_DIR/artifacts/      downloaded models (content-addressed, see artifact_cache)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.core.snapshot import AgentSnapshot, FailedVersion
from common.errors import PermanentError
from common.types import Assignment, AssignmentFailure, DeviceIdentity, ReportedState

log = logging.getLogger(__name__)

STATE_FORMAT = 1


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.identity_path = root / "identity.json"
        self.state_path = root / "state.json"
        self.artifacts = root / "artifacts"

    def load_identity(self) -> DeviceIdentity | None:
        raw = self._read_json(self.identity_path)
        if raw is None:
            return None
        try:
            return DeviceIdentity(device_id=str(raw["device_id"]), credential=str(raw["credential"]))
        except (KeyError, TypeError) as exc:
            raise PermanentError(f"{self.identity_path}: not an identity file ({exc})") from exc

    def save_identity(self, identity: DeviceIdentity) -> None:
        atomic_write(self.identity_path, json.dumps(asdict(identity)).encode(), mode=0o600)

    def load_snapshot(self) -> AgentSnapshot | None:
        raw = self._read_json(self.state_path)
        if raw is None:
            return None
        try:
            return _snapshot_from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            # A state file we cannot read must not keep the device from serving; start clean and say so.
            log.error("%s is unreadable (%s); starting without a restored model", self.state_path, exc)
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


def _assignment(raw: Any) -> Assignment | None:
    return None if raw is None else Assignment(**raw)


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
    )
