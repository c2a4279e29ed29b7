"""Re-planning: the applied policies carried out again as the fleet changes.

A device that reports new links or hardware, a device new to the plan, an agent's profile report —
each makes the plan in force stale. The hub tells the ``Replanner`` (``mark``); a scheduled ``tick``
re-plans once things have settled for ``settle_s`` (a burst of reconnects is one re-plan, not a
thousand), and in any case every ``every_s`` so slow drift is caught. The planner's hysteresis
keeps devices where they are unless a move clearly pays, so assignments do not flap.

Each pass: one store read, the (pure, CPU-bound) plan in a worker thread, the segments it needs
built (once each), the changed assignments written on the store thread, and the devices whose
version changed kicked. Passes never overlap
each other or an apply (they share the policy lock).
"""

from __future__ import annotations

import asyncio
import logging

from common.serde import ApplyRequest
from controller.hub import Db, Hub
from controller.service import policies
from controller.service.clock import Clock
from controller.service.segments import SegmentBuilder

log = logging.getLogger(__name__)


async def apply_policies(
    db: Db, hub: Hub, clock: Clock, lock: asyncio.Lock, segments: SegmentBuilder, req: ApplyRequest
) -> policies.Applied:
    """``fleetctl apply``: plan the new policy set against the fleet, build the segments it needs,
    record the apply and the devices' new versions in one write, then push to the changed devices.
    Under the same lock as re-plans, so the two never interleave. Raises ``PolicyErrors``."""
    async with lock:
        snapshot = await db.run(policies.read, db.store)
        prepared = await asyncio.to_thread(
            policies.prepare_apply,
            snapshot,
            req.files,
            applied_by=req.applied_by,
            git_commit=req.git_commit,
            git_dirty=req.git_dirty,
            source=req.source,
            message=req.message,
            now_ms=clock.now_ms(),
        )
        built = await segments.ensure(dict(snapshot.models), policies.segment_keys(prepared.planned))
        assignments = policies.materialize(prepared.planned, built)
        applied = await db.run(policies.commit_apply, db.store, prepared, assignments)
    hub.kick_devices(applied.outcome.changed)
    return applied


class Replanner:
    def __init__(
        self,
        db: Db,
        hub: Hub,
        lock: asyncio.Lock,
        clock: Clock,
        segments: SegmentBuilder,
        *,
        settle_s: float = 2.0,
        every_s: float = 60.0,
    ) -> None:
        self._db = db
        self._segments = segments
        self._hub = hub
        self._lock = lock
        self._clock = clock
        self.settle_s = settle_s
        self.every_s = every_s
        self._dirty_since: float | None = None
        self._last_change = 0.0
        self._last_run = clock.monotonic()
        self.reasons: list[str] = []  # since the last pass, bounded
        self.passes = 0

    def mark(self, reason: str) -> None:
        """Something the plan depends on changed (called on the event loop, by the hub)."""
        now = self._clock.monotonic()
        if self._dirty_since is None:
            self._dirty_since = now
        self._last_change = now
        if len(self.reasons) < 20:
            self.reasons.append(reason)

    def due(self) -> bool:
        now = self._clock.monotonic()
        if self._dirty_since is not None and now - self._last_change >= self.settle_s:
            return True
        return now - self._last_run >= self.every_s

    async def tick(self) -> list[str]:
        """Re-plan if due; the devices that got a new version."""
        if not self.due() or self._lock.locked():
            return []
        return await self.run()

    async def run(self) -> list[str]:
        async with self._lock:
            reasons, self.reasons = self.reasons, []
            self._dirty_since = None
            self._last_run = self._clock.monotonic()
            store = self._db.store
            snapshot = await self._db.run(policies.read, store)
            if snapshot.latest is None:
                return []
            planned = await asyncio.to_thread(policies.replan, snapshot)
            if planned is None:
                return []
            built = await self._segments.ensure(dict(snapshot.models), policies.segment_keys(planned))
            assignments = policies.materialize(planned, built)
            changed = await self._db.run(policies.set_assignments, store, assignments)
            self.passes += 1
        if reasons or changed:
            log.info(
                "re-planned apply %d (%s): %d devices changed",
                snapshot.latest.id,
                "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "") if reasons else "periodic",
                len(changed),
            )
        for device_id in changed:
            await self._hub.kick(device_id)
        return changed
