"""The agent's on-disk, content-addressed cache of model artifacts.

Layout under ``root``::

    partial/<sha256>.part   a download in progress; its size is the offset to resume from
    sha256/<sha256>         a complete artifact whose bytes hashed to its name when it was finalized

A file only appears under ``sha256/`` through an fsync + atomic rename after its hash was checked,
so a crash leaves either a resumable partial or a verified artifact, never a half-written one.

Nothing here logs: results and typed errors go back to the daemon, which reports them with the
device id in every line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from common.errors import NotFound, PermanentError, TransientError
from common.files import SHA256_RE, check_sha256, fsync_dir

_HASH_BLOCK = 1024 * 1024


class ChecksumMismatch(PermanentError):
    """The bytes do not hash (or add up) to what they should; the bad copy has been deleted."""

    code = "checksum_mismatch"

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


def sha256_file(path: Path) -> str:
    """Hash a file in blocks, so multi-gigabyte models never sit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._partial_dir = self.root / "partial"
        self._complete_dir = self.root / "sha256"
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        self._complete_dir.mkdir(parents=True, exist_ok=True)

    def _partial(self, sha256: str) -> Path:
        return self._partial_dir / f"{check_sha256(sha256)}.part"

    def _complete(self, sha256: str) -> Path:
        return self._complete_dir / check_sha256(sha256)

    def path_if_complete(self, sha256: str) -> Path | None:
        """Where the finalized artifact is, or None. Does not re-hash it (see ``verify``)."""
        path = self._complete(sha256)
        return path if path.is_file() else None

    def partial_size(self, sha256: str) -> int:
        """Bytes already downloaded of an interrupted download: the offset to resume from."""
        try:
            return self._partial(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, sha256: str, offset: int, data: bytes) -> int:
        """Append one chunk at ``offset`` and return the new partial size.

        ``offset`` must equal ``partial_size``: anything else means the caller and the disk disagree
        (a lost or repeated chunk), which TransientError reports so the caller resumes from the
        partial size instead of writing a hole or a duplicate.
        """
        path = self._partial(sha256)
        current = self.partial_size(sha256)
        if offset != current:
            raise TransientError(
                f"artifact {sha256[:12]}: chunk at offset {offset} but {current} bytes are on disk; "
                f"resume from {current}"
            )
        # No fsync per chunk: finalize fsyncs once, and re-hashes, so bytes lost in a crash
        # surface as a checksum mismatch and a fresh download rather than silent corruption.
        with path.open("ab") as f:
            f.write(data)
        return current + len(data)

    def finalize(self, sha256: str, expected_size: int) -> Path:
        """Check the finished download and move it into place; returns the artifact's path.

        On a size or hash mismatch the partial is deleted (resuming it could never succeed) and
        ChecksumMismatch is raised. Finalizing an artifact that is already complete returns it.
        """
        partial = self._partial(sha256)
        final = self._complete(sha256)
        if not partial.exists():
            if final.is_file():
                return final
            raise NotFound(f"artifact {sha256[:12]}: no download in progress to finalize")
        size = partial.stat().st_size
        if size != expected_size:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"artifact {sha256}: expected {expected_size} bytes but downloaded {size}; discarded",
                expected=sha256,
                actual=f"{size} bytes",
            )
        actual = sha256_file(partial)
        if actual != sha256:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"artifact checksum mismatch: expected sha256 {sha256}, got {actual}; discarded",
                expected=sha256,
                actual=actual,
            )
        with partial.open("rb") as f:  # fsync works on a read-only fd on POSIX
            os.fsync(f.fileno())
        partial.replace(final)
        fsync_dir(self._complete_dir)
        return final

    def discard_partial(self, sha256: str) -> None:
        self._partial(sha256).unlink(missing_ok=True)

    def verify(self, sha256: str) -> Path:
        """Re-hash a complete artifact (e.g. before loading it after a restart) and return its path.

        NotFound if it is not in the cache; ChecksumMismatch if the file on disk no longer hashes to
        its name, in which case the corrupt file is deleted so the next attempt downloads it again.
        """
        path = self._complete(sha256)
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256[:12]} is not in the cache") from None
        if actual != sha256:
            path.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"artifact on disk is corrupt: expected sha256 {sha256}, got {actual}; deleted",
                expected=sha256,
                actual=actual,
            )
        return path

    def complete_artifacts(self) -> set[str]:
        return {p.name for p in self._complete_dir.iterdir() if SHA256_RE.match(p.name)}

    def retain(self, keep: Iterable[str], *, drop_partials: bool = True) -> list[str]:
        """Delete every complete artifact (and partial download) whose sha256 is not in ``keep``.

        Stale partials go too unless ``drop_partials`` is false: a download nobody wants any more is
        just wasted disk. Files not named like artifacts are left alone. Returns the sha256s of the
        deleted complete artifacts.
        """
        keep_set = {check_sha256(s) for s in keep}
        removed = sorted(self.complete_artifacts() - keep_set)
        for sha in removed:
            (self._complete_dir / sha).unlink(missing_ok=True)
        if drop_partials:
            for part in self._partial_dir.glob("*.part"):
                if SHA256_RE.match(part.stem) and part.stem not in keep_set:
                    part.unlink(missing_ok=True)
        if removed:
            fsync_dir(self._complete_dir)
        return removed
