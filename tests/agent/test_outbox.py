"""The telemetry outbox contract (agent.outbox), run against every implementation (like Flower's
linkstate tests): order, acknowledgement, the budget and its drop policies, renumbering; and for
SQLite, what survives reopening."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.telemetry import OutboxState
from agent.outbox import (
    ROW_OVERHEAD_BYTES,
    DropPolicy,
    MemoryOutbox,
    Outbox,
    OutboxBudget,
    SqliteOutbox,
    Trimmed,
    encode,
)
from common.errors import InvalidArgument
from common.types import DeviceEvent, InferenceRecord, Outcome, TelemetryRecord

pytestmark = pytest.mark.timeout(30)
SHA = "ab" * 32
T0_MS = 1_700_000_000_000


def rec(seq: int, *, ts: int = T0_MS, ms: float = 1.0) -> TelemetryRecord:
    return TelemetryRecord(seq, ts, InferenceRecord(SHA, ms, Outcome.OK))


SIZE = len(encode(rec(1))) + ROW_OVERHEAD_BYTES  # every rec() costs the same


class Wall:
    def __init__(self) -> None:
        self.now_ms = T0_MS

    def __call__(self) -> int:
        return self.now_ms


class OutboxRules:
    """Subclasses provide ``make(budget, wall)``."""

    def make(self, budget: OutboxBudget, wall: Wall) -> Outbox:
        raise NotImplementedError

    @pytest.fixture
    def wall(self) -> Wall:
        return Wall()

    @pytest.fixture
    def outbox(self, wall: Wall) -> Iterator[Outbox]:
        box = self.make(OutboxBudget(), wall)
        yield box
        box.close()

    def test_records_load_in_order_after_a_sequence_and_within_a_limit(self, outbox: Outbox) -> None:
        assert outbox.state() == OutboxState()
        event = TelemetryRecord(3, T0_MS + 5, DeviceEvent("model_swapped", "v1", assignment_version=1))
        for r in (rec(1), rec(2, ms=2.0), event, rec(4)):
            assert outbox.append(r) == ()
        assert outbox.load(0, 10) == (rec(1), rec(2, ms=2.0), event, rec(4))
        assert outbox.load(1, 2) == (rec(2, ms=2.0), event)
        assert outbox.load(4, 10) == ()
        assert outbox.state() == OutboxState(4, 1, 4)
        assert outbox.usage().records == 4

    def test_acknowledged_records_are_deleted(self, outbox: Outbox) -> None:
        for s in range(1, 6):
            outbox.append(rec(s))
        assert outbox.delete_through(3) == 3
        assert [r.sequence for r in outbox.load(0, 10)] == [4, 5]
        assert outbox.delete_through(3) == 0  # again: nothing more
        assert outbox.delete_through(99) == 2
        assert outbox.state() == OutboxState() and outbox.usage().records == 0

    def test_a_sequence_is_stored_once(self, outbox: Outbox) -> None:
        outbox.append(rec(1))
        with pytest.raises(InvalidArgument, match="sequence 1"):
            outbox.append(rec(1, ms=9.0))
        assert outbox.load(0, 10) == (rec(1),)

    def test_renumbering_keeps_the_order(self, outbox: Outbox) -> None:
        for s in (3, 4, 7):
            outbox.append(rec(s, ms=float(s)))
        outbox.renumber(100)
        assert [(r.sequence, r.body.latency_ms) for r in outbox.load(0, 10)] == [
            (100, 3.0),
            (101, 4.0),
            (102, 7.0),
        ]  # type: ignore[union-attr]
        assert outbox.state() == OutboxState(3, 100, 102)

    def test_over_budget_the_oldest_go_first_counted_in_contiguous_runs(self, wall: Wall) -> None:
        budget = OutboxBudget(max_bytes=64 * 1024)
        box = self.make(budget, wall)
        trims: list[Trimmed] = []
        made = 0
        while len(trims) < 3 and made < 100_000:
            made += 1
            trims += box.append(rec(made))
        assert len(trims) == 3, "the budget never bit"
        assert box.usage().bytes <= budget.max_bytes
        dropped = sum(t.dropped for t in trims)
        kept = box.load(0, 10**6)
        assert len(kept) + dropped == made  # every record is either kept or counted as dropped
        assert kept[0].sequence == trims[-1].last_sequence + 1  # the oldest went
        assert trims[0].first_sequence == 1
        for a, b in itertools.pairwise(trims):
            assert b.first_sequence == a.last_sequence + 1
        box.close()

    def test_reject_newest_keeps_the_history_and_names_what_it_refused(self, wall: Wall) -> None:
        budget = OutboxBudget(max_bytes=64 * 1024, policy=DropPolicy.REJECT_NEWEST)
        box = self.make(budget, wall)
        s = 0
        while True:
            s += 1
            trims = box.append(rec(s))
            if trims:
                break
        assert trims == (Trimmed(1, s, s),)  # the one that did not fit, named
        assert box.append(rec(s + 1)) == (Trimmed(1, s + 1, s + 1),)
        assert box.state() == OutboxState(s - 1, 1, s - 1)  # the history is whole
        assert budget.max_bytes - SIZE - 2 < box.usage().bytes <= budget.max_bytes
        box.close()

    def test_records_older_than_the_age_limit_are_dropped(self, wall: Wall) -> None:
        box = self.make(OutboxBudget(max_age_s=3600.0), wall)
        box.append(rec(1, ts=T0_MS))
        box.append(rec(2, ts=T0_MS + 1000))
        wall.now_ms = T0_MS + 3600 * 1000 + 500  # 1 is past the limit, 2 is not yet
        assert box.append(rec(3, ts=wall.now_ms)) == (Trimmed(1, 1, 1),)
        assert [r.sequence for r in box.load(0, 10)] == [2, 3]
        box.close()

    def test_budgets_that_cannot_work_are_refused(self) -> None:
        with pytest.raises(InvalidArgument, match="64 KiB"):
            OutboxBudget(max_bytes=1000)
        with pytest.raises(InvalidArgument, match="max age"):
            OutboxBudget(max_age_s=0)


class TestMemoryOutbox(OutboxRules):
    def make(self, budget: OutboxBudget, wall: Wall) -> Outbox:
        return MemoryOutbox(budget, wall_ms=wall)


class TestSqliteOutbox(OutboxRules):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "outbox.sqlite3"

    def make(self, budget: OutboxBudget, wall: Wall) -> Outbox:
        return SqliteOutbox(self.path, budget, wall_ms=wall)

    def test_everything_survives_reopening(self, wall: Wall) -> None:
        box = self.make(OutboxBudget(), wall)
        for s in range(1, 11):
            box.append(rec(s))
        box.delete_through(4)
        usage = box.usage()
        box.close()
        again = self.make(OutboxBudget(), wall)
        assert again.state() == OutboxState(6, 5, 10)
        assert again.usage().records == usage.records  # rebuilt from the file
        assert [r.sequence for r in again.load(0, 100)] == list(range(5, 11))
        again.close()

    def test_an_unreadable_row_is_skipped_and_the_rest_load(self, wall: Wall) -> None:
        box = self.make(OutboxBudget(), wall)
        for s in (1, 2, 3):
            box.append(rec(s))
        box.close()
        with sqlite3.connect(self.path) as db:
            db.execute("UPDATE outbox SET record = x'ffffff' WHERE sequence = 2")
        again = self.make(OutboxBudget(), wall)
        assert [r.sequence for r in again.load(0, 10)] == [1, 3]
        again.close()

    def test_bad_sync_mode_is_refused(self, wall: Wall) -> None:
        with pytest.raises(InvalidArgument, match="sync"):
            SqliteOutbox(self.path, wall_ms=wall, synchronous="sometimes")
