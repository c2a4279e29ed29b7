"""Durable file helpers shared by the controller's artifact store and the agent's cache and state."""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.errors import InvalidArgument

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    if not SHA256_RE.fullmatch(value):
        raise InvalidArgument(f"invalid sha256 {value!r}: expected 64 lowercase hex digits")
    return value


def fsync_dir(path: Path) -> None:
    """Make a rename/unlink in ``path`` durable (the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: readers (and a crash) see the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]  # a write may be short (signals, some filesystems)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself must survive a power cut
