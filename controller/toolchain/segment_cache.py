"""A content-addressed cache for built segments: an in-memory LRU bounded by entry count and bytes,
over an optional directory that outlives the process.

Keys are sha256 digests (``segment_key``) of what determines a segment's bytes: the source model's
sha256, the cut range, the method and, for static int8, the calibration rows. The same key always
means the same bytes, so entries never need invalidating, only evicting.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from common.errors import InvalidArgument

logger = logging.getLogger(__name__)


class SegmentCache:
    """In-memory LRU of built segments, bounded by entry count and total bytes, over an optional
    directory (``<key>.onnx`` files, written atomically) that outlives the process."""

    def __init__(
        self, max_entries: int = 64, max_bytes: int = 256 << 20, directory: str | Path | None = None
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise InvalidArgument("a segment cache needs room for at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.directory = None if directory is None else Path(directory)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> bytes | None:
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return data
        path = self._path(key)
        if path is not None and path.is_file():
            data = path.read_bytes()
            self._remember(key, data)
            self.hits += 1
            return data
        self.misses += 1
        return None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader (or a crash) never sees half a model under the final name.
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                Path(tmp).replace(path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._remember(key, data)

    def get_or_build(self, key: str, build: Callable[[], bytes]) -> bytes:
        data = self.get(key)
        if data is None:
            data = build()
            self.put(key, data)
        return data

    def _remember(self, key: str, data: bytes) -> None:
        if key in self._entries:
            self._bytes -= len(self._entries.pop(key))
        if len(data) > self.max_bytes:
            return  # larger than the whole budget: served from the directory (or rebuilt) each time
        self._entries[key] = data
        self._bytes += len(data)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.onnx"


def segment_key(source_sha256: str, start: int | None, end: int | None, method: str, extra: str = "") -> str:
    """The content address of a segment: same model bytes, range and method give the same key."""
    text = f"{source_sha256}:{'' if start is None else start}:{'' if end is None else end}:{method}:{extra}"
    return hashlib.sha256(text.encode()).hexdigest()
