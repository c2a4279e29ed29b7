"""The agent daemon (the asyncio driver around the core) against a scripted stand-in for the controller.

The stand-in replaces the controller's gRPC stub, so each test decides exactly what the controller
does: stop reading the control stream, never welcome, fail a download with a given status, answer an
enrollment or lose the reply. Models are stand-ins too (``load_model`` is replaced) unless a test
needs onnxruntime; the Infer server is real, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import pytest

import agent.daemon as daemon_module
from agent.client import AgentClient
from agent.core import Link
from agent.core import actions as act
from agent.core import events as ev
from agent.core.backoff import BackoffPolicy
from agent.core.snapshot import AgentSnapshot
from agent.daemon import AgentConfig, AgentDaemon
from agent.state import DataDir
from common import serde
from common.errors import ResourceExhausted
from common.types import (
    AgentMessage,
    ArtifactChunk,
    ArtifactManifest,
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    ControllerMessage,
    DataType,
    DeviceIdentity,
    Hello,
    ProfileBlock,
    ProfileReport,
    ProfileRequest,
    ReportedState,
    TensorSpec,
    Welcome,
)

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
FAST = BackoffPolicy(base_s=0.02, cap_s=0.1)
IDENT = DeviceIdentity(device_id="phone-1", credential="efd_" + "c" * 40)
CHUNK = 1000


def blob(tag: str, size: int = 2500) -> tuple[bytes, str]:
    data = (tag.encode() * size)[:size]
    return data, hashlib.sha256(data).hexdigest()


def asg(version: int, sha: str, size: int = 2500) -> Assignment:
    return Assignment(
        version=version, model_name="m", variant="fp32", artifact_sha256=sha, artifact_size_bytes=size
    )


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details or code.name)


async def eventually(check: Callable[[], T], what: str, within: float = 10.0) -> T:
    try:
        async with asyncio.timeout(within):
            while True:
                if result := check():
                    return result
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


# --- the controller stand-in -------------------------------------------------------------------------

_CANCELLED, _END = object(), object()


class FakeStream:
    """One Connect call: the test pushes controller messages; what the agent sends is collected."""

    def __init__(self, requests: AsyncIterator[Any], *, read_requests: bool) -> None:
        self.requests = requests
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: list[AgentMessage] = []
        self.cancelled = False
        self._reader = asyncio.get_running_loop().create_task(self._drain()) if read_requests else None

    async def _drain(self) -> None:
        async for pb in self.requests:
            self.sent.append(serde.agent_message_from_pb(pb))

    def cancel(self) -> bool:
        # Like gRPC: a cancelled call stops consuming the request iterator and fails its reads.
        self.cancelled = True
        if self._reader is not None:
            self._reader.cancel()
        self.inbox.put_nowait(_CANCELLED)
        return True

    def push(self, message: ControllerMessage) -> None:
        self.inbox.put_nowait(serde.controller_message_to_pb(message))

    def fail(self, exc: BaseException) -> None:
        self.inbox.put_nowait(exc)

    def acks(self) -> list[AssignmentAck]:
        return [m for m in self.sent if isinstance(m, AssignmentAck)]

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def _read(self) -> AsyncIterator[Any]:
        while True:
            item = await self.inbox.get()
            if item is _CANCELLED:
                raise rpc_error(grpc.StatusCode.CANCELLED, "cancelled")
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class FakeFetch:
    def __init__(self, controller: FakeController, sha256: str, offset: int) -> None:
        self.controller, self.sha256, self.offset = controller, sha256, offset
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        c = self.controller
        if c.fetch_errors:
            raise c.fetch_errors.pop(0)
        data = c.artifacts.get(self.sha256)
        if data is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"artifact {self.sha256} not found")
        if self.offset > len(data):
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"offset {self.offset} is beyond the end")
        manifest: ArtifactManifest | None = ArtifactManifest(self.sha256, len(data))
        for position in range(self.offset, len(data), CHUNK):
            gate = c.gates.get(self.sha256)
            if gate is not None:
                await gate.wait()
            chunk = ArtifactChunk(offset=position, data=data[position : position + CHUNK], manifest=manifest)
            manifest = None
            yield serde.artifact_chunk_to_pb(chunk)


class FakeController:
    """Stands in for ``ControllerServiceStub``; tests script it through its attributes."""

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        #: Whether new streams read what the agent sends (False: a controller that stopped reading).
        self.read_requests = True
        self.artifacts: dict[str, bytes] = {}
        #: Served bytes (the sha256 they are served under may be a lie, to test checksums).
        self.fetches: list[FakeFetch] = []
        self.fetch_errors: list[BaseException] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.enroll_requests: list[tuple[str, str, str]] = []
        #: One entry per Enroll call: an exception to raise, or None to answer.
        self.enroll_script: list[BaseException | None] = []
        self.on_enroll: Callable[[], None] = lambda: None

    def Connect(self, requests: AsyncIterator[Any], metadata: Any = None) -> FakeStream:
        stream = FakeStream(requests, read_requests=self.read_requests)
        self.streams.append(stream)
        return stream

    def FetchArtifact(self, request: Any, metadata: Any = None) -> FakeFetch:
        sha256, offset = serde.fetch_artifact_request_from_pb(request)
        fetch = FakeFetch(self, sha256, offset)
        self.fetches.append(fetch)
        return fetch

    async def Enroll(self, request: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (grpc's)
        token, _, device_id, credential = serde.enroll_request_from_pb(request)
        self.enroll_requests.append((token, device_id, credential))
        self.on_enroll()
        outcome = self.enroll_script.pop(0) if self.enroll_script else None
        if outcome is not None:
            raise outcome
        return serde.enroll_response_to_pb(
            DeviceIdentity(device_id or "dev-assigned", credential or "x" * 40)
        )

    def serve(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        return sha

    def fetched(self, sha256: str) -> list[FakeFetch]:
        return [f for f in self.fetches if f.sha256 == sha256]


# --- model stand-ins ---------------------------------------------------------------------------------


class FakeModel:
    def __init__(self, sha256: str, run_s: float = 0.0) -> None:
        self.sha256 = sha256
        self.model_name, self.variant = "m", "fp32"
        self.inputs = (TensorSpec("x", DataType.FLOAT32, (1,)),)
        self.outputs = self.inputs
        self.load_ms = 1.0
        self.run_s = run_s
        self.typical_run_ms = run_s * 1000

    def infer(self, inputs: dict[str, np.ndarray], output_names: Any = ()) -> dict[str, np.ndarray]:
        time.sleep(self.run_s)
        return {"y": np.zeros(1, np.float32)}


@pytest.fixture
def fake_loads(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace onnxruntime loading: per sha256, a delay (seconds) or an exception to raise."""
    script: dict[str, Any] = {}

    def load(path: Path, *, sha256: str, **_: Any) -> FakeModel:
        what = script.get(sha256, 0.0)
        if isinstance(what, BaseException):
            raise what
        time.sleep(what)
        return FakeModel(sha256)

    monkeypatch.setattr(daemon_module, "load_model", load)
    return script


