from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import InvalidArgument, NotFound
from controller.artifacts import ArtifactStore

DATA = b"".join(i.to_bytes(4, "little") for i in range(5000))  # 20 000 bytes
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _chunks(data: bytes, size: int = 3000) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def _tmp_files(store: ArtifactStore) -> list[Path]:
    return list(store.tmp_dir.iterdir())


def test_put_stream_hashes_and_stores(store: ArtifactStore) -> None:
    assert store.put_stream(_chunks(DATA), max_bytes=len(DATA)) == (SHA, len(DATA))
    assert store.exists(SHA)
    assert store.size(SHA) == len(DATA)
    assert store.path(SHA).read_bytes() == DATA
    assert store.path(SHA) == store.root / "sha256" / SHA
    assert _tmp_files(store) == []


def test_put_same_content_twice_is_a_no_op(store: ArtifactStore) -> None:
    store.put_stream(_chunks(DATA), max_bytes=len(DATA))
    mtime = store.path(SHA).stat().st_mtime_ns
    assert store.put_stream(_chunks(DATA, 7), max_bytes=len(DATA)) == (SHA, len(DATA))
    assert store.path(SHA).stat().st_mtime_ns == mtime
    assert _tmp_files(store) == []


def test_over_limit_refused_and_temp_removed(store: ArtifactStore) -> None:
    with pytest.raises(InvalidArgument, match=f"larger than the {len(DATA) - 1}-byte limit"):
        store.put_stream(_chunks(DATA), max_bytes=len(DATA) - 1)
    assert _tmp_files(store) == []
    assert not store.exists(SHA)


def test_stops_reading_once_over_limit(store: ArtifactStore) -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 1000

    with pytest.raises(InvalidArgument):
        store.put_stream(endless(), max_bytes=10_000)
    assert pulled == 11


def test_failing_upload_leaves_nothing(store: ArtifactStore) -> None:
    def broken() -> Iterator[bytes]:
        yield DATA[:100]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream(broken(), max_bytes=len(DATA))
    assert _tmp_files(store) == []
    assert list((store.root / "sha256").iterdir()) == []


def test_put_file(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(DATA)
    assert store.put_file(src, max_bytes=len(DATA)) == (SHA, len(DATA))
    assert store.path(SHA).read_bytes() == DATA
    with pytest.raises(InvalidArgument, match="limit"):
        store.put_file(src, max_bytes=100)
    with pytest.raises(NotFound):
        store.put_file(tmp_path / "missing.onnx", max_bytes=len(DATA))


def test_read_chunks(store: ArtifactStore) -> None:
    store.put_stream(_chunks(DATA), max_bytes=len(DATA))
    chunks = list(store.read_chunks(SHA, 0, 4096))
    assert [len(c) for c in chunks] == [4096] * 4 + [20_000 - 4 * 4096]
    assert b"".join(chunks) == DATA
    assert b"".join(store.read_chunks(SHA, 12_345, 1000)) == DATA[12_345:]
    assert list(store.read_chunks(SHA, len(DATA), 1000)) == []


def test_read_chunks_checks_arguments_eagerly(store: ArtifactStore) -> None:
    store.put_stream(_chunks(DATA), max_bytes=len(DATA))
    # Raised by the call itself, not on the first next(): the stream never starts.
    with pytest.raises(InvalidArgument, match=str(len(DATA) + 1)):
        store.read_chunks(SHA, len(DATA) + 1, 1000)
    with pytest.raises(InvalidArgument):
        store.read_chunks(SHA, -1, 1000)
    with pytest.raises(InvalidArgument):
        store.read_chunks(SHA, 0, 0)
    with pytest.raises(NotFound):
        store.read_chunks("0" * 64, 0, 1000)


def test_missing_and_discard(store: ArtifactStore) -> None:
    missing = "f" * 64
    assert not store.exists(missing)
    with pytest.raises(NotFound, match=missing):
        store.path(missing)
    with pytest.raises(NotFound):
        store.size(missing)
    store.put_stream([DATA], max_bytes=len(DATA))
    store.discard(SHA)
    assert not store.exists(SHA)
    store.discard(SHA)  # idempotent


@pytest.mark.parametrize("bad", ["", "xyz", "A" * 64, "../../etc/passwd"])
def test_invalid_sha_refused(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        store.exists(bad)
    with pytest.raises(InvalidArgument):
        store.path(bad)
    with pytest.raises(InvalidArgument):
        store.discard(bad)


def test_stale_temp_files_swept_on_open(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (store.tmp_dir / "upload-crashed.tmp").write_bytes(b"half")
    ArtifactStore(tmp_path)
    assert _tmp_files(store) == []


def test_stale_build_work_dirs_swept_on_open(tmp_path: Path) -> None:
    work = tmp_path / "artifacts" / "tmp" / "edgefleet-variants-x"
    work.mkdir(parents=True)
    (work / "model.onnx").write_bytes(b"half written")
    store = ArtifactStore(tmp_path / "artifacts")
    assert _tmp_files(store) == []


def test_a_relative_root_adopts_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ArtifactStore(Path("relative") / "artifacts")  # e.g. fleetctl serve --data-dir ./ctl
    assert store.put_stream(_chunks(DATA), max_bytes=len(DATA)) == (SHA, len(DATA))
    assert store.path(SHA).read_bytes() == DATA
