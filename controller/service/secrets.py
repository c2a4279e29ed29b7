"""Bootstrap tokens and device credentials: random, shown once, stored only as sha256.

Both are 256-bit random values, so a fast hash is enough (there is nothing to brute-force);
comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_id(nbytes: int = 6) -> str:
    return secrets.token_hex(nbytes)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
