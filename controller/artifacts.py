"""The controller's content-addressed artifact store (model files, named by their sha256).

Layout under ``root``::

    tmp/        uploads in progress (deleted on failure, and swept when the store opens)
    sha256/<h>  complete artifacts; written once via fsync + atomic rename, never modified

Because a name is the hash of the content, storing the same model twice is a no-op and readers
never see a partially written file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from common.errors import InvalidArgument, NotFound
from common.limits import ARTIFACT_CHUNK_BYTES

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    if not SHA256_RE.match(value):
        raise InvalidArgument(f"invalid sha256 {value!r}: expected 64 lowercase hex digits")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self._dir = self.root / "sha256"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads interrupted by a crash; one controller process owns this directory.
        for stale in self.tmp_dir.iterdir():
            if stale.is_file():
                stale.unlink(missing_ok=True)

    def put_stream(self, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int]:
        """Store the concatenated ``chunks``; returns (sha256, size).

        The upload is hashed while it is written, so nothing is read twice. Over ``max_bytes`` it is
        refused with InvalidArgument; on any failure (including the iterator raising because the
        client went away) the temporary file is removed.
        """
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidArgument(f"model is larger than the {max_bytes}-byte limit")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            sha = digest.hexdigest()
            final = self._dir / sha
            if final.exists():
                tmp.unlink()  # same content already stored: content addressing makes this a no-op
            else:
                tmp.replace(final)
                _fsync_dir(self._dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("stored artifact %s (%d bytes)", sha[:12], size)
        return sha, size

    def put_file(self, path: Path, *, max_bytes: int) -> tuple[str, int]:
        """Store a copy of the file at ``path``; returns (sha256, size)."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no such file: {path}") from None
        if size > max_bytes:  # refuse before reading; put_stream still enforces it if the file grows
            raise InvalidArgument(f"model is larger than the {max_bytes}-byte limit")
        with path.open("rb") as f:
            return self.put_stream(iter(lambda: f.read(ARTIFACT_CHUNK_BYTES), b""), max_bytes=max_bytes)

    def exists(self, sha256: str) -> bool:
        return (self._dir / check_sha256(sha256)).is_file()

    def path(self, sha256: str) -> Path:
        path = self._dir / check_sha256(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} not found")
        return path

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def read_chunks(
        self, sha256: str, offset: int = 0, chunk_size: int = ARTIFACT_CHUNK_BYTES
    ) -> Iterator[bytes]:
        """Chunks of the artifact from ``offset`` to its end (none when ``offset`` equals the size).

        Arguments are checked now, not on first ``next()``, so a bad request fails before streaming.
        """
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk size must be positive, got {chunk_size}")
        size = self.size(sha256)
        if offset < 0 or offset > size:
            raise InvalidArgument(f"offset {offset} is outside artifact {sha256[:12]} of {size} bytes")
        return self._chunks(self.path(sha256), offset, chunk_size)

    @staticmethod
    def _chunks(path: Path, offset: int, chunk_size: int) -> Iterator[bytes]:
        try:
            f = path.open("rb")
        except FileNotFoundError:  # discarded between the checks and the first read
            raise NotFound(f"artifact {path.name} not found") from None
        with f:
            f.seek(offset)
            while chunk := f.read(chunk_size):
                yield chunk

    def discard(self, sha256: str) -> None:
        (self._dir / check_sha256(sha256)).unlink(missing_ok=True)
