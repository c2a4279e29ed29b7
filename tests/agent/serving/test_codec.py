"""Activation codec: round trips, the choice of raw vs compressed, and bounded decoding."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

from agent.serving import codec
from agent.serving.codec import CodecPolicy, break_even_mbps, decode, encode, pays
from common.errors import InvalidArgument

pytestmark = pytest.mark.timeout(30)
MIB = 1024 * 1024


def activation(rows: int = 8, seed: int = 0) -> np.ndarray:
    """Like a transformer hidden state: layer-normed float32, values of a few units."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 32, 384)).astype(np.float32)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int8", "bool"])
def test_every_encoding_round_trips(dtype: str) -> None:
    array = (activation(2) * 10).astype(dtype)
    data = array.tobytes()
    encoding = codec.encoding_for(array.dtype.itemsize)
    assert encoding in codec.ENCODINGS
    packed = codec.compress(data, encoding)
    assert decode(encoding, packed, max_bytes=len(data)) == data
    restored = np.frombuffer(decode(encoding, packed, max_bytes=len(data)), dtype=dtype).reshape(array.shape)
    np.testing.assert_array_equal(restored, array)
    assert decode("raw", data, max_bytes=len(data)) == data


def test_plain_zlib_round_trips_any_length() -> None:
    data = bytes(range(256)) * 41 + b"odd"
    assert decode("zlib", codec.compress(data, "zlib"), max_bytes=len(data)) == data
    with pytest.raises(InvalidArgument, match="multiple of 4"):
        codec.compress(data, "shuffle4-zlib")


def test_encode_round_trips_through_decode() -> None:
    for rows in (1, 64):  # one payload compressed whole, one estimated from a sample
        data = np.round(activation(rows), 1).tobytes()  # compressible: few distinct values
        encoding, payload = encode(data, bandwidth_mbps=1.0, itemsize=4)
        assert encoding == "shuffle4-zlib" and len(payload) < len(data)
        assert decode(encoding, payload, max_bytes=len(data)) == data


def test_the_byte_shuffle_pays_on_float_activations() -> None:
    data = activation(4).tobytes()
    plain = len(codec.compress(data, "zlib"))
    shuffled = len(codec.compress(data, "shuffle4-zlib"))
    assert shuffled < plain < len(data)


# --- the choice --------------------------------------------------------------------------------


def test_raw_without_a_known_bandwidth_or_below_the_size_floor() -> None:
    zeros = bytes(64 * 1024)
    assert encode(zeros, bandwidth_mbps=None) == ("raw", zeros)
    small = bytes(1000)
    assert encode(small, bandwidth_mbps=0.1)[0] == "raw"
    assert encode(small, bandwidth_mbps=0.1, policy=CodecPolicy(min_bytes=100))[0] != "raw"


def test_compressible_data_is_compressed_on_a_slow_link_and_not_on_a_fast_one() -> None:
    data = np.zeros((16, 1024), np.float32).tobytes()
    assert encode(data, bandwidth_mbps=10.0, itemsize=4)[0] == "shuffle4-zlib"
    assert encode(data, bandwidth_mbps=100_000.0, itemsize=4) == ("raw", data)


def test_incompressible_data_goes_raw_even_on_a_slow_link() -> None:
    noise = np.random.default_rng(0).bytes(256 * 1024)
    assert encode(noise, bandwidth_mbps=0.5) == ("raw", noise)


def test_a_link_faster_than_the_compressor_skips_without_compressing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = codec.compress
    monkeypatch.setattr(
        codec, "compress", lambda d, e, level=1: calls.append(len(d)) or real(d, e, level=level)
    )
    monkeypatch.setattr(codec.SPEEDS, "compress_bps", 50e6)  # 400 Mbit/s of input per second
    monkeypatch.setattr(codec.SPEEDS, "decompress_bps", 200e6)
    data = bytes(MIB)
    assert encode(data, bandwidth_mbps=1000.0) == ("raw", data)
    assert calls == []
    encode(data, bandwidth_mbps=10.0)
    assert calls and calls[0] == CodecPolicy().sample_bytes  # a sample first, then the whole
    assert calls[-1] == MIB


def test_pays_weighs_wire_time_saved_against_codec_time() -> None:
    # 1 MB to 0.5 MB saves 4 Mbit: 40 ms at 100 Mbit/s, 4 ms at 1 Gbit/s.
    kwargs = {"compressed_bytes": 500_000.0, "compress_s": 0.010, "decompress_s": 0.002}
    assert pays(1_000_000, bandwidth_mbps=100.0, **kwargs)
    assert not pays(1_000_000, bandwidth_mbps=1000.0, **kwargs)
    assert not pays(1_000_000, bandwidth_mbps=100.0, compressed_bytes=1_000_000, compress_s=0, decompress_s=0)
    assert break_even_mbps(1_000_000, **kwargs) == pytest.approx(4e6 / 0.012 / 1e6)
    assert break_even_mbps(1_000, compressed_bytes=2_000, compress_s=1, decompress_s=1) == 0.0


@pytest.mark.parametrize("bandwidth", [0.0, -5.0, float("nan"), float("inf")])
def test_a_nonsense_bandwidth_is_refused(bandwidth: float) -> None:
    with pytest.raises(InvalidArgument):
        encode(bytes(MIB), bandwidth_mbps=bandwidth)


# --- bounded decoding --------------------------------------------------------------------------


def test_a_zip_bomb_fails_clearly_without_eating_memory() -> None:
    deflater = zlib.compressobj(1)
    chunk = bytes(MIB)
    bomb = b"".join(deflater.compress(chunk) for _ in range(128)) + deflater.flush()  # 128 MiB of zeros
    assert len(bomb) < 2 * MIB
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match="more than the 4194304-byte limit"):
            decode("zlib", bomb, max_bytes=4 * MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (zlib.compress(b"x" * 10_000)[:-6], "truncated"),
        (zlib.compress(b"x" * 10_000) + b"junk", "after its end"),
        (b"\x78\x9c not zlib at all", "corrupt"),
        (zlib.compress(b"x" * 10_000)[:-1] + b"\x00", "corrupt"),  # Adler-32 mismatch
    ],
)
def test_broken_streams_are_invalid_arguments(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode("zlib", payload, max_bytes=MIB)


def test_a_shuffled_payload_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not a multiple of 4"):
        decode("shuffle4-zlib", zlib.compress(b"abcde"), max_bytes=MIB)


def test_raw_over_the_limit_and_unknown_encodings_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="over the 10-byte limit"):
        decode("raw", bytes(11), max_bytes=10)
    for name in ("pickle", "gzip", "shuffle3-zlib", ""):
        with pytest.raises(InvalidArgument, match="unknown tensor encoding"):
            decode(name, b"\x80\x04K\x01.", max_bytes=MIB)
