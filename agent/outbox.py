"""The agent's telemetry outbox: unacknowledged records, durable across crashes and reboots.

The core (``agent.core.telemetry``) decides what to write, send, load and delete; an ``Outbox`` only
stores records by sequence and keeps to its **budget**: at most ``max_bytes`` of records (their
encoded size plus a fixed per-row overhead) and none older than ``max_age_s``. Over budget it drops
by its policy — ``drop-oldest`` (the default: the newest data is worth most, like Greengrass stream
manager's OverwriteOldestData) or ``reject-newest`` (keep the history, refuse what does not fit) — and
says what it dropped (``Trimmed``), which the core counts and reports; nothing is dropped silently.

``SqliteOutbox`` is the daemon's: one table in ``outbox.sqlite3`` in the data dir, WAL journal. The
fsync policy is ``synchronous=NORMAL`` by default: a committed append survives the agent being killed
(SIGKILL, OOM, a crash) — the write is in the WAL before the request it records is answered — and the
WAL is fsynced at checkpoints, so a power cut can lose the appends since the last checkpoint (about
a second's worth). ``synchronous="full"`` fsyncs every append and survives power loss too, at a cost
per request measured by ``bench/outbox.py``. ``MemoryOutbox`` is the same contract in memory (the
simulator's thousands of virtual devices; tests); one conformance suite runs against both.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from agent.core import actions as act
from agent.core import events as ev
from agent.core.telemetry import OutboxState
from common import serde
from common.errors import InvalidArgument
from common.types import TelemetryRecord

log = logging.getLogger(__name__)

#: What a stored row costs beyond its encoded record (key, timestamp, b-tree and page overhead), as
#: measured on SQLite here (bench/outbox.py); between measurements of the real file the budget adds
#: this per row.
ROW_OVERHEAD_BYTES = 160
#: The SQLite outbox measures its real size (pages in use plus the WAL) every this many appends.
MEASURE_EVERY = 256
#: The WAL is truncated back to at most this after checkpoints (it would otherwise keep its largest
#: size), and to an eighth of a small budget.
WAL_LIMIT_BYTES = 4 * 2**20
#: Holds 24 hours at 10 requests/s of the largest record an agent writes (a partitioned request with
#: three hops): 864,000 records took 211.5 MiB on disk here (bench/outbox.py).
DEFAULT_MAX_BYTES = 256 * 2**20
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0


class DropPolicy(enum.Enum):
    DROP_OLDEST = "drop-oldest"
    REJECT_NEWEST = "reject-newest"


@dataclass(frozen=True, slots=True)
class OutboxBudget:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_age_s: float = DEFAULT_MAX_AGE_S
    policy: DropPolicy = DropPolicy.DROP_OLDEST

    def __post_init__(self) -> None:
        if self.max_bytes < 64 * 1024:
            raise InvalidArgument(f"outbox budget {self.max_bytes} bytes: at least 64 KiB")
        if not self.max_age_s > 0:
            raise InvalidArgument(f"outbox max age {self.max_age_s}s: must be positive")


@dataclass(frozen=True, slots=True)
class Trimmed:
    """``dropped`` records, with sequences within ``first..last``, are gone (the budget)."""

    dropped: int
    first_sequence: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class OutboxUsage:
    records: int
    bytes: int  # as the budget counts them


def encode(record: TelemetryRecord) -> bytes:
    """A record as stored: its protobuf (the row's key is its sequence, which renumbering changes)."""
    return serde.telemetry_record_to_bytes(record)


def decode(sequence: int, data: bytes) -> TelemetryRecord:
    return replace(serde.telemetry_record_from_bytes(data), sequence=sequence)


class Outbox(ABC):
    def __init__(self, budget: OutboxBudget, *, wall_ms: Callable[[], int]) -> None:
        self.budget = budget
        self._wall_ms = wall_ms

    @abstractmethod
    def append(self, record: TelemetryRecord) -> tuple[Trimmed, ...]:
        """Store ``record`` (its sequence must be new), then keep to the budget: what was dropped
        (each a contiguous run of sequences; ``reject-newest`` may name the record itself)."""

    @abstractmethod
    def load(self, after_sequence: int, limit: int) -> tuple[TelemetryRecord, ...]:
        """Up to ``limit`` records with sequences above ``after_sequence``, oldest first."""

    @abstractmethod
    def delete_through(self, sequence: int) -> int:
        """Delete every record up to ``sequence`` (acknowledged); how many went."""

    @abstractmethod
    def renumber(self, start_at: int) -> None:
        """Renumber every record, in order, from ``start_at``."""

    @abstractmethod
    def state(self) -> OutboxState:
        """What it holds (for the core at start-up)."""

    @abstractmethod
    def usage(self) -> OutboxUsage: ...

    def close(self) -> None:  # noqa: B027 - nothing to release in memory
        """Release resources; safe to call twice."""


class SqliteOutbox(Outbox):
    def __init__(
        self,
        path: Path,
        budget: OutboxBudget = OutboxBudget(),
        *,
        wall_ms: Callable[[], int],
        synchronous: str = "normal",
    ) -> None:
        super().__init__(budget, wall_ms=wall_ms)
        if synchronous not in ("normal", "full"):
            raise InvalidArgument(f"outbox sync {synchronous!r}: normal or full")
        # Autocommit: each append is its own transaction (durable before the request is answered).
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # The WAL counts against the budget: checkpoint it (and truncate it back) often enough that it
        # stays within an eighth of the budget.
        wal_limit = min(WAL_LIMIT_BYTES, budget.max_bytes // 8)
        self._db.execute(f"PRAGMA journal_size_limit={wal_limit}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={max(1, wal_limit // 4096 // 2)}")
        self._path = path
        self._since_measured = 0
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " sequence INTEGER PRIMARY KEY, timestamp_ms INTEGER NOT NULL, record BLOB NOT NULL)"
        )
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0), MIN(timestamp_ms) FROM outbox"
        ).fetchone()
        self._count = int(row[0])
        self._oldest_ms: int | None = row[2]
        self._bytes = self._measure()

    def _measure(self) -> int:
        """The outbox's real size: the database's pages in use (free pages are reused) plus the WAL."""
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        wal = self._path.with_name(self._path.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        self._since_measured = 0
        return (pages - free) * page_size + wal_bytes

    def append(self, record: TelemetryRecord) -> tuple[Trimmed, ...]:
        data = encode(record)
        size = len(data) + ROW_OVERHEAD_BYTES
        expired = self._drop_expired()
        if self.budget.policy is DropPolicy.REJECT_NEWEST and self._bytes + size > self.budget.max_bytes:
            return _runs(expired, Trimmed(1, record.sequence, record.sequence))
        try:
            self._db.execute(
                "INSERT INTO outbox (sequence, timestamp_ms, record) VALUES (?, ?, ?)",
                (record.sequence, record.timestamp_ms, data),
            )
        except sqlite3.IntegrityError:
            raise InvalidArgument(f"outbox already holds sequence {record.sequence}") from None
        self._count += 1
        self._bytes += size
        self._since_measured += 1
        if self._since_measured >= MEASURE_EVERY or self._bytes > self.budget.max_bytes:
            self._bytes = self._measure()
        if self._oldest_ms is None:
            self._oldest_ms = record.timestamp_ms
        if self.budget.policy is DropPolicy.REJECT_NEWEST:
            return _runs(expired)
        return _runs(expired, self._drop_oldest_over_budget())

    def _drop_expired(self) -> Trimmed | None:
        cutoff = self._wall_ms() - int(self.budget.max_age_s * 1000)
        if self._oldest_ms is None or self._oldest_ms >= cutoff:
            return None
        return self._drop("timestamp_ms < ?", cutoff)

    def _drop_oldest_over_budget(self) -> Trimmed | None:
        if self._bytes <= self.budget.max_bytes:
            return None
        # Free a tenth of the budget at once: one delete per many appends, not one per append.
        target = self.budget.max_bytes * 9 // 10
        excess = self._bytes - target
        cut = self._db.execute(
            "SELECT sequence FROM (SELECT sequence, SUM(LENGTH(record) + ?) OVER (ORDER BY sequence) AS upto"
            " FROM outbox) WHERE upto >= ? ORDER BY sequence LIMIT 1",
            (ROW_OVERHEAD_BYTES, excess),
        ).fetchone()
        if cut is None:
            return None
        return self._drop("sequence <= ?", int(cut[0]))

    def _drop(self, where: str, value: int) -> Trimmed | None:
        row = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0), MIN(sequence), MAX(sequence)"
            f" FROM outbox WHERE {where}",
            (value,),
        ).fetchone()
        if not row[0]:
            return None
        self._db.execute(f"DELETE FROM outbox WHERE {where}", (value,))
        self._count -= int(row[0])
        self._bytes = max(0, self._bytes - int(row[1]) - int(row[0]) * ROW_OVERHEAD_BYTES)
        self._oldest_ms = self._db.execute("SELECT MIN(timestamp_ms) FROM outbox").fetchone()[0]
        return Trimmed(int(row[0]), int(row[2]), int(row[3]))

    def load(self, after_sequence: int, limit: int) -> tuple[TelemetryRecord, ...]:
        rows = self._db.execute(
            "SELECT sequence, record FROM outbox WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (after_sequence, max(0, limit)),
        ).fetchall()
        out: list[TelemetryRecord] = []
        for sequence, data in rows:
            try:
                out.append(decode(int(sequence), bytes(data)))
            except InvalidArgument as exc:  # a row this version cannot read: skip it, say so
                log.error("outbox record %d is unreadable (%s); skipped", sequence, exc)
        return tuple(out)

    def delete_through(self, sequence: int) -> int:
        if self._count == 0:
            return 0
        trimmed = self._drop("sequence <= ?", sequence)
        return trimmed.dropped if trimmed else 0

    def renumber(self, start_at: int) -> None:
        rows = self._db.execute(
            "SELECT sequence, timestamp_ms, record FROM outbox ORDER BY sequence"
        ).fetchall()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM outbox")
            self._db.executemany(
                "INSERT INTO outbox (sequence, timestamp_ms, record) VALUES (?, ?, ?)",
                ((start_at + i, ts, data) for i, (_, ts, data) in enumerate(rows)),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def state(self) -> OutboxState:
        row = self._db.execute("SELECT COUNT(*), MIN(sequence), MAX(sequence) FROM outbox").fetchone()
        return OutboxState(int(row[0]), int(row[1] or 0), int(row[2] or 0))

    def usage(self) -> OutboxUsage:
        return OutboxUsage(self._count, self._bytes)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # closing twice is fine
            self._db.close()


class MemoryOutbox(Outbox):
    """The same contract without a disk (nothing survives the process)."""

    def __init__(self, budget: OutboxBudget = OutboxBudget(), *, wall_ms: Callable[[], int]) -> None:
        super().__init__(budget, wall_ms=wall_ms)
        self._rows: dict[int, tuple[int, bytes]] = {}  # sequence -> (timestamp_ms, encoded), in order
        self._bytes = 0

    def append(self, record: TelemetryRecord) -> tuple[Trimmed, ...]:
        if record.sequence in self._rows:
            raise InvalidArgument(f"outbox already holds sequence {record.sequence}")
        data = encode(record)
        size = len(data) + ROW_OVERHEAD_BYTES
        expired = self._drop_expired()
        if self.budget.policy is DropPolicy.REJECT_NEWEST and self._bytes + size > self.budget.max_bytes:
            return _runs(expired, Trimmed(1, record.sequence, record.sequence))
        if self._rows and record.sequence < next(reversed(self._rows)):
            self._rows = dict(sorted({**self._rows, record.sequence: (record.timestamp_ms, data)}.items()))
        else:
            self._rows[record.sequence] = (record.timestamp_ms, data)
        self._bytes += size
        if self.budget.policy is DropPolicy.REJECT_NEWEST:
            return _runs(expired)
        return _runs(expired, self._drop_oldest_over_budget())

    def _drop_where(self, keep: Callable[[int, int], bool]) -> Trimmed | None:
        gone = [s for s, (ts, _) in self._rows.items() if not keep(s, ts)]
        if not gone:
            return None
        for s in gone:
            self._bytes -= len(self._rows.pop(s)[1]) + ROW_OVERHEAD_BYTES
        return Trimmed(len(gone), min(gone), max(gone))

    def _drop_expired(self) -> Trimmed | None:
        cutoff = self._wall_ms() - int(self.budget.max_age_s * 1000)
        # Records are made in time order: the oldest is the first (a clock stepping back only delays
        # an expiry).
        if not self._rows or next(iter(self._rows.values()))[0] >= cutoff:
            return None
        return self._drop_where(lambda s, ts: ts >= cutoff)

    def _drop_oldest_over_budget(self) -> Trimmed | None:
        if self._bytes <= self.budget.max_bytes:
            return None
        excess, total, cut = self._bytes - self.budget.max_bytes * 9 // 10, 0, 0
        for s, (_, data) in self._rows.items():
            total += len(data) + ROW_OVERHEAD_BYTES
            cut = s
            if total >= excess:
                break
        return self._drop_where(lambda s, ts: s > cut)

    def load(self, after_sequence: int, limit: int) -> tuple[TelemetryRecord, ...]:
        out: list[TelemetryRecord] = []
        for s, (_, data) in self._rows.items():
            if len(out) >= limit:
                break
            if s > after_sequence:
                out.append(decode(s, data))
        return tuple(out)

    def delete_through(self, sequence: int) -> int:
        gone = 0
        while self._rows:
            first = next(iter(self._rows))
            if first > sequence:
                break
            self._bytes -= len(self._rows.pop(first)[1]) + ROW_OVERHEAD_BYTES
            gone += 1
        return gone

    def renumber(self, start_at: int) -> None:
        self._rows = {start_at + i: row for i, row in enumerate(self._rows.values())}

    def state(self) -> OutboxState:
        if not self._rows:
            return OutboxState()
        return OutboxState(len(self._rows), next(iter(self._rows)), next(reversed(self._rows)))

    def usage(self) -> OutboxUsage:
        return OutboxUsage(len(self._rows), self._bytes)


def _runs(*trims: Trimmed | None) -> tuple[Trimmed, ...]:
    return tuple(t for t in trims if t is not None)


def perform(outbox: Outbox, action: act.Action) -> list[ev.Event]:
    """Carry out one of the core's outbox actions, at once (an append is stored before the step's
    later actions run: the reply to the request it records, or a batch that carries it); the events
    to give the core once its current step is done (it is not re-entrant)."""
    match action:
        case act.AppendTelemetry(record=record):
            return [
                ev.OutboxTrimmed(t.dropped, t.first_sequence, t.last_sequence) for t in outbox.append(record)
            ]
        case act.DeleteTelemetry(up_to_sequence=up_to):
            outbox.delete_through(up_to)
        case act.LoadTelemetry(after_sequence=after, limit=limit):
            return [ev.TelemetryLoaded(outbox.load(after, limit), requested=limit)]
        case act.RenumberTelemetry(start_at=start):
            outbox.renumber(start)
    return []
