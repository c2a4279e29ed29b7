"""Activations on the wire: raw bytes by default, losslessly compressed only when that pays for the link.

Tensors travel as little-endian C-order bytes (``common.tensors``); this module only decides whether
those bytes go as they are (``"raw"``) or through zlib at a fast level, and undoes that on arrival.
Nothing is ever pickled: the encodings are plain byte transforms, named in the message.

**Why a byte shuffle.** Float activations barely compress as they are (a MiniLM hidden state: about
7% smaller), because every value's four bytes interleave a compressible exponent with a noisy
mantissa. Grouping byte 0 of every value, then byte 1, and so on (the "shuffle" filter of Blosc and
HDF5) puts the exponents side by side: about twice the saving, and zlib runs faster on it too. So
data with an ``itemsize`` of 2, 4 or 8 goes as ``shuffle{N}-zlib``; other data as ``zlib``.

**When it pays.** Compression is chosen only when the wire time it saves, ``(raw - compressed) bytes
/ bandwidth``, is more than the time to compress here and decompress there (taken as equal speeds on
both ends). Cheap checks first: below ``min_bytes`` or without a known bandwidth, raw. A link faster
than this machine's compressor can never pay (even a perfect ratio saves less wire time than the
compression takes), so such links skip straight to raw, using the speed measured on earlier calls.
Otherwise a slice of ``sample_bytes`` is compressed to estimate the ratio and speed for the whole.

**Decoding is bounded.** ``decode`` never produces more than ``max_bytes``: a stream that would (a
"zip bomb") fails with InvalidArgument after at most ``max_bytes + 1`` bytes of output, as do
truncated or corrupt streams and trailing garbage; the zlib container's Adler-32 checks the content.
"""

from __future__ import annotations

import math
import re
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np

from common.errors import InvalidArgument

RAW = "raw"
ZLIB = "zlib"
#: Item sizes the byte shuffle is used for.
SHUFFLE_ITEMSIZES = (2, 4, 8)
ENCODINGS = (RAW, ZLIB, *(f"shuffle{n}-zlib" for n in SHUFFLE_ITEMSIZES))
_SHUFFLED = re.compile(r"^shuffle([248])-zlib$")


@dataclass(frozen=True, slots=True)
class CodecPolicy:
    """``min_bytes``: smaller payloads always go raw (a few KiB cost less to send than to think about).
    ``level``: zlib's level (1: fastest). ``sample_bytes``: how much of a large payload is compressed
    to estimate the whole. ``max_ratio``: compressed/raw above this is not worth the receiver's
    trouble whatever the link."""

    min_bytes: int = 4096
    level: int = 1
    sample_bytes: int = 64 * 1024
    max_ratio: float = 0.95

    def __post_init__(self) -> None:
        if self.min_bytes < 0 or self.sample_bytes < 1 or not 0 <= self.level <= 9:
            raise InvalidArgument("min_bytes must be >= 0, sample_bytes >= 1 and level within 0..9")
        if not 0.0 < self.max_ratio <= 1.0:
            raise InvalidArgument(f"max_ratio must be within (0, 1], got {self.max_ratio}")


DEFAULT_POLICY = CodecPolicy()


