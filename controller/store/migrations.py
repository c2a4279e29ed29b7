"""Versioned schema migrations for ``SqliteStore``.

Migrations are append-only: never edit one that has shipped, add the next version instead. Each
pending migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the row that records
it, so a crash leaves the database at a whole version and two controllers opening the same file at
once cannot both apply the same step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlite_utils import Database

from common.errors import PermanentError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# STRICT tables make SQLite reject a value of the wrong type instead of silently storing it.
_INITIAL_SCHEMA = """
CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at_ms INTEGER NOT NULL,
    uses_total INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hardware_json TEXT NOT NULL,
    credential_hash TEXT NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER NOT NULL DEFAULT 0,
    desired_version INTEGER NOT NULL DEFAULT 0,
    acked_version INTEGER NOT NULL DEFAULT 0,
    model_name TEXT NOT NULL DEFAULT '',
    variant TEXT NOT NULL DEFAULT '',
    artifact_sha256 TEXT NOT NULL DEFAULT '',
    artifact_size_bytes INTEGER NOT NULL DEFAULT 0,
    reported_json TEXT NOT NULL,
    last_failure TEXT,
    last_failure_message TEXT NOT NULL DEFAULT '',
    failed_version INTEGER NOT NULL DEFAULT 0,
    records_received INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    records_dropped INTEGER NOT NULL DEFAULT 0,
    token_id TEXT REFERENCES tokens(token_id)
) STRICT;

CREATE TABLE telemetry (
    device_id TEXT NOT NULL REFERENCES devices(id),
    sequence INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body_json TEXT NOT NULL,
    PRIMARY KEY (device_id, sequence)
) STRICT, WITHOUT ROWID;

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE model_variants (
    model_name TEXT NOT NULL REFERENCES models(name),
    variant TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    inputs_json TEXT NOT NULL,
    outputs_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (model_name, variant)
) STRICT;
"""

# Variants built by the model toolchain: how, and what they measured against fp32 (NULL: not measured).
# Candidates the toolchain rejected are kept per model with the measured reason.
_VARIANT_BUILDS = """
ALTER TABLE model_variants ADD COLUMN precision TEXT NOT NULL DEFAULT '';
ALTER TABLE model_variants ADD COLUMN method TEXT NOT NULL DEFAULT '';
ALTER TABLE model_variants ADD COLUMN latency_b1_ms REAL NOT NULL DEFAULT 0;
ALTER TABLE model_variants ADD COLUMN latency_b32_ms REAL NOT NULL DEFAULT 0;
ALTER TABLE model_variants ADD COLUMN accuracy REAL;
ALTER TABLE model_variants ADD COLUMN agreement REAL;
ALTER TABLE model_variants ADD COLUMN cosine REAL;

CREATE TABLE model_rejections (
    model_name TEXT NOT NULL REFERENCES models(name),
    position INTEGER NOT NULL,
    precision TEXT NOT NULL,
    method TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (model_name, position)
) STRICT;
"""

# Cut points and block profiles from a model's latest variant build, as JSON (one row per model):
# they are read and replaced whole, never queried by field.
_MODEL_PROFILES = """
CREATE TABLE model_profiles (
    model_name TEXT PRIMARY KEY REFERENCES models(name),
    cut_points_json TEXT NOT NULL,
    block_profiles_json TEXT NOT NULL
) STRICT;
"""

# What a build keeps besides its variants: the accuracy of each block lowered alone (JSON, like the
# block profiles, whose rows now also carry each block's artifact), the profile inputs and the eval
# data artifacts. Profile requests (one per device and model: the latest, resent until its report
# arrives) and the latest report of each device per model, from which per-class profiles are computed.
_BLOCK_ARTIFACTS_AND_DEVICE_PROFILES = """
ALTER TABLE model_profiles ADD COLUMN block_accuracy_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE model_profiles ADD COLUMN profile_inputs_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE model_profiles ADD COLUMN profile_inputs_size_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_profiles ADD COLUMN eval_data_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE model_profiles ADD COLUMN eval_data_size_bytes INTEGER NOT NULL DEFAULT 0;

CREATE TABLE profile_requests (
    device_id TEXT NOT NULL REFERENCES devices(id),
    model_name TEXT NOT NULL REFERENCES models(name),
    request_id TEXT NOT NULL UNIQUE,
    batch_sizes_json TEXT NOT NULL,
    runs INTEGER NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    completed_at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, model_name)
) STRICT;

CREATE TABLE profile_reports (
    device_id TEXT NOT NULL REFERENCES devices(id),
    model_name TEXT NOT NULL REFERENCES models(name),
    request_id TEXT NOT NULL,
    hardware_class TEXT NOT NULL,
    reported_at_ms INTEGER NOT NULL,
    report_json TEXT NOT NULL,
    PRIMARY KEY (device_id, model_name)
) STRICT;

