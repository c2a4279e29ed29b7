"""``SqliteStore``: the shared conformance suite plus what only a database file can get wrong."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from common.errors import PermanentError, Unauthenticated
from common.types import AssignmentFailure, BlockProfile
from controller.store import _codec, migrations
from controller.store.base import TOKEN_EXHAUSTED, Store
from controller.store.migrations import MIGRATIONS, Migration
from controller.store.sqlite import SqliteStore
from tests.store.conformance import StoreConformance
from tests.store.helpers import (
    T0,
    ack,
    add_token,
    assign,
    enroll,
    enrolled,
    event,
    hello,
    inference,
    run_concurrently,
    variant,
)


class TestSqliteStore(StoreConformance):
    def store_factory(self, tmp_path: Path) -> Store:
        return SqliteStore(tmp_path / "store.db")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "controller.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(db_path)
    yield store
    store.close()


def _rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    store = SqliteStore(db_path)
    add_token(store, uses=5)
    enroll(store, "dev-1", credential_hash="cred-1")
    enroll(store, "dev-2")
    hello(store, "dev-1", records_dropped=3)
    assign(store, "dev-1", "sha-1")
    store.record_ack("dev-1", ack(1, AssignmentFailure.LOAD_FAILED, "oom"), now_ms=T0 + 2)
    store.append_telemetry("dev-1", [inference(1), event(2)], now_ms=T0 + 3)
    store.add_model_variant("mnist", variant(), now_ms=T0)
    saved = (store.list_tokens(), store.list_devices(), store.list_models(), store.list_telemetry("dev-1"))
    store.close()

    reopened = SqliteStore(db_path)
    try:
        assert (
            reopened.list_tokens(),
            reopened.list_devices(),
            reopened.list_models(),
            reopened.list_telemetry("dev-1"),
        ) == saved
        assert reopened.get_credential_hash("dev-1") == "cred-1"
        assert saved[1][0].last_failure is AssignmentFailure.LOAD_FAILED  # the state compared is not trivial
    finally:
        reopened.close()


def test_connection_settings(store: SqliteStore, db_path: Path) -> None:
    conn = store._conn  # white-box: these pragmas are per connection
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    # journal_mode=WAL is stored in the file, so any connection sees it.
    assert _rows(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_schema_migrations_records_every_applied_version(store: SqliteStore, db_path: Path) -> None:
    rows = _rows(db_path, "SELECT version, name, applied_at_ms FROM schema_migrations ORDER BY version")
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(isinstance(at, int) and at > 0 for _, _, at in rows)


def _with_probe(*extra_sql: str) -> tuple[Migration, ...]:
    """The real migrations plus numbered test steps after them."""
    n = len(MIGRATIONS)
    return MIGRATIONS + tuple(Migration(n + 1 + i, f"probe {i}", sql) for i, sql in enumerate(extra_sql))


def test_reopening_does_not_rerun_migrations(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _with_probe("CREATE TABLE probe (x INTEGER); INSERT INTO probe VALUES (1);")
    monkeypatch.setattr(migrations, "MIGRATIONS", steps)
    SqliteStore(db_path).close()
    applied = _rows(db_path, "SELECT * FROM schema_migrations ORDER BY version")
    SqliteStore(db_path).close()
    assert _rows(db_path, "SELECT x FROM probe") == [(1,)]
    assert _rows(db_path, "SELECT * FROM schema_migrations ORDER BY version") == applied


def test_pending_migrations_apply_to_an_existing_database(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(db_path)
    enrolled(store, "dev-1")
    store.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", _with_probe("ALTER TABLE devices ADD COLUMN note TEXT"))
    store = SqliteStore(db_path)
    try:
        assert store.get_device("dev-1").id == "dev-1"
    finally:
        store.close()
    assert _rows(db_path, "SELECT MAX(version) FROM schema_migrations") == [(len(MIGRATIONS) + 1,)]
    assert ("dev-1", None) in _rows(db_path, "SELECT id, note FROM devices")


def test_a_failing_migration_leaves_no_trace(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SqliteStore(db_path).close()
    monkeypatch.setattr(
        migrations, "MIGRATIONS", _with_probe("CREATE TABLE probe (x); INSERT INTO nowhere VALUES (1);")
    )
    with pytest.raises(sqlite3.OperationalError):
        SqliteStore(db_path)
    assert _rows(db_path, "SELECT name FROM sqlite_master WHERE name = 'probe'") == []
    assert _rows(db_path, "SELECT MAX(version) FROM schema_migrations") == [(len(MIGRATIONS),)]


def test_a_database_from_newer_code_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    conn.close()
    with pytest.raises(PermanentError, match=rf"schema version 99 is newer .* \(up to {len(MIGRATIONS)}\)"):
        SqliteStore(db_path)
    assert _rows(db_path, "SELECT MAX(version) FROM schema_migrations") == [(99,)]


def test_variants_from_schema_1_survive_migration_2(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:1])
    SqliteStore(db_path).close()
    conn = sqlite3.connect(db_path)
    with conn:  # as code of schema 1 wrote it
        conn.execute("INSERT INTO models VALUES ('mnist', ?)", (T0,))
        conn.execute(
            "INSERT INTO model_variants VALUES ('mnist', 'fp32', 'aa', 1000, ?, ?, ?)",
            (_codec.specs_to_json(variant().inputs), _codec.specs_to_json(variant().outputs), T0),
        )
    conn.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    store = SqliteStore(db_path)
    try:
        model = store.get_model("mnist")
        assert model.variants == (replace(variant(), created_at_ms=T0),)  # precision '' and no metrics
        assert model.rejected == ()
    finally:
        store.close()


def test_profiles_stored_before_block_artifacts_read_without_them(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at migration 3 (block profiles without artifact keys, no accuracy or build data) opens
    with the current code: the blocks have no artifact, and the model no accuracy, inputs or eval data."""
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:3])
    SqliteStore(db_path).close()
    conn = sqlite3.connect(db_path)
    with conn:  # rows as the code of migration 3 wrote them
        conn.execute("INSERT INTO models VALUES ('mnist', ?)", (T0,))
        conn.execute(
            "INSERT INTO model_variants (model_name, variant, sha256, size_bytes, inputs_json, outputs_json,"
            " created_at_ms) VALUES ('mnist', 'fp32', 'aa', 1000, ?, ?, ?)",
            (_codec.specs_to_json(variant().inputs), _codec.specs_to_json(variant().outputs), T0),
        )
        old_blocks = (
            '[{"batch_size":1,"end_cut":0,"error":"","latency_ms":0.5,"precision":"fp32","start_cut":0}]'
        )
        conn.execute("INSERT INTO model_profiles VALUES ('mnist', '[]', ?)", (old_blocks,))
    conn.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    store = SqliteStore(db_path)
    try:
        model = store.get_model("mnist")
        assert model.block_profiles == (BlockProfile(0, 0, "fp32", 1, 0.5),)
        assert (model.block_accuracy, model.profile_inputs_sha256, model.eval_data_sha256) == ((), "", "")
        assert model.class_profiles == ()
        assert store.list_pending_profile_requests() == []
    finally:
        store.close()


def test_migrations_must_be_numbered_in_order(db_path: Path) -> None:
    from sqlite_utils import Database

    with pytest.raises(PermanentError, match="numbered"):
        migrations.apply_migrations(Database(db_path), [Migration(2, "gap", "SELECT 1")])


def test_enrollment_is_atomic_across_connections(db_path: Path) -> None:
    """Eight controllers (connections) on one file race for a three-use token: exactly three win."""
    setup = SqliteStore(db_path)
    add_token(setup, uses=3)
    setup.close()
    stores = [SqliteStore(db_path) for _ in range(8)]
    try:
        outcomes = run_concurrently(8, lambda i: enroll(stores[i], f"dev-{i}").id)
    finally:
        for s in stores:
            s.close()
    winners = sorted(o for o in outcomes if isinstance(o, str))
    losers = [o for o in outcomes if not isinstance(o, str)]
    assert len(winners) == 3
    assert all(isinstance(e, Unauthenticated) and e.code == TOKEN_EXHAUSTED for e in losers), losers
    assert _rows(db_path, "SELECT id FROM devices ORDER BY id") == [(w,) for w in winners]
    assert _rows(db_path, "SELECT uses_left FROM tokens") == [(0,)]
