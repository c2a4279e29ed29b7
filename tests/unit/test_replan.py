"""When the re-planner runs: after changes settle, and at least every so often (fake time)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.artifacts import ArtifactStore
from controller.hub import Db, Hub
from controller.replan import Replanner
from controller.service.segments import SegmentBuilder
from controller.service.sync import SyncPolicy
from controller.store.memory import InMemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now_ms(self) -> int:
        return int(self.t * 1000)

    def monotonic(self) -> float:
        return self.t


def builder(db: Db, clock: Clock, root: Path) -> SegmentBuilder:
    return SegmentBuilder(db, ArtifactStore(root), clock)


def test_a_burst_of_changes_is_one_pass_after_it_settles(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        db = Db(InMemoryStore())
        try:
            r = Replanner(
                db,
                Hub(db, clock, SyncPolicy()),
                asyncio.Lock(),
                clock,
                builder(db, clock, tmp_path),
                settle_s=2.0,
                every_s=60.0,
            )
            assert not r.due()
            r.mark("device a reports new links")
            clock.t += 1.5
            r.mark("device b reports new links")  # still changing: wait on
            clock.t += 1.5
            assert not r.due()
            clock.t += 0.6
            assert r.due()
            assert await r.tick() == []  # nothing applied yet: a pass that changes nothing
            assert r.reasons == [] and not r.due()
            clock.t += 59.0
            assert not r.due()
            clock.t += 1.0
            assert r.due()  # the periodic pass
        finally:
            await db.aclose()

    asyncio.run(scenario())


def test_reasons_are_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        db = Db(InMemoryStore())
        try:
            r = Replanner(
                db, Hub(db, clock, SyncPolicy()), asyncio.Lock(), clock, builder(db, clock, tmp_path)
            )
            for i in range(1000):
                r.mark(f"change {i}")
            assert len(r.reasons) == 20
        finally:
            await db.aclose()

    asyncio.run(scenario())