# --- running the daemon ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    data_dir: Path,
    controller: FakeController,
    *,
    identity: DeviceIdentity | None = IDENT,
    token: str = "",
    device_id: str = "phone-1",
    **config: Any,
) -> AsyncIterator[AgentDaemon]:
    if identity is not None:
        DataDir(data_dir).save_identity(identity)
    daemon = AgentDaemon(
        AgentConfig(
            controller="unused:0",
            data_dir=data_dir,
            hardware_class="phone-cpu",
            token=token,
            device_id=device_id,
            backoff=FAST,
            fetch_backoff=FAST,
            **config,
        ),
        controller_stub=controller,
    )
    await daemon.start()
    runner = asyncio.create_task(daemon.run_until_stopped())
    try:
        yield daemon
    finally:
        await daemon.close()
        await runner


async def welcomed(
    daemon: AgentDaemon, controller: FakeController, *, heartbeat_ms: int = 60_000
) -> FakeStream:
    """Wait for the agent to say hello on its newest stream, welcome it, wait until it is connected."""
    await eventually(lambda: controller.streams and daemon.core.link is Link.AWAITING_WELCOME, "a stream")
    stream = controller.streams[-1]
    stream.push(Welcome(heartbeat_interval_ms=heartbeat_ms, telemetry_watermark=0))
    await eventually(lambda: daemon.core.link is Link.READY, "the welcome")
    return stream


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


