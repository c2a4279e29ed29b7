"""State-transition rules of ``Store``, as pure functions shared by every implementation.

Implementations load a row, apply one of these, and write the result back inside one transaction,
so the rules in ``base.Store``'s docstrings are decided in exactly one place.
"""

from __future__ import annotations

import hmac
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime

from common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from common.types import (
    Assignment,
    AssignmentAck,
    AssignmentPlan,
    BlockProfile,
    BootstrapToken,
    CallOverhead,
    ClassBlockProfile,
    ClassCallOverhead,
    Device,
    DeviceProfileReport,
    HardwareProfile,
    LinkMeasurement,
    ProfileReport,
    ProfileRequestRecord,
    ReportedState,
    ServedSegment,
)
from controller.store.base import TOKEN_EXHAUSTED, TOKEN_EXPIRED, TOKEN_UNKNOWN


def format_ms(ms: int) -> str:
    """UTC ISO-8601 for messages, e.g. ``2026-11-23T10:00:00Z``."""
    seconds, millis = divmod(ms, 1000)
    try:
        text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since the Unix epoch"
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def check_token(token: BootstrapToken | None, *, now_ms: int) -> BootstrapToken:
    """Return the token if it can be spent now, else raise Unauthenticated saying why."""
    if token is None:
        # Never echo the presented secret or its hash.
        raise Unauthenticated("bootstrap token not recognised", code=TOKEN_UNKNOWN)
    if now_ms >= token.expires_at_ms:
        raise Unauthenticated(
            f"bootstrap token {token.token_id!r} expired at {format_ms(token.expires_at_ms)}",
            code=TOKEN_EXPIRED,
        )
    if token.uses_left <= 0:
        raise Unauthenticated(
            f"bootstrap token {token.token_id!r} has no uses left (all {token.uses_total} used)",
            code=TOKEN_EXHAUSTED,
        )
    return token


def is_repeat_enrollment(stored_credential_hash: str | None, credential_hash: str) -> bool:
    """True when the device is already enrolled with the presented credential (a retried enrollment)."""
    if not stored_credential_hash or not credential_hash:
        return False
    return hmac.compare_digest(stored_credential_hash, credential_hash)


def new_device(device_id: str, hardware: HardwareProfile, *, now_ms: int) -> Device:
    # Enrolling is contact with the device, so it counts as being seen.
    return Device(id=device_id, hardware=hardware, enrolled_at_ms=now_ms, last_seen_ms=now_ms)


def apply_hello(
    device: Device,
    *,
    hardware: HardwareProfile,
    reported: ReportedState,
    records_dropped: int,
    now_ms: int,
    links: tuple[LinkMeasurement, ...] | None = None,
    endpoint: str | None = None,
) -> Device:
    # A hello is the device's own account of what it runs, so it may lower acked_version (a wiped device
    # must be sent its assignment again); it may not claim a version that was never desired.
    acked = (
        reported.acked_version if reported.acked_version <= device.desired_version else device.acked_version
    )
    return replace(
        device,
        connected=True,
        last_seen_ms=now_ms,
        hardware=hardware,
        reported=reported,
        acked_version=acked,
        records_dropped=max(device.records_dropped, records_dropped),
        links=device.links if links is None else tuple(sorted(links, key=lambda m: m.pool)),
        endpoint=device.endpoint if endpoint is None else endpoint,
    )


def apply_assignment(
    device: Device,
    *,
    model_name: str,
    variant: str,
    artifact_sha256: str,
    artifact_size_bytes: int,
    plan: AssignmentPlan | None = None,
    serve: tuple[ServedSegment, ...] = (),
    retry_failed: bool = True,
) -> tuple[Device, bool]:
    current = device.assignment
    current_target = (
        (current.model_name, current.variant, current.artifact_sha256, placement(current.plan), current.serve)
        if current
        else ("", "", "", placement(None), ())
    )
    # An empty target on a never-assigned device is not a change: both mean "run nothing". The same target
    # again is a no-op unless the device said the current version failed and the caller retries failures
    # (an operator assigning by hand): then it is a new version. Policies never retry on their own: the
    # same files applied again, or a re-plan every minute, must not resend a version that fails.
    target = (model_name, variant, artifact_sha256, placement(plan), serve)
    if current_target == target and not (retry_failed and current_version_failed(device)):
        return device, False
    version = device.desired_version + 1
    assignment = Assignment(
        version=version,
        model_name=model_name,
        variant=variant,
        artifact_sha256=artifact_sha256,
        artifact_size_bytes=artifact_size_bytes,
        plan=plan,
        serve=serve,
    )
    return replace(device, desired_version=version, assignment=assignment), True


def placement(plan: AssignmentPlan | None) -> tuple[object, ...]:
    """What a plan changes on the devices: where each segment runs at which precision, and the
    fallback. Its predictions are not part of it: a re-plan that only predicts a slightly different
    latency must not send the device a new version."""
    if plan is None:
        return ()
    unpredicted = tuple(
        replace(
            s,
            predicted_compute_ms=0.0,
            predicted_queue_ms=0.0,
            predicted_transfer_ms=0.0,
            profiled_compute_ms=0.0,
        )
        for s in plan.segments
    )
    return (
        plan.deployment,
        plan.pattern,
        unpredicted,
        plan.edge_pool,
        plan.edge_node,
        plan.cloud_pool,
        plan.fallback_variant,
        plan.slo_ms,
        plan.percentile,
        plan.priority,
    )


