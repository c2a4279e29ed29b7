"""When the re-planner runs: after changes settle, and at least every so often (fake time)."""

from __future__ import annotations

import asyncio

from controller.hub import Db, Hub
from controller.replan import Replanner
from controller.service.sync import SyncPolicy
from controller.store.memory import InMemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now_ms(self) -> int:
        return int(self.t * 1000)

    def monotonic(self) -> float:
        return self.t


def test_a_burst_of_changes_is_one_pass_after_it_settles() -> None:
    async def scenario() -> None:
        clock = Clock()
        db = Db(InMemoryStore())
        try:
            r = Replanner(db, Hub(db, clock, SyncPolicy()), asyncio.Lock(), clock, settle_s=2.0, every_s=60.0)
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


def test_reasons_are_bounded() -> None:
    async def scenario() -> None:
        clock = Clock()
        db = Db(InMemoryStore())
        try:
            r = Replanner(db, Hub(db, clock, SyncPolicy()), asyncio.Lock(), clock)
            for i in range(1000):
                r.mark(f"change {i}")
            assert len(r.reasons) == 20
        finally:
            await db.aclose()

    asyncio.run(scenario())
