"""Device profiles: asking agents to time a model's blocks on their own hardware, and taking their reports.

A request is persisted per (device, model) with its own id and sent to the device on hello, when it is
made, and again by the reconcile job until the device's report arrives; every step is safe to repeat
(the agent answers a request id it has finished with the same report, and ignores one it is running).
The controller keeps the latest report of each device per model; the store aggregates them into the
model's ``class_profiles`` (median per hardware class).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Container, Sequence

from common.errors import InvalidArgument, NotFound, PermanentError
from common.types import (
    Model,
    ProfileBlock,
    ProfileReport,
    ProfileRequest,
    ProfileRequestRecord,
    validate_hardware_class,
    validate_name,
)
from controller.store.base import Store

log = logging.getLogger(__name__)

#: Timed calls per block and batch size when the operator does not say (the import's own count).
DEFAULT_PROFILE_RUNS = 10


def request_profile(
    store: Store,
    model_name: str,
    *,
    device_ids: Sequence[str] = (),
    hardware_class: str = "",
    runs: int = 0,
    now_ms: int,
) -> list[ProfileRequestRecord]:
    """Ask the devices ``device_ids``, or every device of ``hardware_class``, to profile the blocks of
    ``model_name``; returns the requests made (one per device, each with a new id). Refused, with
    nothing stored, for an unknown model or device, a class without devices, or a model that has no
    block artifacts (imported without precisions, or before block artifacts were stored)."""
    validate_name("model name", model_name)
    if bool(device_ids) == bool(hardware_class):
        raise InvalidArgument(
            "give either device ids or a hardware class to profile on (not both, not neither)"
        )
    model = store.get_model(model_name)
    _, blocks, batch_sizes = _offer(model)  # refuses a model without block artifacts
    if device_ids:
        for device_id in device_ids:
            validate_name("device id", device_id)
        known = {d.id for d in store.list_devices()}
        unknown = [d for d in device_ids if d not in known]
        if unknown:
            raise NotFound(f"unknown device {', '.join(map(repr, unknown))}")
        targets = list(dict.fromkeys(device_ids))
    else:
        validate_hardware_class(hardware_class)
        devices = store.list_devices()
        targets = [d.id for d in devices if d.hardware.hardware_class == hardware_class]
        if not targets:
            classes = sorted({d.hardware.hardware_class for d in devices})
            raise NotFound(
                f"no device of hardware class {hardware_class!r} is enrolled "
                f"(classes enrolled: {', '.join(classes) or 'none'})"
            )
    records = store.request_profiles(
        model_name,
        [(device_id, f"prof-{secrets.token_hex(8)}") for device_id in targets],
        batch_sizes=batch_sizes,
        runs=runs or DEFAULT_PROFILE_RUNS,
        now_ms=now_ms,
    )
    for r in records:
        log.info(
            "device=%s profile request %s: model=%s, %d blocks, batch sizes %s, %d runs",
            r.device_id,
            r.request_id,
            model_name,
            len(blocks),
            list(r.batch_sizes),
            r.runs,
        )
    return records


def profile_request(
    model: Model, request_id: str, *, batch_sizes: Sequence[int] = (), runs: int = 0
) -> ProfileRequest:
    """The message asking an agent to profile ``model``'s stored blocks (every profiled block at every
    precision that has an artifact), at ``batch_sizes`` (default: the host profile's). PermanentError
    when the model has none to offer."""
    source, blocks, default_batches = _offer(model)
    return ProfileRequest(
        request_id=request_id,
        model_name=model.name,
        source_sha256=source,
        blocks=blocks,
        inputs_sha256=model.profile_inputs_sha256,
        inputs_size_bytes=model.profile_inputs_size_bytes,
        batch_sizes=tuple(batch_sizes) or default_batches,
        runs=runs or DEFAULT_PROFILE_RUNS,
    )


def _offer(model: Model) -> tuple[str, tuple[ProfileBlock, ...], tuple[int, ...]]:
    """(fp32 source sha256, the blocks with artifacts, the host profile's batch sizes) of ``model``."""
    blocks: dict[tuple[int, int, str], ProfileBlock] = {}
    for b in model.block_profiles:
        if b.artifact_sha256:
            blocks.setdefault(
                (b.start_cut, b.end_cut, b.precision),
                ProfileBlock(b.start_cut, b.end_cut, b.precision, b.artifact_sha256, b.artifact_size_bytes),
            )
    fp32 = model.variant("fp32")
    if not blocks or not model.profile_inputs_sha256 or fp32 is None:
        raise PermanentError(
            f"model {model.name!r} has no block artifacts to profile: import it with --eval-data and "
            "--precisions (a model imported before block artifacts were kept needs importing again)",
            code="no_block_artifacts",
        )
    if not any(p == "fp32" for _, _, p in blocks):
        raise PermanentError(
            f"model {model.name!r} has no fp32 block artifacts, which agents need to make the block inputs",
            code="no_block_artifacts",
        )
    batches = tuple(sorted({b.batch_size for b in model.block_profiles}))
    return fp32.sha256, tuple(blocks.values()), batches


def pending_requests(
    store: Store, device_ids: Collection[str] | None, *, among: Container[str] | None = None
) -> list[tuple[str, ProfileRequest]]:
    """(device id, message) for every request of ``device_ids`` (None: every device; ``among``: of
    those, only these) still waiting for its report. A request whose model no longer offers block
    artifacts is skipped (with a warning), never sent half-made."""
    pending = store.list_pending_profile_requests(device_ids)
    if among is not None:
        pending = [r for r in pending if r.device_id in among]
    models: dict[str, Model] = {}
    out: list[tuple[str, ProfileRequest]] = []
    for r in pending:
        try:
            model = models.get(r.model_name) or store.get_model(r.model_name)
            models[r.model_name] = model
            out.append(
                (r.device_id, profile_request(model, r.request_id, batch_sizes=r.batch_sizes, runs=r.runs))
            )
        except PermanentError as exc:
            log.warning("device=%s profile request %s cannot be sent: %s", r.device_id, r.request_id, exc)
    return out


def on_profile_report(
    store: Store, device_id: str, report: ProfileReport, *, now_ms: int
) -> ProfileRequestRecord | None:
    """Store a device's report; None (logged, nothing stored) for a stale one: a report of a superseded
    request, or of one this controller never made, is not an error of the stream that carried it."""
    try:
        request = store.record_profile_report(device_id, report, now_ms=now_ms)
    except NotFound as exc:
        log.warning("device=%s profile report %s refused: %s", device_id, report.request_id, exc)
        return None
    failed = sum(1 for t in report.timings if t.error)
    if report.error:
        log.warning(
            "device=%s profile %s of %s failed: %s",
            device_id,
            report.request_id,
            report.model_name,
            report.error,
        )
    else:
        log.info(
            "device=%s profile %s of %s: %d timings (%d failed)",
            device_id,
            report.request_id,
            report.model_name,
            len(report.timings),
            failed,
        )
    return request