# --- the control stream ------------------------------------------------------------------------------


def test_full_outbound_queue_resets_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon_module, "OUTBOUND_QUEUE", 4)

    async def scenario() -> None:
        controller = FakeController()
        controller.read_requests = False  # a controller that stopped reading: the queue fills up
        async with running(tmp_path, controller) as daemon:
            await eventually(lambda: daemon.core.link is Link.AWAITING_WELCOME, "a hello")
            jammed = controller.streams[0]
            controller.read_requests = True  # the next stream is read again
            # Heartbeats every millisecond fill the 4-message queue at once.
            jammed.push(Welcome(heartbeat_interval_ms=1, telemetry_watermark=0))
            await eventually(lambda: jammed.cancelled, "the jammed call to be cancelled")
            await eventually(lambda: len(controller.streams) >= 2, "a new stream")
            # The old request stream ends although its queue is full.
            async with asyncio.timeout(2):
                with pytest.raises(StopAsyncIteration):
                    while True:
                        await anext(jammed.requests)  # type: ignore[call-overload]
            fresh = await welcomed(daemon, controller, heartbeat_ms=60_000)
            await eventually(
                lambda: any(isinstance(m, Hello) for m in fresh.sent), "a hello on the new stream"
            )

    with caplog.at_level(logging.WARNING, logger="agent"):
        run(scenario())
    assert "outbound queue full" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_unexpected_error_reading_the_stream_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.fail(RuntimeError("boom"))
            await eventually(lambda: len(controller.streams) >= 2, "a reconnect")
            await welcomed(daemon, controller)

    with caplog.at_level(logging.ERROR, logger="agent"):
        run(scenario())
    assert any(r.exc_info and "control stream failed" in r.getMessage() for r in caplog.records)


def test_controller_that_never_welcomes_is_left_and_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = FakeController()
        async with running(tmp_path, controller, welcome_timeout_s=0.3) as daemon:
            await eventually(lambda: controller.streams, "a stream")
            silent = controller.streams[0]
            await eventually(lambda: silent.cancelled, "the silent stream to be given up", within=5)
            await eventually(lambda: len(controller.streams) >= 2, "a new attempt", within=5)
            await welcomed(daemon, controller)

    run(scenario())