class _Speeds:
    """This machine's compress and decompress throughput (bytes/s), smoothed over calls (shared by
    threads: encodes run wherever their caller does). Seeded optimistically, so a fresh process
    probes rather than wrongly ruling compression out; the first measurement replaces the seed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.compress_bps = 200e6
        self.decompress_bps = 600e6
        self.compress_measured = False
        self.decompress_measured = False

    def observe_compress(self, nbytes: int, seconds: float) -> None:
        if nbytes >= 1024 and seconds > 0:  # smaller is too quick to time meaningfully
            with self._lock:
                self.compress_bps = _fold(self.compress_bps, self.compress_measured, nbytes / seconds)
                self.compress_measured = True

    def observe_decompress(self, nbytes: int, seconds: float) -> None:
        if nbytes >= 1024 and seconds > 0:
            with self._lock:
                self.decompress_bps = _fold(self.decompress_bps, self.decompress_measured, nbytes / seconds)
                self.decompress_measured = True


def _fold(current: float, measured: bool, speed: float) -> float:
    return current + 0.2 * (speed - current) if measured else speed


SPEEDS = _Speeds()


def pays(
    nbytes: int, *, compressed_bytes: float, compress_s: float, decompress_s: float, bandwidth_mbps: float
) -> bool:
    """Whether sending ``compressed_bytes`` instead of ``nbytes`` over ``bandwidth_mbps`` saves more
    wire time than compressing and decompressing cost."""
    if bandwidth_mbps <= 0 or compressed_bytes >= nbytes:
        return False
    saved_s = (nbytes - compressed_bytes) * 8.0 / (bandwidth_mbps * 1e6)
    return saved_s > compress_s + decompress_s


def break_even_mbps(nbytes: int, *, compressed_bytes: float, compress_s: float, decompress_s: float) -> float:
    """The link bandwidth below which compression pays (0 when it never does)."""
    cost = compress_s + decompress_s
    if compressed_bytes >= nbytes:
        return 0.0
    if cost <= 0:
        return math.inf
    return (nbytes - compressed_bytes) * 8.0 / cost / 1e6


def encoding_for(itemsize: int) -> str:
    """The compressed encoding used for data of ``itemsize`` bytes per value."""
    return f"shuffle{itemsize}-zlib" if itemsize in SHUFFLE_ITEMSIZES else ZLIB


def compress(data: bytes, encoding: str, *, level: int = DEFAULT_POLICY.level) -> bytes:
    """``data`` in ``encoding`` (not ``raw``), unconditionally."""
    n = _shuffle_itemsize(encoding)
    if n and len(data) % n:
        raise InvalidArgument(f"{encoding} needs a multiple of {n} bytes, got {len(data)}")
    payload = _shuffle(data, n) if n else data
    return zlib.compress(payload, level)


def encode(
    data: bytes, *, bandwidth_mbps: float | None, itemsize: int = 1, policy: CodecPolicy = DEFAULT_POLICY
) -> tuple[str, bytes]:
    """(encoding, bytes) for sending ``data`` over a link of ``bandwidth_mbps`` (None: unknown, raw).

    ``itemsize`` is the tensor's bytes per value (e.g. 4 for float32), for the byte shuffle."""
    n = len(data)
    if bandwidth_mbps is None or n < max(policy.min_bytes, 1):
        return RAW, data
    if not math.isfinite(bandwidth_mbps) or bandwidth_mbps <= 0:
        raise InvalidArgument(f"bandwidth must be a finite number of Mbps > 0, got {bandwidth_mbps}")
    encoding = encoding_for(itemsize) if n % max(itemsize, 1) == 0 else ZLIB
    # Even compressing to nothing cannot beat a link faster than the compressor.
    if not pays(
        n,
        compressed_bytes=0.0,
        compress_s=n / SPEEDS.compress_bps,
        decompress_s=n / SPEEDS.decompress_bps,
        bandwidth_mbps=bandwidth_mbps,
    ):
        return RAW, data
    step = _shuffle_itemsize(encoding) or 1
    compressed: bytes | None = None
    if n <= 2 * policy.sample_bytes:
        compressed, compress_s = _timed_compress(data, encoding, policy.level)
        probe = compressed
        estimate = float(len(compressed))
    else:
        size = policy.sample_bytes - policy.sample_bytes % step
        start = (n // 2) - (n // 2) % step  # from the middle: headers and padding sit at the edges
        start = min(start, n - size)
        probe, sample_s = _timed_compress(data[start : start + size], encoding, policy.level)
        estimate = len(probe) * n / size
        compress_s = sample_s * n / size
    if not SPEEDS.decompress_measured:
        # Once per process: the sender never decodes, but the receiver's cost is half the question.
        _timed_decompress(probe)
    if estimate > policy.max_ratio * n or not pays(
        n,
        compressed_bytes=estimate,
        compress_s=compress_s,
        decompress_s=n / SPEEDS.decompress_bps,
        bandwidth_mbps=bandwidth_mbps,
    ):
        return RAW, data
    if compressed is None:
        compressed, _ = _timed_compress(data, encoding, policy.level)
        if len(compressed) > policy.max_ratio * n:  # the sample flattered the whole
            return RAW, data
    return encoding, compressed


def decode(encoding: str, data: bytes, *, max_bytes: int) -> bytes:
    """The raw bytes of ``data`` sent in ``encoding``; InvalidArgument for an unknown encoding, a
    corrupt or truncated stream, or more than ``max_bytes`` of output (checked while decompressing)."""
    if encoding == RAW:
        if len(data) > max_bytes:
            raise InvalidArgument(f"raw payload of {len(data)} bytes is over the {max_bytes}-byte limit")
        return bytes(data)
    n = _shuffle_itemsize(encoding)
    if encoding != ZLIB and not n:
        raise InvalidArgument(f"unknown tensor encoding {encoding!r}: known are {', '.join(ENCODINGS)}")
    inflater = zlib.decompressobj()
    started = time.perf_counter()
    try:
        # max_length bounds what is allocated: a bomb stops one byte past the limit.
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"{encoding} payload is corrupt: {exc}") from exc
    if len(out) > max_bytes:
        raise InvalidArgument(f"{encoding} payload decompresses to more than the {max_bytes}-byte limit")
    if not inflater.eof:
        raise InvalidArgument(f"{encoding} payload is truncated (the stream does not end)")
    if inflater.unused_data:
        raise InvalidArgument(f"{encoding} payload has {len(inflater.unused_data)} bytes after its end")
    SPEEDS.observe_decompress(len(out), time.perf_counter() - started)
    if n:
        if len(out) % n:
            raise InvalidArgument(
                f"{encoding} payload decompresses to {len(out)} bytes, not a multiple of {n}"
            )
        return _unshuffle(out, n)
    return out


def _timed_compress(data: bytes, encoding: str, level: int) -> tuple[bytes, float]:
    started = time.perf_counter()
    out = compress(data, encoding, level=level)
    seconds = time.perf_counter() - started
    SPEEDS.observe_compress(len(data), seconds)
    return out, seconds


def _timed_decompress(data: bytes) -> None:
    started = time.perf_counter()
    out = zlib.decompress(data)
    SPEEDS.observe_decompress(len(out), time.perf_counter() - started)


def _shuffle_itemsize(encoding: str) -> int:
    match = _SHUFFLED.match(encoding)
    return int(match.group(1)) if match else 0


def _shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte k of every value together, for k = 0 .. itemsize-1."""
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    return np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()
