from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.artifact_cache import ArtifactCache, ChecksumMismatch
from common.errors import InvalidArgument, NotFound, PermanentError, TransientError

DATA = bytes(range(256)) * 40  # 10 240 bytes
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache")


def _download(cache: ArtifactCache, data: bytes, sha: str, chunk: int = 4096) -> None:
    for offset in range(cache.partial_size(sha), len(data), chunk):
        cache.append(sha, offset, data[offset : offset + chunk])


def test_download_and_finalize(cache: ArtifactCache) -> None:
    assert cache.path_if_complete(SHA) is None
    _download(cache, DATA, SHA)
    assert cache.partial_size(SHA) == len(DATA)
    path = cache.finalize(SHA, len(DATA))
    assert path == cache.root / "sha256" / SHA
    assert path.read_bytes() == DATA
    assert cache.path_if_complete(SHA) == path
    assert cache.partial_size(SHA) == 0  # the partial was moved, not copied
    assert cache.finalize(SHA, len(DATA)) == path  # idempotent
    assert cache.verify(SHA) == path


def test_resume_after_restart(tmp_path: Path) -> None:
    first = ArtifactCache(tmp_path)
    first.append(SHA, 0, DATA[:3000])
    first.append(SHA, 3000, DATA[3000:5000])
    # A new process (new cache object) resumes exactly where the disk says.
    second = ArtifactCache(tmp_path)
    assert second.partial_size(SHA) == 5000
    assert second.append(SHA, 5000, DATA[5000:]) == len(DATA)
    assert second.finalize(SHA, len(DATA)).read_bytes() == DATA


@pytest.mark.parametrize("offset", [0, 999, 1001])
def test_wrong_offset_refused_and_nothing_written(cache: ArtifactCache, offset: int) -> None:
    cache.append(SHA, 0, DATA[:1000])
    with pytest.raises(TransientError, match="1000"):
        cache.append(SHA, offset, DATA[offset : offset + 10])
    assert cache.partial_size(SHA) == 1000


def test_checksum_mismatch_deletes_partial(cache: ArtifactCache) -> None:
    corrupted = bytearray(DATA)
    corrupted[5000] ^= 0xFF
    _download(cache, bytes(corrupted), SHA)
    with pytest.raises(ChecksumMismatch) as err:
        cache.finalize(SHA, len(DATA))
    actual = hashlib.sha256(bytes(corrupted)).hexdigest()
    assert isinstance(err.value, PermanentError)
    assert err.value.code == "checksum_mismatch"
    assert (err.value.expected, err.value.actual) == (SHA, actual)
    assert SHA in str(err.value) and actual in str(err.value)
    assert cache.partial_size(SHA) == 0
    assert cache.path_if_complete(SHA) is None
    # A fresh download from offset 0 now works.
    _download(cache, DATA, SHA)
    assert cache.finalize(SHA, len(DATA)).read_bytes() == DATA


def test_wrong_size_deletes_partial(cache: ArtifactCache) -> None:
    _download(cache, DATA[:-1], SHA)
    with pytest.raises(ChecksumMismatch, match=str(len(DATA))):
        cache.finalize(SHA, len(DATA))
    assert cache.partial_size(SHA) == 0
    assert cache.path_if_complete(SHA) is None


def test_finalize_without_download(cache: ArtifactCache) -> None:
    with pytest.raises(NotFound):
        cache.finalize(SHA, len(DATA))


def test_on_disk_corruption_detected_and_deleted(cache: ArtifactCache) -> None:
    _download(cache, DATA, SHA)
    path = cache.finalize(SHA, len(DATA))
    with path.open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x00")
    assert cache.path_if_complete(SHA) == path  # cheap check does not hash...
    with pytest.raises(ChecksumMismatch, match=SHA):  # ...verify does
        cache.verify(SHA)
    assert not path.exists()
    assert cache.path_if_complete(SHA) is None
    with pytest.raises(NotFound):
        cache.verify(SHA)


def test_discard_partial(cache: ArtifactCache) -> None:
    cache.append(SHA, 0, DATA[:100])
    cache.discard_partial(SHA)
    assert cache.partial_size(SHA) == 0
    cache.discard_partial(SHA)  # no error when there is nothing to discard
    cache.append(SHA, 0, DATA[:10])  # and offset 0 is right again


def test_retain(cache: ArtifactCache) -> None:
    blobs = [bytes([i]) * (100 + i) for i in range(3)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    for blob, sha in zip(blobs, shas, strict=True):
        cache.append(sha, 0, blob)
        cache.finalize(sha, len(blob))
    stale_partial = hashlib.sha256(b"abandoned").hexdigest()
    cache.append(stale_partial, 0, b"aband")
    wanted_partial = hashlib.sha256(b"wanted").hexdigest()
    cache.append(wanted_partial, 0, b"want")

    removed = cache.retain({shas[1], wanted_partial})
    assert sorted(removed) == sorted([shas[0], shas[2]])
    assert cache.path_if_complete(shas[1]) is not None
    assert cache.path_if_complete(shas[0]) is None and cache.path_if_complete(shas[2]) is None
    assert cache.partial_size(stale_partial) == 0
    assert cache.partial_size(wanted_partial) == 4


def test_retain_can_keep_partial_downloads(cache: ArtifactCache) -> None:
    blob = b"complete"
    sha = hashlib.sha256(blob).hexdigest()
    cache.append(sha, 0, blob)
    cache.finalize(sha, len(blob))
    cache.append(SHA, 0, DATA[:100])
    assert cache.retain(set(), drop_partials=False) == [sha]
    assert cache.path_if_complete(sha) is None
    assert cache.partial_size(SHA) == 100  # may still be resumed


@pytest.mark.parametrize("bad", ["", "abc", SHA.upper(), SHA[:-1] + "g", "../" + SHA[3:], SHA + "0"])
def test_invalid_sha_refused(cache: ArtifactCache, bad: str) -> None:
    for call in (
        lambda: cache.path_if_complete(bad),
        lambda: cache.partial_size(bad),
        lambda: cache.append(bad, 0, b"x"),
        lambda: cache.finalize(bad, 1),
        lambda: cache.verify(bad),
        lambda: cache.discard_partial(bad),
        lambda: cache.retain({bad}),
    ):
        with pytest.raises(InvalidArgument, match="sha256"):
            call()
    assert list((cache.root / "partial").iterdir()) == []