def test_revoked_credential_stops_the_agent_with_instructions(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = FakeController()
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.fail(rpc_error(grpc.StatusCode.UNAUTHENTICATED, "unknown device or wrong credential"))
            await eventually(lambda: daemon.exit_reason, "the agent to give up")
            assert str(tmp_path / "identity.json") in (daemon.exit_reason or "")
            assert "new token" in (daemon.exit_reason or "")
            assert len(controller.streams) == 1

    run(scenario())


# --- enrollment --------------------------------------------------------------------------------------


def test_enrollment_retries_send_the_same_id_and_credential(tmp_path: Path) -> None:
    pending_file = tmp_path / "enrollment.json"
    seen_on_disk: list[tuple[bool, int]] = []

    async def scenario() -> None:
        controller = FakeController()
        # The first reply is lost (after the controller may have enrolled us), the second arrives.
        controller.enroll_script = [rpc_error(grpc.StatusCode.UNAVAILABLE, "reply lost"), None]
        controller.on_enroll = lambda: seen_on_disk.append(
            (pending_file.exists(), pending_file.stat().st_mode & 0o777 if pending_file.exists() else 0)
        )
        async with running(tmp_path, controller, identity=None, token="tok", device_id="phone-7") as daemon:
            await welcomed(daemon, controller)
            (_, id1, cred1), (_, id2, cred2) = controller.enroll_requests
            assert id1 == id2 == "phone-7"
            assert cred1 == cred2 and cred1.startswith("efd_") and len(cred1) >= 32
            assert daemon.identity == DeviceIdentity("phone-7", cred1)

    run(scenario())
    # Durable before the first call, private, and gone once the identity is written.
    assert seen_on_disk == [(True, 0o600), (True, 0o600)]
    assert not pending_file.exists()
    assert DataDir(tmp_path).load_identity() is not None
    assert (tmp_path / "identity.json").stat().st_mode & 0o777 == 0o600


def test_enrollment_after_a_restart_reuses_the_pending_credential(tmp_path: Path) -> None:
    requests: list[tuple[str, str, str]] = []

    async def attempt(succeed: bool) -> None:
        controller = FakeController()
        controller.enroll_requests = requests
        if not succeed:
            controller.enroll_script = [rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)] * 1000
        async with running(tmp_path, controller, identity=None, token="tok", device_id="") as daemon:
            if succeed:
                await welcomed(daemon, controller)
            else:
                await eventually(lambda: len(requests) >= 2, "a couple of attempts")

    run(attempt(succeed=False))
    run(attempt(succeed=True))
    assert len({(device_id, credential) for _, device_id, credential in requests}) == 1
    device_id = requests[0][1]
    assert re.fullmatch(r"dev-[0-9a-f]{12}", device_id)
    assert DataDir(tmp_path).load_identity() == DeviceIdentity(device_id, requests[0][2])


def test_refused_enrollment_is_fatal(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = FakeController()
        controller.enroll_script = [rpc_error(grpc.StatusCode.UNAUTHENTICATED, "token expired")]
        async with running(tmp_path, controller, identity=None, token="tok") as daemon:
            await eventually(lambda: daemon.exit_reason, "the agent to give up")
            assert "token expired" in (daemon.exit_reason or "")

    run(scenario())


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED])
def test_enrollment_survives_a_failing_controller(tmp_path: Path, code: grpc.StatusCode) -> None:
    async def scenario() -> None:
        controller = FakeController()
        controller.enroll_script = [rpc_error(code, "database is locked"), None]
        async with running(tmp_path, controller, identity=None, token="tok") as daemon:
            await welcomed(daemon, controller)
            assert daemon.exit_reason is None

    run(scenario())


# --- downloads ---------------------------------------------------------------------------------------


def test_one_download_per_sha_and_the_newest_assignment_gets_it(
    tmp_path: Path, fake_loads: dict[str, Any]
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        sha_a = controller.serve(blob("a")[0])
        sha_b = controller.serve(blob("b")[0])
        controller.gates = {sha_a: asyncio.Event(), sha_b: asyncio.Event()}
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha_a))
            await eventually(lambda: controller.fetched(sha_a), "the download of A")
            stream.push(asg(2, sha_b))
            await eventually(lambda: controller.fetched(sha_b), "the download of B")
            stream.push(asg(3, sha_a))  # back to A while A's first download is still running
            await eventually(lambda: daemon.core.target is not None and daemon.core.target.version == 3, "v3")
            for gate in controller.gates.values():
                gate.set()
            await eventually(lambda: [a.version for a in stream.acks()] == [3], "v3 to be acked")
            assert daemon.core.reported.active_sha256 == sha_a
            assert daemon.slot.active is not None and daemon.slot.active.sha256 == sha_a
            assert len(controller.fetched(sha_a)) == 1, "two downloads ran into one partial file"
            assert daemon.cache.verify(sha_a)

    run(scenario())


