"""``SqliteStore``: the ``Store`` contract persisted in one SQLite file (WAL mode) via sqlite-utils."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from common.errors import AlreadyExists, NotFound, PermanentError
from common.types import (
    ArtifactManifest,
    AssignmentAck,
    AssignmentPlan,
    BlockAccuracy,
    BlockProfile,
    BootstrapToken,
    CallOverhead,
    CutPoint,
    Device,
    DeviceProfileReport,
    HardwareProfile,
    LinkMeasurement,
    Model,
    ModelVariant,
    PolicyApply,
    ProfileReport,
    ProfileRequestRecord,
    RejectedVariant,
    ReportedState,
    ServedSegment,
    TelemetryRecord,
)
from controller.store import _codec, _rules
from controller.store.base import ApplyOutcome, PlannedAssignment, Store
from controller.store.migrations import apply_migrations

logger = logging.getLogger(__name__)

_Row = dict[str, Any]
#: Ids bound per ``IN (...)`` list: well below SQLITE_MAX_VARIABLE_NUMBER of any SQLite build (999 before 3.32).
_IDS_PER_QUERY = 500


class SqliteStore(Store):
    """One connection shared by all threads, serialised by a lock; each method is one transaction.

    Writes use ``BEGIN IMMEDIATE`` so a read-modify-write (spending a token use, applying an ack) holds
    the database write lock from its first read, also against other processes using the same file.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5_000) -> None:
        self._path = str(path)
        self._lock = threading.RLock()
        self._closed = False
        # isolation_level=None: the driver opens no implicit transactions; _tx() is the only place that does.
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            # busy_timeout first: switching to WAL itself may have to wait for another connection.
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and self._path != ":memory:":
                logger.warning("SQLite database %s could not use WAL (journal_mode=%s)", self._path, mode)
            # NORMAL is durable across application crashes in WAL mode; only power loss can drop the last
            # commits, which agents re-send (telemetry) or the operator repeats (admin calls).
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._db = Database(conn, execute_plugins=False)
            apply_migrations(self._db)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._devices = self._db.table("devices")
        self._tokens = self._db.table("tokens")
        self._models = self._db.table("models")
        self._variants = self._db.table("model_variants")
        self._rejections = self._db.table("model_rejections")

    # --- bootstrap tokens -----------------------------------------------------------------------

    def create_token(
        self, token_id: str, token_hash: str, *, expires_at_ms: int, uses: int, description: str, now_ms: int
    ) -> BootstrapToken:
        with self._tx(write=True):
            if self._one("SELECT 1 FROM tokens WHERE token_id = ?", token_id):
                raise AlreadyExists(f"bootstrap token {token_id!r} already exists")
            if self._one("SELECT 1 FROM tokens WHERE token_hash = ?", token_hash):
                raise AlreadyExists("a bootstrap token with this secret already exists")
            token = BootstrapToken(
                token_id=token_id,
                expires_at_ms=expires_at_ms,
                uses_total=uses,
                uses_left=uses,
                created_at_ms=now_ms,
                description=description,
            )
            self._tokens.insert(
                {
                    "token_id": token_id,
                    "token_hash": token_hash,
                    "expires_at_ms": expires_at_ms,
                    "uses_total": uses,
                    "uses_left": uses,
                    "description": description,
                    "created_at_ms": now_ms,
                }
            )
            return token

    def list_tokens(self) -> list[BootstrapToken]:
        with self._tx(write=False):
            # rowid breaks ties so that, among equal timestamps, the later insert comes first.
            rows = self._db.query("SELECT * FROM tokens ORDER BY created_at_ms DESC, rowid DESC")
            return [_codec.token_from_row(r) for r in rows]

    # --- devices --------------------------------------------------------------------------------

    def enroll_device(
        self, device_id: str, hardware: HardwareProfile, *, credential_hash: str, token_hash: str, now_ms: int
    ) -> tuple[Device, bool]:
        with self._tx(write=True):
            existing = self._one("SELECT * FROM devices WHERE id = ?", device_id)
            if existing is not None and _rules.is_repeat_enrollment(
                existing["credential_hash"], credential_hash
            ):
                return _codec.device_from_row(existing), False
            row = self._one("SELECT * FROM tokens WHERE token_hash = ?", token_hash)
            token = _rules.check_token(_codec.token_from_row(row) if row else None, now_ms=now_ms)
            if existing is not None:
                raise AlreadyExists(f"device {device_id!r} already exists")
            device = _rules.new_device(device_id, hardware, now_ms=now_ms)
            self._db.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE token_id = ?", [token.token_id]
            )
            self._devices.insert(
                {
                    "id": device_id,
                    "credential_hash": credential_hash,
                    "enrolled_at_ms": now_ms,
                    "token_id": token.token_id,
                    **_codec.device_state_columns(device),
                }
            )
            return device, True

    def get_device(self, device_id: str) -> Device:
        with self._tx(write=False):
            return self._load_device(device_id)

    def list_devices(self) -> list[Device]:
        with self._tx(write=False):
            return [_codec.device_from_row(r) for r in self._db.query("SELECT * FROM devices ORDER BY id")]

    def list_unacked(
        self, device_ids: Collection[str] | None = None, *, connected_only: bool = False
    ) -> list[Device]:
        unacked = "SELECT * FROM devices WHERE desired_version > acked_version"
        if connected_only:
            unacked += " AND connected = 1"
        with self._tx(write=False):
            if device_ids is None:
                rows = list(self._db.query(f"{unacked} ORDER BY id"))
            else:
                # Bound the parameters per statement (SQLite caps them); one read transaction for all.
                ids = sorted(set(device_ids))
                rows = []
                for start in range(0, len(ids), _IDS_PER_QUERY):
                    batch = ids[start : start + _IDS_PER_QUERY]
                    marks = ", ".join("?" * len(batch))
                    rows.extend(self._db.query(f"{unacked} AND id IN ({marks}) ORDER BY id", batch))
            return [_codec.device_from_row(r) for r in rows]

    def get_credential_hash(self, device_id: str) -> str:
        with self._tx(write=False):
            row = self._one("SELECT credential_hash FROM devices WHERE id = ?", device_id)
            if row is None:
                raise _rules.device_not_found(device_id)
            return str(row["credential_hash"])

    def device_connected(
        self,
        device_id: str,
        *,
        hardware: HardwareProfile,
        reported: ReportedState,
        records_dropped: int,
        now_ms: int,
        links: Sequence[LinkMeasurement] | None = None,
        endpoint: str | None = None,
    ) -> Device:
        return self._update(
            device_id,
            lambda d: _rules.apply_hello(
                d,
                hardware=hardware,
                reported=reported,
                records_dropped=records_dropped,
                now_ms=now_ms,
                links=None if links is None else tuple(links),
                endpoint=endpoint,
            ),
        )

    def device_disconnected(self, device_id: str, *, now_ms: int) -> Device:
        return self._update(device_id, lambda d: replace(d, connected=False, last_seen_ms=now_ms))

    def mark_all_disconnected(self) -> int:
        with self._tx(write=True):
            return self._db.execute("UPDATE devices SET connected = 0 WHERE connected != 0").rowcount

    def touch_device(self, device_id: str, *, now_ms: int) -> None:
        # Heartbeats are the hottest write: one UPDATE, no read-back.
        with self._tx(write=True):
            cursor = self._db.execute("UPDATE devices SET last_seen_ms = ? WHERE id = ?", [now_ms, device_id])
            if cursor.rowcount == 0:
                raise _rules.device_not_found(device_id)

    def set_links(self, device_id: str, links: Sequence[LinkMeasurement], *, now_ms: int) -> bool:
        with self._tx(write=True):
            before = self._load_device(device_id)
            ordered = tuple(sorted(links, key=lambda m: m.pool))
            if before.links == ordered:
                return False
            self._devices.update(
                device_id, {"links_json": _codec.links_to_json(ordered), "last_seen_ms": now_ms}
            )
            return True

    def set_assignment(
        self,
        device_id: str,
        *,
        model_name: str,
        variant: str,
        artifact_sha256: str,
        artifact_size_bytes: int,
        plan: AssignmentPlan | None = None,
        serve: Sequence[ServedSegment] = (),
        retry_failed: bool = True,
    ) -> tuple[Device, bool]:
        with self._tx(write=True):
            return self._set_assignment(
                PlannedAssignment(
                    device_id, model_name, variant, artifact_sha256, artifact_size_bytes, plan, tuple(serve)
                ),
                retry_failed=retry_failed,
            )

    def _set_assignment(self, a: PlannedAssignment, *, retry_failed: bool) -> tuple[Device, bool]:
        device, changed = _rules.apply_assignment(
            self._load_device(a.device_id),
            model_name=a.model_name,
            variant=a.variant,
            artifact_sha256=a.artifact_sha256,
            artifact_size_bytes=a.artifact_size_bytes,
            plan=a.plan,
            serve=a.serve,
            retry_failed=retry_failed,
        )
        if changed:
            self._save_device(device)
        return device, changed

    # --- segment artifacts ----------------------------------------------------------------------

    def find_segment_artifact(
        self, source_sha256: str, start_cut: int, end_cut: int, method: str
    ) -> tuple[str, int] | None:
        with self._tx(write=False):
            row = self._one(
                "SELECT sha256, size_bytes FROM segment_artifacts WHERE source_sha256 = ? AND start_cut = ?"
                " AND end_cut = ? AND method = ?",
                source_sha256,
                start_cut,
                end_cut,
                method,
            )
            return (row["sha256"], row["size_bytes"]) if row is not None else None

    def add_segment_artifact(
        self,
        model_name: str,
        source_sha256: str,
        start_cut: int,
        end_cut: int,
        method: str,
        sha256: str,
        size_bytes: int,
        *,
        now_ms: int,
    ) -> None:
        with self._tx(write=True):
            self._db.execute(
                "INSERT OR IGNORE INTO segment_artifacts (source_sha256, start_cut, end_cut, method, model_name,"
                " sha256, size_bytes, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [source_sha256, start_cut, end_cut, method, model_name, sha256, size_bytes, now_ms],
            )

    # --- policies -------------------------------------------------------------------------------

    def apply_policies(self, record: PolicyApply, assignments: Sequence[PlannedAssignment]) -> ApplyOutcome:
        with self._tx(write=True):
            changed = tuple(
                d for d, c in (self._set_assignment(a, retry_failed=False) for a in assignments) if c
            )
            latest = self._latest_apply()
            if not changed and latest is not None and latest.digest == record.digest:
                return ApplyOutcome(latest, (), recorded=False)
            stored = replace(record, devices_changed=len(changed))
            cursor = self._db.execute(
                "INSERT INTO policy_applies (applied_at_ms, applied_by, git_commit, git_dirty, source, digest,"
                " documents, devices_changed, summary_json, message, policies_json) VALUES"
                " (:applied_at_ms, :applied_by, :git_commit, :git_dirty, :source, :digest, :documents,"
                " :devices_changed, :summary_json, :message, :policies_json)",
                _codec.policy_apply_row(stored),
            )
            return ApplyOutcome(replace(stored, id=int(cursor.lastrowid or 0)), changed, recorded=True)

    def latest_policy_apply(self) -> PolicyApply | None:
        with self._tx(write=False):
            return self._latest_apply()

    def _latest_apply(self) -> PolicyApply | None:
        row = self._one("SELECT * FROM policy_applies ORDER BY id DESC LIMIT 1")
        return _codec.policy_apply_from_row(row) if row is not None else None

    def list_policy_applies(self, *, limit: int = 50) -> list[PolicyApply]:
        _rules.check_limit(limit)
        with self._tx(write=False):
            rows = self._db.query("SELECT * FROM policy_applies ORDER BY id DESC LIMIT ?", [limit])
            return [replace(_codec.policy_apply_from_row(r), policies_json="") for r in rows]

    def record_ack(self, device_id: str, ack: AssignmentAck, *, now_ms: int) -> Device:
        return self._update(device_id, lambda d: _rules.apply_ack(d, ack, now_ms=now_ms))

    # --- telemetry ------------------------------------------------------------------------------

    def append_telemetry(self, device_id: str, records: Sequence[TelemetryRecord], *, now_ms: int) -> int:
        with self._tx(write=True):
            self._require_device(device_id)
            before = self._conn.total_changes
            # Plain executemany, not sqlite-utils' insert_all: after a one-row INSERT OR IGNORE that ignored
            # its row, insert_all looks the row up by rowid, which a WITHOUT ROWID table does not have.
            self._conn.executemany(_INSERT_TELEMETRY, [_telemetry_row(device_id, r) for r in records])
            # INSERT OR IGNORE counts only the rows it really inserted: that is the number of new records.
            new = self._conn.total_changes - before
            last = max((r.sequence for r in records), default=0)
            self._db.execute(
                "UPDATE devices SET records_received = records_received + ?,"
                " last_sequence = MAX(last_sequence, ?), last_seen_ms = ? WHERE id = ?",
                [new, last, now_ms, device_id],
            )
            return new

    def list_telemetry(
        self, device_id: str, *, after_sequence: int = 0, limit: int = 1000
    ) -> list[TelemetryRecord]:
        _rules.check_limit(limit)
        with self._tx(write=False):
            self._require_device(device_id)
            rows = self._db.query(
                "SELECT * FROM telemetry WHERE device_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                [device_id, after_sequence, limit],
            )
            return [_codec.telemetry_from_row(r) for r in rows]

    def latest_telemetry(self, device_id: str, *, limit: int) -> list[TelemetryRecord]:
        _rules.check_limit(limit)
        with self._tx(write=False):
            self._require_device(device_id)
            rows = self._db.query(
                "SELECT * FROM telemetry WHERE device_id = ? ORDER BY sequence DESC LIMIT ?",
                [device_id, limit],
            )
            return [_codec.telemetry_from_row(r) for r in reversed(list(rows))]

    # --- models ---------------------------------------------------------------------------------

    def add_model_variant(self, name: str, variant: ModelVariant, *, now_ms: int) -> tuple[Model, bool]:
        with self._tx(write=True):
            existing = self._one(
                "SELECT sha256 FROM model_variants WHERE model_name = ? AND variant = ?",
                name,
                variant.variant,
            )
            if existing is not None:
                if existing["sha256"] == variant.sha256:
                    return self._load_model(name), False
                raise _rules.variant_conflict(
                    name, variant.variant, stored_sha256=existing["sha256"], new_sha256=variant.sha256
                )
            if self._one("SELECT 1 FROM models WHERE name = ?", name) is None:
                self._models.insert({"name": name, "created_at_ms": now_ms})
            self._variants.insert(_codec.variant_row(name, variant, now_ms=now_ms))
            return self._load_model(name), True

    def add_built_variants(
        self,
        name: str,
        variants: Sequence[ModelVariant],
        rejected: Sequence[RejectedVariant],
        *,
        now_ms: int,
        cut_points: Sequence[CutPoint] | None = None,
        block_profiles: Sequence[BlockProfile] | None = None,
        block_accuracy: Sequence[BlockAccuracy] | None = None,
        profile_inputs: ArtifactManifest | None = None,
        eval_data: ArtifactManifest | None = None,
        call_overhead: Sequence[CallOverhead] | None = None,
    ) -> Model:
        with self._tx(write=True):
            self._load_model(name)  # NotFound before anything is written
            for variant in variants:
                existing = self._one(
                    "SELECT sha256 FROM model_variants WHERE model_name = ? AND variant = ?",
                    name,
                    variant.variant,
                )
                if existing is None:
                    self._variants.insert(_codec.variant_row(name, variant, now_ms=now_ms))
                elif existing["sha256"] != variant.sha256:  # the transaction rolls back what came before
                    raise _rules.variant_conflict(
                        name, variant.variant, stored_sha256=existing["sha256"], new_sha256=variant.sha256
                    )
                else:  # the same bytes: only the measurements are new
                    self._conn.execute(
                        "UPDATE model_variants SET precision = ?, method = ?, latency_b1_ms = ?,"
                        " latency_b32_ms = ?, accuracy = ?, agreement = ?, cosine = ?"
                        " WHERE model_name = ? AND variant = ?",
                        (
                            variant.precision,
                            variant.method,
                            variant.latency_b1_ms,
                            variant.latency_b32_ms,
                            variant.accuracy,
                            variant.agreement,
                            variant.cosine,
                            name,
                            variant.variant,
                        ),
                    )
            self._conn.execute("DELETE FROM model_rejections WHERE model_name = ?", (name,))
            self._rejections.insert_all(
                {
                    "model_name": name,
                    "position": i,
                    "precision": r.precision,
                    "method": r.method,
                    "reason": r.reason,
                }
                for i, r in enumerate(rejected)
            )
            given = {
                "cut_points_json": None if cut_points is None else _codec.cut_points_to_json(cut_points),
                "block_profiles_json": None
                if block_profiles is None
                else _codec.block_profiles_to_json(block_profiles),
                "block_accuracy_json": None
                if block_accuracy is None
                else _codec.block_accuracy_to_json(block_accuracy),
                "profile_inputs_sha256": None if profile_inputs is None else profile_inputs.sha256,
                "profile_inputs_size_bytes": None if profile_inputs is None else profile_inputs.size_bytes,
                "eval_data_sha256": None if eval_data is None else eval_data.sha256,
                "eval_data_size_bytes": None if eval_data is None else eval_data.size_bytes,
                "call_overhead_json": None
                if call_overhead is None
                else _codec.call_overhead_to_json(call_overhead),
            }
            if any(v is not None for v in given.values()):
                stored = self._one("SELECT * FROM model_profiles WHERE model_name = ?", name) or _NO_PROFILE
                row = {k: stored[k] if v is None else v for k, v in given.items()}
                columns = ", ".join(row)
                self._conn.execute(
                    f"INSERT OR REPLACE INTO model_profiles (model_name, {columns})"
                    f" VALUES (?, {', '.join('?' * len(row))})",
                    (name, *row.values()),
                )
            return self._load_model(name)

    def get_model(self, name: str) -> Model:
        with self._tx(write=False):
            return self._load_model(name)

    def list_models(self) -> list[Model]:
        with self._tx(write=False):
            variants: dict[str, list[ModelVariant]] = {}
            for row in self._db.query("SELECT * FROM model_variants ORDER BY model_name, variant"):
                variants.setdefault(row["model_name"], []).append(_codec.variant_from_row(row))
            rejected: dict[str, list[RejectedVariant]] = {}
            for row in self._db.query("SELECT * FROM model_rejections ORDER BY model_name, position"):
                rejected.setdefault(row["model_name"], []).append(_codec.rejection_from_row(row))
            profiles = {row["model_name"]: row for row in self._db.query("SELECT * FROM model_profiles")}
            reports: dict[str, list[DeviceProfileReport]] = {}
            for row in self._db.query("SELECT * FROM profile_reports ORDER BY model_name, device_id"):
                reports.setdefault(row["model_name"], []).append(_device_report(row))
            return [
                _with_class_profiles(
                    Model(
                        name=r["name"],
                        variants=tuple(variants.get(r["name"], ())),
                        created_at_ms=r["created_at_ms"],
                        rejected=tuple(rejected.get(r["name"], ())),
                        **_profile_fields(profiles.get(r["name"])),
                    ),
                    reports.get(r["name"], []),
                )
                for r in self._db.query("SELECT * FROM models ORDER BY name")
            ]

    # --- device profiles ------------------------------------------------------------------------

    def request_profiles(
        self,
        model_name: str,
        requests: Sequence[tuple[str, str]],
        *,
        batch_sizes: Sequence[int],
        runs: int,
        now_ms: int,
    ) -> list[ProfileRequestRecord]:
        with self._tx(write=True):
            if self._one("SELECT 1 FROM models WHERE name = ?", model_name) is None:
                raise NotFound(f"model {model_name!r} not found")
            records: list[ProfileRequestRecord] = []
            for device_id, request_id in requests:
                self._load_device(device_id)
                if self._one("SELECT 1 FROM profile_requests WHERE request_id = ?", request_id):
                    raise AlreadyExists(f"profile request id {request_id!r} is already in use")
                record = ProfileRequestRecord(
                    device_id, model_name, request_id, tuple(batch_sizes), runs, requested_at_ms=now_ms
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO profile_requests (device_id, model_name, request_id,"
                    " batch_sizes_json, runs, requested_at_ms, completed_at_ms) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (
                        device_id,
                        model_name,
                        request_id,
                        _codec.batch_sizes_to_json(batch_sizes),
                        runs,
                        now_ms,
                    ),
                )
                records.append(record)
            return records

    def list_pending_profile_requests(
        self, device_ids: Collection[str] | None = None
    ) -> list[ProfileRequestRecord]:
        pending = "SELECT * FROM profile_requests WHERE completed_at_ms = 0"
        order = " ORDER BY device_id, model_name"
        with self._tx(write=False):
            if device_ids is None:
                rows = list(self._db.query(pending + order))
            else:
                ids = sorted(set(device_ids))
                rows = []
                for start in range(0, len(ids), _IDS_PER_QUERY):
                    batch = ids[start : start + _IDS_PER_QUERY]
                    marks = ", ".join("?" * len(batch))
                    rows.extend(self._db.query(f"{pending} AND device_id IN ({marks}){order}", batch))
                rows.sort(key=lambda r: (r["device_id"], r["model_name"]))
            return [_codec.profile_request_from_row(r) for r in rows]

    def record_profile_report(
        self, device_id: str, report: ProfileReport, *, now_ms: int
    ) -> ProfileRequestRecord:
        with self._tx(write=True):
            device = self._load_device(device_id)
            if self._one("SELECT 1 FROM models WHERE name = ?", report.model_name) is None:
                raise NotFound(f"model {report.model_name!r} not found")
            row = self._one(
                "SELECT * FROM profile_requests WHERE device_id = ? AND model_name = ?",
                device_id,
                report.model_name,
            )
            request = _rules.check_profile_report(
                device_id, report, None if row is None else _codec.profile_request_from_row(row)
            )
            if request.pending:
                request = replace(request, completed_at_ms=now_ms)
                self._conn.execute(
                    "UPDATE profile_requests SET completed_at_ms = ? WHERE request_id = ?",
                    (now_ms, request.request_id),
                )
            self._conn.execute(
                "INSERT OR REPLACE INTO profile_reports (device_id, model_name, request_id, hardware_class,"
                " reported_at_ms, report_json) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device_id,
                    report.model_name,
                    report.request_id,
                    device.hardware.hardware_class,
                    now_ms,
                    _codec.profile_report_to_json(report),
                ),
            )
            return request

    def list_profile_reports(self, model_name: str) -> list[DeviceProfileReport]:
        with self._tx(write=False):
            if self._one("SELECT 1 FROM models WHERE name = ?", model_name) is None:
                raise NotFound(f"model {model_name!r} not found")
            return self._reports(model_name)

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # --- helpers --------------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise PermanentError(f"store {self._path} is closed")
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                # An error in the middle leaves nothing behind: a refused enrollment spends no token use.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _one(self, sql: str, *params: object) -> _Row | None:
        return next(self._db.query(sql, list(params)), None)

    def _require_device(self, device_id: str) -> None:
        """NotFound unless the device exists, without decoding it (telemetry calls only need that)."""
        if self._one("SELECT 1 AS present FROM devices WHERE id = ?", device_id) is None:
            raise _rules.device_not_found(device_id)

    def _load_device(self, device_id: str) -> Device:
        row = self._one("SELECT * FROM devices WHERE id = ?", device_id)
        if row is None:
            raise _rules.device_not_found(device_id)
        return _codec.device_from_row(row)

    def _save_device(self, device: Device) -> None:
        self._devices.update(device.id, _codec.device_state_columns(device))

    def _update(self, device_id: str, change: Callable[[Device], Device]) -> Device:
        with self._tx(write=True):
            before = self._load_device(device_id)
            after = change(before)
            if after != before:
                self._save_device(after)
            return after

    def _load_model(self, name: str) -> Model:
        row = self._one("SELECT * FROM models WHERE name = ?", name)
        if row is None:
            raise NotFound(f"model {name!r} not found")
        rows = self._db.query("SELECT * FROM model_variants WHERE model_name = ? ORDER BY variant", [name])
        rejections = self._db.query(
            "SELECT * FROM model_rejections WHERE model_name = ? ORDER BY position", [name]
        )
        model = Model(
            name=name,
            variants=tuple(_codec.variant_from_row(r) for r in rows),
            created_at_ms=row["created_at_ms"],
            rejected=tuple(_codec.rejection_from_row(r) for r in rejections),
            **_profile_fields(self._one("SELECT * FROM model_profiles WHERE model_name = ?", name)),
        )
        return _with_class_profiles(model, self._reports(name))

    def _reports(self, model_name: str) -> list[DeviceProfileReport]:
        rows = self._db.query(
            "SELECT * FROM profile_reports WHERE model_name = ? ORDER BY device_id", [model_name]
        )
        return [_device_report(r) for r in rows]


