"""The control stream's logic: what the controller does with each agent message.

Reconciliation is by version, as KubeEdge's SyncController does it: the store keeps each device's
desired and acknowledged version; while they differ the desired assignment is (re)sent, and every
handler is safe to repeat — a duplicated hello, ack or telemetry batch changes nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from common import limits
from common.errors import InvalidArgument
from common.types import (
    Assignment,
    AssignmentAck,
    ControllerMessage,
    Device,
    Heartbeat,
    Hello,
    ProfileRequest,
    TelemetryAck,
    TelemetryBatch,
    Welcome,
)
from controller.service import profiles
from controller.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    heartbeat_interval_ms: int = 5_000
    #: An assignment not acked this long after it was sent is sent again.
    resend_after_s: float = 5.0
    #: A stream silent for this many heartbeat intervals is considered dead and closed.
    liveness_intervals: float = 3.0


def pending_assignment(device: Device) -> Assignment | None:
    """The assignment the device still has to acknowledge, if any."""
    if device.assignment is not None and device.desired_version > device.acked_version:
        return device.assignment
    return None


def on_hello(
    store: Store, device_id: str, hello: Hello, *, now_ms: int, policy: SyncPolicy
) -> tuple[list[ControllerMessage], str]:
    """The replies to a hello, and why the fleet should be planned again ('' if it need not be):
    the device is new to the plan, or reports other hardware or links than the plan assumed."""
    before = store.get_device(device_id)
    if hello.hardware.hardware_class != before.hardware.hardware_class:
        log.warning("device=%s now reports hardware class %s", device_id, hello.hardware.hardware_class)
    device = store.device_connected(
        device_id,
        hardware=hello.hardware,
        reported=hello.reported,
        records_dropped=hello.records_dropped,
        now_ms=now_ms,
        links=hello.links,
        endpoint=hello.endpoint,
    )
    log.info(
        "device=%s hello: acked v%d of desired v%d, telemetry watermark %d (stored %d)",
        device_id,
        device.acked_version,
        device.desired_version,
        hello.telemetry_watermark,
        device.last_sequence,
    )
    replies: list[ControllerMessage] = [
        Welcome(heartbeat_interval_ms=policy.heartbeat_interval_ms, telemetry_watermark=device.last_sequence)
    ]
    pending = pending_assignment(device)
    if pending is not None:
        replies.append(pending)
    # Profile requests still waiting for their report: the device may have restarted and lost them.
    replies.extend(request for _, request in profiles.pending_requests(store, [device_id]))
    return replies, replan_reason(before, device)


def replan_reason(before: Device, after: Device) -> str:
    """Why a hello calls for planning again ('' if it does not)."""
    if before.hardware != after.hardware:
        return f"device {after.id} reports new hardware"
    if before.links != after.links:
        return f"device {after.id} reports new links"
    if before.endpoint != after.endpoint:
        return f"device {after.id} serves segments at a new address"
    if after.assignment is None or after.assignment.plan is None:
        return f"device {after.id} has no plan yet"
    return ""


def on_heartbeat(store: Store, device_id: str, heartbeat: Heartbeat, *, now_ms: int) -> str:
    """Record a heartbeat; why the fleet should be planned again ('' if it need not be)."""
    if heartbeat.links and store.set_links(device_id, heartbeat.links, now_ms=now_ms):
        return f"device {device_id} reports new links"
    store.touch_device(device_id, now_ms=now_ms)
    return ""


#: Above this many connected devices the reconcile pass reads the whole fleet's unacknowledged
#: devices and pending requests in one scan and keeps the connected ones: measured with 100,000
#: connected devices, hundreds of ``IN (...)`` batches cost most of the controller's time.
SCAN_WHOLE_FLEET_ABOVE = 1_000


def due_for(
    store: Store, device_ids: Collection[str]
) -> tuple[list[Device], list[tuple[str, ProfileRequest]]]:
    """What the reconcile pass may have to resend to ``device_ids``, in one store-thread call: the
    devices with an unacknowledged assignment, and every profile request still waiting for its report."""
    if len(device_ids) <= SCAN_WHOLE_FLEET_ABOVE:
        return store.list_unacked(device_ids), profiles.pending_requests(store, device_ids)
    wanted = device_ids if isinstance(device_ids, set | frozenset) else set(device_ids)
    # Connected only: after an apply, the offline part of a large fleet owes acks too, and decoding
    # it every pass would hold up the store thread for nothing.
    unacked = [d for d in store.list_unacked(connected_only=True) if d.id in wanted]
    return unacked, profiles.pending_requests(store, None, among=wanted)


def on_telemetry(
    store: Store, device_id: str, batch: TelemetryBatch, *, now_ms: int
) -> list[ControllerMessage]:
    if len(batch.records) > limits.MAX_TELEMETRY_BATCH:
        raise InvalidArgument(
            f"telemetry batch of {len(batch.records)} records exceeds the limit of {limits.MAX_TELEMETRY_BATCH}"
        )
    if not batch.records:
        return []
    new = store.append_telemetry(device_id, batch.records, now_ms=now_ms)
    top = max(r.sequence for r in batch.records)
    if new < len(batch.records):
        log.debug(
            "device=%s telemetry: %d of %d records were duplicates",
            device_id,
            len(batch.records) - new,
            len(batch.records),
        )
    return [TelemetryAck(up_to_sequence=top)]


def on_assignment_ack(store: Store, device_id: str, ack: AssignmentAck, *, now_ms: int) -> Device:
    device = store.record_ack(device_id, ack, now_ms=now_ms)
    if ack.failure is not None:
        log.error(
            "device=%s failed to apply v%d (%s): %s", device_id, ack.version, ack.failure.value, ack.message
        )
    elif device.converged:
        log.info("device=%s converged at v%d", device_id, device.acked_version)
    return device