def test_download_no_longer_assigned_is_abandoned(tmp_path: Path, fake_loads: dict[str, Any]) -> None:
    async def scenario() -> None:
        controller = FakeController()
        sha_a = controller.serve(blob("a", 10 * CHUNK)[0])
        sha_b = controller.serve(blob("b")[0])
        controller.gates = {sha_a: asyncio.Event()}
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha_a, 10 * CHUNK))
            await eventually(lambda: controller.fetched(sha_a), "the download of A")
            stream.push(asg(2, sha_b))
            await eventually(lambda: [a.version for a in stream.acks()] == [2], "v2 to be acked")
            controller.gates[sha_a].set()
            (download,) = controller.fetched(sha_a)
            await eventually(lambda: download.cancelled, "A's download to stop")
            await eventually(lambda: sha_a not in daemon._fetching, "A's download to finish")
            assert daemon.cache.path_if_complete(sha_a) is None
            assert daemon.cache.partial_size(sha_a) < 10 * CHUNK

    run(scenario())


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        (grpc.StatusCode.NOT_FOUND, AssignmentFailure.ARTIFACT_NOT_FOUND),
        (grpc.StatusCode.PERMISSION_DENIED, AssignmentFailure.FETCH_FAILED),
        (grpc.StatusCode.FAILED_PRECONDITION, AssignmentFailure.FETCH_FAILED),
        (grpc.StatusCode.INVALID_ARGUMENT, AssignmentFailure.FETCH_FAILED),
    ],
)
def test_permanent_fetch_errors_fail_the_version_with_their_reason(
    tmp_path: Path, code: grpc.StatusCode, failure: AssignmentFailure, fake_loads: dict[str, Any]
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        sha = controller.serve(blob("a")[0])
        controller.fetch_errors = [rpc_error(code, "no")]
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha))
            await eventually(lambda: stream.acks(), "an ack")
            assert [(a.version, a.failure) for a in stream.acks()] == [(1, failure)]
            assert len(controller.fetches) == 1

    run(scenario())


def test_corrupt_download_fails_with_checksum_mismatch(tmp_path: Path, fake_loads: dict[str, Any]) -> None:
    async def scenario() -> None:
        controller = FakeController()
        data, sha = blob("a")
        controller.artifacts[sha] = data[:-1] + b"!"  # served under the right name, wrong bytes
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha))
            await eventually(lambda: stream.acks(), "an ack")
            assert [(a.version, a.failure) for a in stream.acks()] == [
                (1, AssignmentFailure.CHECKSUM_MISMATCH)
            ]

    run(scenario())


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN]
)
def test_transient_fetch_errors_are_retried(
    tmp_path: Path, code: grpc.StatusCode, fake_loads: dict[str, Any]
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        sha = controller.serve(blob("a")[0])
        controller.fetch_errors = [rpc_error(code, "try later")] * 2
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha))
            await eventually(lambda: stream.acks(), "an ack")
            assert [(a.version, a.failure) for a in stream.acks()] == [(1, None)]
            assert len(controller.fetches) == 3

    run(scenario())


def test_partial_beyond_the_artifact_is_discarded_and_downloaded_again(
    tmp_path: Path, fake_loads: dict[str, Any]
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        data, sha = blob("a")
        controller.serve(data)
        async with running(tmp_path, controller) as daemon:
            daemon.cache.append(sha, 0, b"x" * (len(data) + 100))  # a partial longer than the artifact
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha))
            await eventually(lambda: stream.acks(), "an ack")
            assert [(a.version, a.failure) for a in stream.acks()] == [(1, None)]
            assert [f.offset for f in controller.fetches] == [len(data) + 100, 0]
            assert daemon.cache.verify(sha)

    run(scenario())


# --- block profiles ----------------------------------------------------------------------------------


def profile_request(controller: FakeController, *, missing: bool = False) -> ProfileRequest:
    """A request over blobs the stand-in serves (not ONNX: every block fails to load, and is reported
    so); with ``missing`` one block's artifact is not served at all."""
    shas = [controller.serve(blob(tag)[0]) for tag in ("head", "tail")]
    inputs = controller.serve(blob("inputs")[0])
    if missing:
        shas[1] = blob("gone")[1]
    return ProfileRequest(
        request_id="prof-1",
        model_name="m",
        source_sha256=shas[0],
        blocks=(ProfileBlock(0, 5, "fp32", shas[0], 2500), ProfileBlock(5, 0, "fp32", shas[1], 2500)),
        inputs_sha256=inputs,
        inputs_size_bytes=2500,
        batch_sizes=(1,),
        runs=3,
    )


