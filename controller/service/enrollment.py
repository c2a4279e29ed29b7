"""Bootstrap tokens, enrollment and device authentication."""

from __future__ import annotations

import logging

from common.errors import InvalidArgument, NotFound, Unauthenticated
from common.types import (
    CreatedToken,
    Device,
    DeviceIdentity,
    HardwareProfile,
    validate_hardware_class,
    validate_name,
)
from controller.service import secrets
from controller.store.base import Store

log = logging.getLogger(__name__)

MAX_TOKEN_TTL_S = 365 * 24 * 3600
MAX_TOKEN_USES = 1_000_000


def create_token(store: Store, *, ttl_s: int, uses: int, description: str, now_ms: int) -> CreatedToken:
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise InvalidArgument(f"token ttl must be between 1 second and 365 days, got {ttl_s}s")
    if not 0 < uses <= MAX_TOKEN_USES:
        raise InvalidArgument(f"token uses must be between 1 and {MAX_TOKEN_USES}, got {uses}")
    token_id = secrets.new_id()
    token = secrets.new_secret(f"efb{token_id}")
    stored = store.create_token(
        token_id,
        secrets.hash_secret(token),
        expires_at_ms=now_ms + ttl_s * 1000,
        uses=uses,
        description=description[:200],
        now_ms=now_ms,
    )
    log.info("token=%s created (uses=%d, expires_at_ms=%d)", token_id, uses, stored.expires_at_ms)
    return CreatedToken(token_id=token_id, token=token, expires_at_ms=stored.expires_at_ms, uses=uses)


def enroll(
    store: Store,
    *,
    token: str,
    hardware: HardwareProfile,
    requested_device_id: str,
    now_ms: int,
    device_credential: str = "",
) -> DeviceIdentity:
    """Spend one use of ``token`` and register a device; nothing changes if anything is wrong.

    Safe to repeat: an agent that asked for ``requested_device_id`` with its own ``device_credential``
    and never saw the answer (a lost reply, a crash) may ask again with the same pair and gets the same
    identity, spending no token use and needing no longer valid token (the first call may have spent its
    last use); a non-empty token is still required. The same id with another credential is AlreadyExists.
    """
    if not token:
        raise Unauthenticated("enrollment needs a bootstrap token", code="token_unknown")
    validate_hardware_class(hardware.hardware_class)
    device_id = (
        validate_name("device id", requested_device_id) if requested_device_id else f"dev-{secrets.new_id()}"
    )
    credential = device_credential or secrets.new_secret("efd")
    _, created = store.enroll_device(
        device_id,
        hardware,
        credential_hash=secrets.hash_secret(credential),
        token_hash=secrets.hash_secret(token),
        now_ms=now_ms,
    )
    if created:
        log.info("device=%s enrolled (hardware=%s)", device_id, hardware.hardware_class)
    else:
        log.info(
            "device=%s enrollment repeated with its own credential: same identity, no token use spent",
            device_id,
        )
    return DeviceIdentity(device_id=device_id, credential=credential)


def authenticate(store: Store, device_id: str, credential: str) -> Device:
    """The device behind a (device id, credential) pair, or Unauthenticated (same error either way,
    so a caller cannot probe which device ids exist)."""
    refused = Unauthenticated("unknown device or wrong credential", code="bad_credential")
    if not device_id or not credential:
        raise Unauthenticated("missing device id or credential", code="bad_credential")
    try:
        stored_hash = store.get_credential_hash(device_id)
    except NotFound:
        raise refused from None
    if not secrets.matches(credential, stored_hash):
        raise refused
    return store.get_device(device_id)