CREATE INDEX profile_reports_by_model ON profile_reports (model_name);
"""

# The fleet planner's placement of each device (JSON, '' when assigned by hand), the links devices
# report (JSON list), and the history of policy applies (fleetctl apply), newest = current policies.
_PLANS_AND_POLICIES = """
ALTER TABLE devices ADD COLUMN plan_json TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN links_json TEXT NOT NULL DEFAULT '[]';

CREATE TABLE policy_applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    applied_at_ms INTEGER NOT NULL,
    applied_by TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    git_dirty INTEGER NOT NULL,
    source TEXT NOT NULL,
    digest TEXT NOT NULL,
    documents INTEGER NOT NULL,
    devices_changed INTEGER NOT NULL,
    summary_json TEXT NOT NULL,
    message TEXT NOT NULL,
    policies_json TEXT NOT NULL
) STRICT;
"""

# Partitioned inference: where each device's SegmentService answers, the segments a serving node
# keeps loaded for others (JSON list), and the segment artifacts built for plans, by what they are
# (source model, cut range, method), so a plan that needs one again reuses it. The host's call
# overhead per batch size (JSON list) so the planner subtracts it when it adds up block times.
_SEGMENTS = """
ALTER TABLE devices ADD COLUMN endpoint TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN serve_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE model_profiles ADD COLUMN call_overhead_json TEXT NOT NULL DEFAULT '[]';

CREATE TABLE segment_artifacts (
    source_sha256 TEXT NOT NULL,
    start_cut INTEGER NOT NULL,
    end_cut INTEGER NOT NULL,
    method TEXT NOT NULL,
    model_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (source_sha256, start_cut, end_cut, method)
) STRICT;
"""

# What the reconcile pass reads every few seconds: devices owing an ack and unanswered profile
# requests. Partial indexes hold only those rows, so the read costs what is pending, not the fleet
# (measured with 100,000 devices: a full scan per pass was a tenth of the controller's time).
_PENDING_INDEXES = """
CREATE INDEX devices_unacked ON devices (id) WHERE desired_version > acked_version;
CREATE INDEX profile_requests_pending ON profile_requests (device_id, model_name) WHERE completed_at_ms = 0;
"""

#: Ordered by version, starting at 1, without gaps.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _INITIAL_SCHEMA),
    Migration(2, "variant builds and rejections", _VARIANT_BUILDS),
    Migration(3, "model cut points and block profiles", _MODEL_PROFILES),
    Migration(
        4,
        "block artifacts, block accuracy, build data and device profiles",
        _BLOCK_ARTIFACTS_AND_DEVICE_PROFILES,
    ),
    Migration(5, "device plans and links, policy applies", _PLANS_AND_POLICIES),
    Migration(6, "device endpoints, served segments, segment artifacts, call overheads", _SEGMENTS),
    Migration(7, "partial indexes of what reconcile reads", _PENDING_INDEXES),
)

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL
)
"""


def schema_version(db: Database) -> int:
    """The highest applied migration version (0 for a fresh database)."""
    row = next(db.query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations"))
    return int(row["v"])


def apply_migrations(db: Database, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Bring the schema up to date; return the versions applied now.

    The connection must be in autocommit mode (no transaction open). Raises PermanentError when the
    database was written by newer code: running old code against it could silently lose data.
    """
    # Looked up at call time so tests can substitute the list.
    steps = tuple(MIGRATIONS if migrations is None else migrations)
    _check_ordered(steps)
    known = steps[-1].version if steps else 0
    conn = db.conn
    conn.execute(_CREATE_VERSION_TABLE)
    applied: list[int] = []
    while True:
        # Re-read the version inside the write lock: another process may have migrated meanwhile.
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(db)
            if current > known:
                raise PermanentError(
                    f"database schema version {current} is newer than this edgefleet knows "
                    f"(up to {known}); upgrade edgefleet before opening this database"
                )
            pending = next((m for m in steps if m.version > current), None)
            if pending is None:
                conn.execute("COMMIT")
                return applied
            db.executescript(pending.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)",
                (pending.version, pending.name, time.time_ns() // 1_000_000),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        logger.info("applied schema migration %d (%s)", pending.version, pending.name)
        applied.append(pending.version)


def _check_ordered(steps: Sequence[Migration]) -> None:
    expected = list(range(1, len(steps) + 1))
    if [m.version for m in steps] != expected:
        raise PermanentError(f"migrations must be numbered 1..{len(steps)} in order without gaps")


__all__ = ["MIGRATIONS", "Migration", "apply_migrations", "schema_version"]
