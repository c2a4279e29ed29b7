"""The policy RPCs of AdminService (plan, diff, apply, history), mixed into ``AdminApi``.

Thin: decode, then ``controller.service.policies`` — one store read, the pure plan in a worker
thread (it is CPU work that must hold up neither the event loop nor the store thread every device's
heartbeat goes through), the artifacts of the segments the plan needs (built once, in worker threads:
``controller.service.segments``), at most one store write — then encode. Applies and re-plans take
the same lock, so they never interleave.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from common import serde
from common.errors import InvalidArgument
from controller.api.errors import Context, unary
from controller.hub import Db, Hub
from controller.planner import report
from controller.policy import PolicyErrors
from controller.replan import apply_policies
from controller.service import policies
from controller.service.clock import Clock
from controller.service.segments import SegmentBuilder

log = logging.getLogger(__name__)

#: Policy errors listed in one reply (the rest counted): a gRPC status message must stay small.
MAX_LISTED_ERRORS = 40


class PolicyRpcs:
    _db: Db
    _hub: Hub
    _clock: Clock
    _policy_lock: asyncio.Lock
    _segments: SegmentBuilder

    @unary
    async def PlanPolicies(self, request: Any, context: Context) -> Any:
        files, explain, devices = serde.plan_policies_request_from_pb(request)
        snapshot = await self._db.run(policies.read, self._db.store)
        planned = await _detect(policies.make_plan, snapshot, policies.load(files), explain=explain)
        doc = report.plan_to_doc(planned.plan, devices=devices or bool(explain))
        doc["skipped"] = [{"device": d, "reason": why} for d, why in planned.skipped]
        return serde.plan_policies_response_to_pb(doc)

    @unary
    async def DiffPolicies(self, request: Any, context: Context) -> Any:
        files, _, _ = serde.plan_policies_request_from_pb(request)
        snapshot = await self._db.run(policies.read, self._db.store)
        policy_diff, changes, summary = await _detect(policies.diff, snapshot, policies.load(files))
        return serde.diff_policies_response_to_pb(policy_diff, changes, summary)

    @unary
    async def ApplyPolicies(self, request: Any, context: Context) -> Any:
        req = serde.apply_policies_request_from_pb(request)
        try:
            applied = await apply_policies(
                self._db, self._hub, self._clock, self._policy_lock, self._segments, req
            )
        except PolicyErrors as exc:
            raise _short(exc) from exc
        return serde.apply_policies_response_to_pb(
            applied.outcome.record, changed=applied.outcome.recorded, changes=applied.changes
        )

    @unary
    async def ListPolicyApplies(self, request: Any, context: Context) -> Any:
        limit = serde.list_policy_applies_request_from_pb(request)
        applies = await self._db.run(self._db.store.list_policy_applies, limit=limit)
        return serde.list_policy_applies_response_to_pb(applies)


async def _detect(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a pure detect step in a worker thread; policy errors come back short enough to send."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except PolicyErrors as exc:
        raise _short(exc) from exc


def _short(exc: PolicyErrors) -> InvalidArgument:
    errors = exc.errors
    listed = "\n".join(str(e) for e in errors[:MAX_LISTED_ERRORS])
    more = f"\n... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
    n = len(errors)
    return InvalidArgument(
        f"{n} error{'s' if n != 1 else ''} in policy files:\n{listed}{more}", code=exc.code
    )
