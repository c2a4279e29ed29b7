"""The controller's content-addressed artifact store (model files, named by their sha256).

Layout under ``root``::

    tmp/        uploads in progress (deleted on failure, and swept when the store opens)
    sha256/<h>  complete artifacts; written once via fsync + atomic rename, never modified
    manifests/<h>.json  what artifact <h> is and where it is registered (``controller.manifests``);
                written atomically, removed with the artifact

Because a name is the hash of the content, storing the same model twice is a no-op and readers
never see a partially written file. An upload is hashed while it is written (``Upload``) and then
renamed into place (``adopt``), so a model is written once and never read back to be hashed or copied.
None of this is async: callers on an event loop run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from common.errors import InvalidArgument, NotFound
from common.files import atomic_write, check_sha256, fsync_dir
from common.limits import ARTIFACT_CHUNK_BYTES

logger = logging.getLogger(__name__)


class Upload:
    """A file being written under ``tmp/``, hashed and counted as it goes; one writer at a time.

    ``write`` the chunks, ``finish`` (fsync; returns sha256 and size), then either hand it to
    ``ArtifactStore.adopt`` or ``discard`` it. ``discard`` is safe at any point, also after ``adopt``.
    """

    def __init__(self, path: Path, file: BinaryIO, *, max_bytes: int, what: str = "model") -> None:
        self.path = path
        self._what = what
        self._file = file
        self._max_bytes = max_bytes
        self._digest = hashlib.sha256()
        self.size = 0
        self._result: tuple[str, int] | None = None
        self._settled = False  # adopted into the store or discarded: the temporary file is gone

    def write(self, chunk: bytes) -> None:
        if self._result is not None:
            raise RuntimeError("upload already finished")
        if self.size + len(chunk) > self._max_bytes:
            raise InvalidArgument(f"{self._what} is larger than the {self._max_bytes}-byte limit")
        self._digest.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> tuple[str, int]:
        """Make the bytes durable and close the file; returns (sha256, size). Idempotent."""
        if self._result is None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._result = (self._digest.hexdigest(), self.size)
        return self._result

    def discard(self) -> None:
        """Remove the temporary file (nothing to do once adopted)."""
        self._file.close()
        if not self._settled:
            self.path.unlink(missing_ok=True)
            self._settled = True  # never unlink a later upload that happens to get the same name


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()  # mkstemp names files absolutely; adopt compares parents
        self.tmp_dir = self.root / "tmp"
        self._dir = self.root / "sha256"
        self._manifests = self.root / "manifests"
        for d in (self.tmp_dir, self._dir, self._manifests):
            d.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads interrupted by a crash; one controller process owns this directory.
        for stale in self.tmp_dir.iterdir():
            if stale.is_dir() and not stale.is_symlink():  # a variant build's work dir
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    def open_upload(self, *, max_bytes: int, what: str = "model") -> Upload:
        """A new temporary file to write an artifact into (see ``Upload``)."""
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".tmp")
        try:
            file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return Upload(Path(tmp_name), file, max_bytes=max_bytes, what=what)

    def adopt(self, upload: Upload) -> tuple[str, int]:
        """Move a finished upload into the store under its hash, without copying; returns (sha256, size).

        If the artifact is already stored, the upload is dropped instead (same name, same bytes).
        """
        if upload.path.parent != self.tmp_dir:
            raise ValueError(f"{upload.path} is not an upload of this store")
        if upload._settled:
            raise RuntimeError("upload already adopted or discarded")
        sha, size = upload.finish()
        final = self._dir / sha
        if final.exists():
            upload.path.unlink()  # same content already stored: content addressing makes this a no-op
        else:
            upload.path.replace(final)
            fsync_dir(self._dir)
        upload._settled = True
        logger.info("stored artifact %s (%d bytes)", sha[:12], size)
        return sha, size

    def put_stream(self, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int]:
        """Store the concatenated ``chunks``; returns (sha256, size).

        The upload is hashed while it is written, so nothing is read twice. Over ``max_bytes`` it is
        refused with InvalidArgument; on any failure (including the iterator raising because the
        client went away) the temporary file is removed.
        """
        upload = self.open_upload(max_bytes=max_bytes)
        try:
            for chunk in chunks:
                upload.write(chunk)
            return self.adopt(upload)
        finally:
            upload.discard()

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
        self._manifest_path(sha256).unlink(missing_ok=True)

    def _manifest_path(self, sha256: str) -> Path:
        return self._manifests / f"{check_sha256(sha256)}.json"

    def manifest_bytes(self, sha256: str) -> bytes | None:
        """The manifest of an artifact as stored (None: it has none)."""
        try:
            return self._manifest_path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def read_manifest(self, sha256: str) -> dict[str, Any] | None:
        """The manifest of an artifact (None: it has none, or it is not a JSON object)."""
        data = self.manifest_bytes(sha256)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            logger.warning("manifest of %s is not JSON; it will be rewritten", sha256[:12])
            return None
        return doc if isinstance(doc, dict) else None

    def write_manifest(self, sha256: str, doc: dict[str, Any]) -> None:
        """Replace the manifest of a stored artifact, atomically."""
        self.path(sha256)  # NotFound: no manifest without its artifact
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self._manifest_path(sha256), data)

    def restore_manifest(self, sha256: str, previous: bytes | None) -> None:
        """Put back a manifest as ``manifest_bytes`` returned it (None: remove it)."""
        if previous is None:
            self._manifest_path(sha256).unlink(missing_ok=True)
        else:
            atomic_write(self._manifest_path(sha256), previous)
