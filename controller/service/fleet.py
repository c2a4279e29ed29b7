"""Models and assignments: registering an imported model and setting a device's desired state."""

from __future__ import annotations

import logging

from common.errors import NotFound
from common.types import AssignResult, Model, ModelVariant, validate_name
from controller.store.base import Store

log = logging.getLogger(__name__)


def register_variant(store: Store, name: str, variant: ModelVariant, *, now_ms: int) -> Model:
    validate_name("model name", name)
    validate_name("variant", variant.variant)
    model, created = store.add_model_variant(name, variant, now_ms=now_ms)
    log.info(
        "model=%s variant=%s sha256=%s %s",
        name,
        variant.variant,
        variant.sha256[:12],
        "imported" if created else "unchanged",
    )
    return model


def assign(store: Store, *, device_id: str, model_name: str, variant: str) -> AssignResult:
    """Set the desired model of a device. Repeating the same assignment changes nothing, unless the device
    reported that its current version failed: then it is sent again as a new version (a retry)."""
    store.get_device(device_id)  # NotFound names the device before the model is looked at
    model = store.get_model(model_name)
    chosen = model.variant(variant)
    if chosen is None:
        have = ", ".join(v.variant for v in model.variants) or "none"
        raise NotFound(f"model {model_name!r} has no variant {variant!r} (it has: {have})")
    device, changed = store.set_assignment(
        device_id,
        model_name=model_name,
        variant=variant,
        artifact_sha256=chosen.sha256,
        artifact_size_bytes=chosen.size_bytes,
    )
    if changed:
        log.info("device=%s desired v%d: %s/%s", device_id, device.desired_version, model_name, variant)
    return AssignResult(device=device, changed=changed)