#: The model_profiles columns of a model with none stored yet.
_NO_PROFILE: _Row = {
    "cut_points_json": "[]",
    "block_profiles_json": "[]",
    "block_accuracy_json": "[]",
    "profile_inputs_sha256": "",
    "profile_inputs_size_bytes": 0,
    "eval_data_sha256": "",
    "eval_data_size_bytes": 0,
    "call_overhead_json": "[]",
}


def _profile_fields(row: _Row | None) -> dict[str, Any]:
    """``Model``'s fields from its model_profiles row (none stored: the defaults)."""
    if row is None:
        return {}
    return {
        "cut_points": _codec.cut_points_from_json(row["cut_points_json"]),
        "block_profiles": _codec.block_profiles_from_json(row["block_profiles_json"]),
        "block_accuracy": _codec.block_accuracy_from_json(row["block_accuracy_json"]),
        "profile_inputs_sha256": row["profile_inputs_sha256"],
        "profile_inputs_size_bytes": row["profile_inputs_size_bytes"],
        "eval_data_sha256": row["eval_data_sha256"],
        "eval_data_size_bytes": row["eval_data_size_bytes"],
        "call_overhead": _codec.call_overhead_from_json(row["call_overhead_json"]),
    }


def _device_report(row: _Row) -> DeviceProfileReport:
    return DeviceProfileReport(
        device_id=row["device_id"],
        hardware_class=row["hardware_class"],
        reported_at_ms=row["reported_at_ms"],
        report=_codec.profile_report_from_json(row["request_id"], row["model_name"], row["report_json"]),
    )


def _with_class_profiles(model: Model, reports: Sequence[DeviceProfileReport]) -> Model:
    if not reports:
        return model
    return replace(
        model,
        class_profiles=_rules.class_profiles(reports, model.block_profiles),
        class_call_overhead=_rules.class_call_overhead(reports),
    )


_INSERT_TELEMETRY = (
    "INSERT OR IGNORE INTO telemetry (device_id, sequence, timestamp_ms, kind, body_json)"
    " VALUES (:device_id, :sequence, :timestamp_ms, :kind, :body_json)"
)


def _telemetry_row(device_id: str, record: TelemetryRecord) -> _Row:
    kind, body_json = _codec.telemetry_body_to_json(record.body)
    return {
        "device_id": device_id,
        "sequence": record.sequence,
        "timestamp_ms": record.timestamp_ms,
        "kind": kind,
        "body_json": body_json,
    }
