"""The agent's data dir (``agent.state``): atomic writes, unreadable files, pending enrollment."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

import common.files as files
from agent.core.snapshot import AgentSnapshot
from agent.state import DataDir
from common.errors import PermanentError
from common.files import atomic_write
from common.types import DeviceIdentity, ReportedState

IDENT = DeviceIdentity("phone-1", "efd_" + "c" * 40)


# --- atomic_write ------------------------------------------------------------------------------------


def test_atomic_write_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = 0

    def short_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        return real_write(fd, bytes(data[:7]))  # never more than 7 bytes at a time

    monkeypatch.setattr(files.os, "write", short_write)
    payload = bytes(range(256)) * 4
    atomic_write(tmp_path / "f", payload)
    assert (tmp_path / "f").read_bytes() == payload
    assert calls == -(-len(payload) // 7)


def test_atomic_write_failure_leaves_no_temp_file_and_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_sets_the_mode(tmp_path: Path) -> None:
    atomic_write(tmp_path / "secret", b"x", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


# --- unreadable files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"format": 1}', b'{"format": 99}', b""]
)
def test_corrupt_state_file_starts_clean_and_says_so(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    data = DataDir(tmp_path)
    data.save_identity(IDENT)
    data.load_identity()
    data.state_path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        assert data.load_snapshot() is None
    assert str(data.state_path) in caplog.text
    assert "device=phone-1" in caplog.text
    # And the next save replaces it.
    snap = AgentSnapshot(reported=ReportedState(acked_version=3))
    data.save_snapshot(snap)
    assert data.load_snapshot() == snap


@pytest.mark.parametrize(
    "content", [b"{not json", b"[]", b'{"device_id": "x"}', b'{"device_id": 1, "credential": 2}']
)
def test_corrupt_identity_file_is_a_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    data = DataDir(tmp_path)
    data.identity_path.write_bytes(content)
    with pytest.raises(PermanentError, match=re.escape(str(data.identity_path))):
        data.load_identity()


def test_identity_round_trip_is_private(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert data.load_identity() is None
    data.save_identity(IDENT)
    assert DataDir(tmp_path).load_identity() == IDENT
    assert data.identity_path.stat().st_mode & 0o777 == 0o600


# --- pending enrollment ------------------------------------------------------------------------------


def test_pending_enrollment_is_created_once_durably_and_privately(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    first = data.pending_enrollment("phone-1")
    assert first.device_id == "phone-1"
    assert first.credential.startswith("efd_") and 32 <= len(first.credential) <= 256
    assert data.enrollment_path.stat().st_mode & 0o777 == 0o600
    assert json.loads(data.enrollment_path.read_bytes()) == {
        "device_id": "phone-1",
        "credential": first.credential,
    }
    # Another attempt, or another process after a restart, asks for exactly the same.
    assert data.pending_enrollment("phone-1") == first
    assert DataDir(tmp_path).pending_enrollment("phone-1") == first
    assert DataDir(tmp_path).pending_enrollment("") == first


def test_pending_enrollment_generates_a_device_id_when_none_is_requested(tmp_path: Path) -> None:
    pending = DataDir(tmp_path).pending_enrollment("")
    assert re.fullmatch(r"dev-[0-9a-f]{12}", pending.device_id)
    assert DataDir(tmp_path).pending_enrollment("") == pending
    other = DataDir(tmp_path / "other").pending_enrollment("")
    assert other.device_id != pending.device_id and other.credential != pending.credential


def test_a_different_requested_id_starts_a_new_pending_enrollment(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    first = data.pending_enrollment("phone-1")
    second = data.pending_enrollment("phone-2")
    assert second.device_id == "phone-2" and second.credential != first.credential
    assert DataDir(tmp_path).pending_enrollment("") == second


def test_corrupt_pending_enrollment_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = DataDir(tmp_path)
    data.enrollment_path.write_bytes(b"{garbage")
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        pending = data.pending_enrollment("phone-1")
    assert pending.device_id == "phone-1"
    assert str(data.enrollment_path) in caplog.text
    assert DataDir(tmp_path).pending_enrollment("phone-1") == pending


def test_saving_the_identity_ends_the_pending_enrollment(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    pending = data.pending_enrollment("phone-1")
    data.save_identity(pending)
    assert not data.enrollment_path.exists()
    assert DataDir(tmp_path).load_identity() == pending


def test_a_planned_assignment_survives_a_restart(tmp_path: Path) -> None:
    from common.types import Assignment, AssignmentPlan, PlannedSegment

    plan = AssignmentPlan(
        deployment="digits-eu",
        pattern="device+edge",
        segments=(
            PlannedSegment("device", 0, 7, "int8", "phone-1"),
            PlannedSegment("edge", 7, 0, "fp32", "edge-1"),
        ),
        edge_pool="eu-edge",
        edge_node="edge-1",
        fallback_variant="int8",
        predicted_latency_ms=12.5,
        predicted_accuracy=0.998,
    )
    active = Assignment(4, "digits", "int8", "ab" * 32, 1234, plan=plan)
    data = DataDir(tmp_path)
    data.save_snapshot(AgentSnapshot(reported=ReportedState(acked_version=4), active=active))
    restored = DataDir(tmp_path).load_snapshot()
    assert restored is not None and restored.active == active