def current_version_failed(device: Device) -> bool:
    return device.last_failure is not None and device.failed_version == device.desired_version > 0


def is_unacked(device: Device) -> bool:
    return device.desired_version > device.acked_version


def apply_ack(device: Device, ack: AssignmentAck, *, now_ms: int) -> Device:
    if ack.version > device.desired_version:
        return device
    # Older than what is already acknowledged: it must not overwrite newer news (out-of-order delivery).
    stale = ack.version < device.acked_version
    updated = replace(device, acked_version=max(device.acked_version, ack.version), last_seen_ms=now_ms)
    if not stale:
        updated = replace(updated, reported=ack.reported)
    if ack.failure is not None:
        updated = replace(updated, failed_version=max(device.failed_version, ack.version))
        if not stale:
            updated = replace(updated, last_failure=ack.failure, last_failure_message=ack.message)
    elif ack.version >= device.failed_version:
        updated = replace(updated, last_failure=None, last_failure_message="")
    return updated


def device_not_found(device_id: str) -> NotFound:
    return NotFound(f"device {device_id!r} not found")


def check_limit(limit: int) -> None:
    if limit < 0:
        # SQLite reads a negative LIMIT as "no limit", which is not what a caller would mean.
        raise InvalidArgument(f"limit must not be negative, got {limit}")


def variant_conflict(name: str, variant: str, *, stored_sha256: str, new_sha256: str) -> AlreadyExists:
    return AlreadyExists(
        f"model {name!r} variant {variant!r} already exists with sha256 {stored_sha256}; "
        f"refusing to replace it with sha256 {new_sha256}"
    )


def check_profile_report(
    device_id: str, report: ProfileReport, request: ProfileRequestRecord | None
) -> ProfileRequestRecord:
    """The request ``report`` answers, else NotFound: a report is stored only for the device's current
    request for that model (a superseded or unknown request id is stale). A repeat of the report of a
    completed request is accepted: the agent re-sends it whenever the request reaches it again."""
    if request is None or request.request_id != report.request_id:
        current = f"its current request is {request.request_id!r}" if request else "it has no request"
        raise NotFound(
            f"device {device_id!r} has no profile request {report.request_id!r} for model "
            f"{report.model_name!r} ({current}); the report is stale"
        )
    return request


def class_profiles(
    reports: Iterable[DeviceProfileReport], blocks: Iterable[BlockProfile]
) -> tuple[ClassBlockProfile, ...]:
    """Per hardware class, per (block, precision, batch) of the model's profiled ``blocks``: the median
    latency over the devices of that class whose latest report timed it. A cell no device of the class
    could time is kept with latency 0, devices 0 and the first device's error (by device id)."""
    wanted = {(b.start_cut, b.end_cut, b.precision, b.batch_size) for b in blocks}
    times: dict[tuple[str, int, int, str, int], list[float]] = defaultdict(list)
    errors: dict[tuple[str, int, int, str, int], list[str]] = defaultdict(list)
    for r in sorted(reports, key=lambda r: r.device_id):
        for t in r.report.timings:
            cell = (t.start_cut, t.end_cut, t.precision, t.batch_size)
            if cell not in wanted:
                continue  # a block of an earlier build's cut points
            key = (r.hardware_class, *cell)
            if t.error:
                errors[key].append(f"{r.device_id}: {t.error}")
            else:
                times[key].append(t.latency_ms)
    keys = sorted(set(times) | set(errors), key=lambda k: (k[0], k[1], k[2] == 0, k[2], k[3], k[4]))
    out: list[ClassBlockProfile] = []
    for key in keys:
        values, failed = times.get(key, []), errors.get(key, [])
        out.append(
            ClassBlockProfile(
                hardware_class=key[0],
                start_cut=key[1],
                end_cut=key[2],
                precision=key[3],
                batch_size=key[4],
                latency_ms=statistics.median(values) if values else 0.0,
                devices=len(values),
                error="" if values else f"failed on {len(failed)} device(s): {failed[0]}",
            )
        )
    return tuple(out)


def class_call_overhead(reports: Iterable[DeviceProfileReport]) -> tuple[ClassCallOverhead, ...]:
    """Per hardware class and batch size: the median call overhead over the devices of that class
    whose latest report measured it, and the median dispatch cost over those that measured one."""
    measured: dict[tuple[str, int], list[CallOverhead]] = defaultdict(list)
    for r in reports:
        for c in r.report.call_overhead:
            measured[(r.hardware_class, c.batch_size)].append(c)
    return tuple(
        ClassCallOverhead(
            hardware_class,
            batch,
            statistics.median(c.latency_ms for c in items),
            len(items),
            _median_measured(c.dispatch_ms for c in items),
        )
        for (hardware_class, batch), items in sorted(measured.items())
    )


def _median_measured(values: Iterable[float]) -> float:
    """The median of the values that were measured (> 0: agents that predate the measurement, or
    whose measurement failed, report 0), 0 when none was."""
    measured = [v for v in values if v > 0]
    return statistics.median(measured) if measured else 0.0