def reports(stream: FakeStream) -> list[ProfileReport]:
    return [m for m in stream.sent if isinstance(m, ProfileReport)]


def test_a_profile_downloads_its_artifacts_reports_and_prunes_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = FakeController()
        request = profile_request(controller)
        controller.fetch_errors = [rpc_error(grpc.StatusCode.UNAVAILABLE, "try later")]  # retried
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(request)
            (report,) = await eventually(lambda: reports(stream), "the profile report")
            # The inputs are no .npz here: the whole profile fails, saying why (nothing is dropped).
            assert report.request_id == "prof-1" and "not a readable .npz" in report.error
            assert len(controller.fetches) == 4  # the failed attempt, then each artifact once
            assert daemon.cache.complete_artifacts() == set()  # pruned once the profile was done
            stream.push(request)  # asked again: the same report, not another profile
            await eventually(lambda: len(reports(stream)) == 2, "the report again")
            assert reports(stream)[1] == report and len(controller.fetches) == 4

    run(scenario())


def test_a_profile_whose_artifact_is_gone_reports_the_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        controller = FakeController()
        request = profile_request(controller, missing=True)
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(request)
            (report,) = await eventually(lambda: reports(stream), "the profile report")
            assert report.timings == () and "not found" in report.error
            assert daemon.core.profile is None
            await eventually(lambda: daemon.cache.complete_artifacts() == set(), "the cache to be pruned")

    run(scenario())


