"""FetchArtifact: authenticated, resumable artifact download over real gRPC."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc
import pytest

from common import limits
from common.errors import InvalidArgument, NotFound, Unauthenticated
from common.types import ArtifactChunk
from controller.api.device_api import AUTHORIZATION_KEY, DEVICE_ID_KEY
from controller.artifacts import ArtifactStore
from tests.integration.harness import FakeAgent, Fleet, rpc_error, run, running_controller, write_add_model

pytestmark = pytest.mark.timeout(60)


def _joined(chunks: list[ArtifactChunk], start: int) -> bytes:
    """The bytes of one response, checking its framing: manifest on the first chunk only, contiguous offsets."""
    assert chunks, "no chunk at all"
    assert chunks[0].manifest is not None
    assert all(c.manifest is None for c in chunks[1:])
    position = start
    for chunk in chunks:
        assert chunk.offset == position
        assert len(chunk.data) <= limits.ARTIFACT_CHUNK_BYTES
        position += len(chunk.data)
    return b"".join(c.data for c in chunks)


async def _setup(fleet: Fleet, model: Path, data: bytes) -> tuple[FakeAgent, str, bytes]:
    imported = await fleet.call_admin(fleet.admin.import_model, model, name="big")
    sha = imported.variants[0].sha256
    assert sha == hashlib.sha256(data).hexdigest()
    return await fleet.enroll("phone-1"), sha, data


def test_fetch_whole_and_resumed(tmp_path: Path) -> None:
    model = write_add_model(tmp_path / "big.onnx", 700_000)  # about 2.7 MiB: several chunks
    data_dir = tmp_path / "controller"
    data = model.read_bytes()

    async def scenario() -> None:
        async with running_controller(data_dir) as fleet:
            agent, sha, _ = await _setup(fleet, model, data)
            assert len(data) > 2 * limits.ARTIFACT_CHUNK_BYTES

            chunks = await agent.fetch(sha)
            assert chunks[0].manifest is not None
            assert chunks[0].manifest.sha256 == sha
            assert chunks[0].manifest.size_bytes == len(data)
            assert len(chunks) >= 3
            assert _joined(chunks, 0) == data

            for offset in (
                1,
                limits.ARTIFACT_CHUNK_BYTES,
                limits.ARTIFACT_CHUNK_BYTES + 12_345,
                len(data) - 1,
            ):
                resumed = await agent.fetch(sha, offset)
                assert resumed[0].manifest is not None
                assert resumed[0].manifest.size_bytes == len(data)
                assert _joined(resumed, offset) == data[offset:], offset

            # Resuming at the very end: nothing left, but the manifest still comes.
            tail = await agent.fetch(sha, len(data))
            assert len(tail) == 1
            assert tail[0].data == b""
            assert tail[0].offset == len(data)
            assert tail[0].manifest is not None
            assert tail[0].manifest.sha256 == sha

    run(scenario())


def test_fetch_refusals(tmp_path: Path) -> None:
    model = write_add_model(tmp_path / "small.onnx", 1000)
    data_dir = tmp_path / "controller"
    data = model.read_bytes()

    async def scenario() -> None:
        async with running_controller(data_dir) as fleet:
            agent, sha, _ = await _setup(fleet, model, data)
            other = await fleet.enroll("phone-2")

            error = await rpc_error(agent.fetch(sha, len(data) + 1), grpc.StatusCode.INVALID_ARGUMENT)
            assert isinstance(error, InvalidArgument)
            assert str(len(data)) in error.message

            missing = hashlib.sha256(b"never imported").hexdigest()
            error = await rpc_error(agent.fetch(missing), grpc.StatusCode.NOT_FOUND)
            assert isinstance(error, NotFound)
            assert missing in error.message

            error = await rpc_error(agent.fetch("not-a-sha"), grpc.StatusCode.INVALID_ARGUMENT)
            assert "sha256" in error.message

            for metadata in (
                (),
                ((DEVICE_ID_KEY, "phone-1"), (AUTHORIZATION_KEY, "Bearer efd_wrong")),
                ((DEVICE_ID_KEY, "phone-1"), (AUTHORIZATION_KEY, f"Bearer {other.identity.credential}")),
            ):
                error = await rpc_error(agent.fetch(sha, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED)
                assert isinstance(error, Unauthenticated)
            # Unauthenticated callers learn nothing about which artifacts exist.
            await rpc_error(agent.fetch(missing, metadata=()), grpc.StatusCode.UNAUTHENTICATED)

            # And the legitimate download still works after all that.
            assert _joined(await agent.fetch(sha), 0) == data

    run(scenario())


# --- ArtifactStore uploads, as ImportModel uses them (no gRPC) ------------------------------------


def test_upload_is_hashed_while_written_and_adopted_without_a_copy(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = os.urandom(300_000)
    upload = store.open_upload(max_bytes=len(data))
    for i in range(0, len(data), 65_536):
        upload.write(data[i : i + 65_536])
    sha, size = upload.finish()
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    inode = upload.path.stat().st_ino
    assert store.adopt(upload) == (sha, size)
    assert store.path(sha).stat().st_ino == inode  # renamed into place, not copied
    assert store.path(sha).read_bytes() == data
    upload.discard()  # harmless after adopt
    assert store.exists(sha)
    assert list(store.tmp_dir.iterdir()) == []


def test_adopting_bytes_already_stored_keeps_the_stored_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha, _ = store.put_stream([b"same bytes"], max_bytes=100)
    before = store.path(sha).stat().st_ino
    upload = store.open_upload(max_bytes=100)
    upload.write(b"same bytes")
    assert store.adopt(upload) == (sha, 10)
    assert store.path(sha).stat().st_ino == before
    assert list(store.tmp_dir.iterdir()) == []
    with pytest.raises(RuntimeError):
        store.adopt(upload)


def test_refused_or_abandoned_upload_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    upload = store.open_upload(max_bytes=10)
    upload.write(b"12345")
    with pytest.raises(InvalidArgument, match="10-byte limit"):
        upload.write(b"123456")
    upload.discard()
    abandoned = store.open_upload(max_bytes=10)
    abandoned.write(b"123")
    abandoned.discard()
    assert list(store.tmp_dir.iterdir()) == []
    assert list((store.root / "sha256").iterdir()) == []