def test_a_profile_and_an_assignment_of_the_same_bytes_share_one_download(
    tmp_path: Path, fake_loads: dict[str, Any]
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        request = profile_request(controller)
        shared = request.blocks[0].artifact_sha256
        controller.gates = {shared: asyncio.Event()}
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(request)
            await eventually(lambda: controller.fetched(shared), "the profile's download")
            stream.push(asg(1, shared))
            await eventually(lambda: daemon.core.target is not None, "the assignment")
            controller.gates[shared].set()
            await eventually(lambda: stream.acks() and reports(stream), "the ack and the report")
            assert [a.version for a in stream.acks()] == [1]
            assert len(controller.fetched(shared)) == 1, "two downloads ran into one partial file"
            # The profile is done, but the model it shared bytes with is served: those stay.
            assert daemon.cache.complete_artifacts() == {shared}

    run(scenario())


# --- loads -------------------------------------------------------------------------------------------


def test_loads_land_in_the_order_they_were_asked_for(tmp_path: Path, fake_loads: dict[str, Any]) -> None:
    async def scenario() -> None:
        controller = FakeController()
        async with running(tmp_path, controller) as daemon:
            slow, fast = asg(1, _cached(daemon, "slow")), asg(2, _cached(daemon, "fast"))
            fake_loads[slow.artifact_sha256] = 0.4
            events: list[ev.Event] = []
            dispatch = daemon.dispatch

            def spy(event: ev.Event) -> None:
                if isinstance(event, ev.ModelLoaded | ev.ModelLoadFailed):
                    events.append(event)
                dispatch(event)

            daemon.dispatch = spy  # type: ignore[method-assign]
            daemon._execute(act.LoadModel(slow))
            daemon._execute(act.LoadModel(fast))
            await eventually(lambda: len(events) == 2, "both loads")
            assert events == [ev.ModelLoaded(slow), ev.ModelLoaded(fast)]
            assert daemon.slot.active is not None and daemon.slot.active.sha256 == fast.artifact_sha256

    run(scenario())


@pytest.mark.parametrize("error", [OSError("disk on fire"), RuntimeError("bug"), MemoryError()])
def test_any_load_error_is_reported_as_a_load_failure(
    tmp_path: Path, fake_loads: dict[str, Any], error: BaseException
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        data, sha = blob("a")
        controller.serve(data)
        fake_loads[sha] = error
        async with running(tmp_path, controller) as daemon:
            stream = await welcomed(daemon, controller)
            stream.push(asg(1, sha))
            await eventually(lambda: stream.acks(), "an ack")
            assert [(a.version, a.failure) for a in stream.acks()] == [(1, AssignmentFailure.LOAD_FAILED)]

    run(scenario())


def test_restored_model_missing_from_the_cache_is_downloaded_again(
    tmp_path: Path, fake_loads: dict[str, Any]
) -> None:
    async def scenario() -> None:
        controller = FakeController()
        sha = controller.serve(blob("a")[0])
        v1 = asg(1, sha)
        DataDir(tmp_path).save_snapshot(
            AgentSnapshot(reported=ReportedState(acked_version=1, active_sha256=sha), active=v1)
        )
        async with running(tmp_path, controller) as daemon:  # nothing in the cache
            await eventually(lambda: daemon.slot.active is not None, "the model to be fetched and served")
            assert daemon.core.reported.active_sha256 == sha
            assert len(controller.fetched(sha)) == 1

    run(scenario())


def _cached(daemon: AgentDaemon, tag: str) -> str:
    data, sha = blob(tag)
    daemon.cache.append(sha, 0, data)
    daemon.cache.finalize(sha, len(data))
    return sha


# --- the artifact cache is pruned --------------------------------------------------------------------


def test_cache_keeps_only_what_the_core_may_still_load(tmp_path: Path, fake_loads: dict[str, Any]) -> None:
    async def scenario() -> None:
        controller = FakeController()
        seed = DataDir(tmp_path)
        from agent.artifact_cache import ArtifactCache

        cache = ArtifactCache(seed.artifacts)
        shas = {}
        for tag in ("active", "lkg", "stale"):
            data, shas[tag] = blob(tag)
            cache.append(shas[tag], 0, data)
            cache.finalize(shas[tag], len(data))
        partial_data, shas["partial"] = blob("partial")
        cache.append(shas["partial"], 0, partial_data[:100])
        seed.save_snapshot(
            AgentSnapshot(
                reported=ReportedState(acked_version=2, active_sha256=shas["active"]),
                active=asg(2, shas["active"]),
                last_known_good=asg(1, shas["lkg"]),
            )
        )
        new = controller.serve(blob("new")[0])
        async with running(tmp_path, controller) as daemon:
            # At start: what nothing refers to goes; a partial download may still be resumed.
            assert daemon.cache.complete_artifacts() == {shas["active"], shas["lkg"]}
            assert daemon.cache.partial_size(shas["partial"]) == 100
            stream = await welcomed(daemon, controller)
            stream.push(asg(3, new))
            await eventually(lambda: stream.acks(), "v3 to be applied")
            # After a swap: the new model and its last-known-good (the previous one) only.
            await eventually(
                lambda: daemon.cache.complete_artifacts() == {new, shas["active"]}, "the cache to be pruned"
            )
            assert daemon.cache.partial_size(shas["partial"]) == 0

    run(scenario())


# --- the Infer service -------------------------------------------------------------------------------


def test_infer_server_refuses_calls_beyond_its_concurrency_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "MAX_CONCURRENT_INFER_RPCS", 1)

    async def scenario() -> None:
        async with running(tmp_path, FakeController()) as daemon:
            daemon.slot.swap(FakeModel("a" * 64, run_s=0.5))  # type: ignore[arg-type]
            results: list[object] = []

            def call() -> None:
                try:
                    with AgentClient(daemon.address) as client:
                        results.append(client.infer({"x": np.zeros(1, np.float32)}))
                except Exception as exc:  # collected and checked below
                    results.append(exc)

            threads = [threading.Thread(target=call) for _ in range(2)]
            for t in threads:
                t.start()
            await asyncio.to_thread(lambda: [t.join() for t in threads])
            refused = [r for r in results if isinstance(r, ResourceExhausted)]
            assert len(refused) == 1, results
            assert len([r for r in results if isinstance(r, tuple)]) == 1

    run(scenario())
