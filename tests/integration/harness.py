"""Helpers for the integration tests: a real controller on loopback gRPC, driven by a fake clock, and
fake agents that speak the real protocol (serde + generated stubs) over real channels.

Every test runs its scenario with ``run(...)`` (``asyncio.run`` with an overall deadline), starts the
controller with ``running_controller(...)`` (always stopped, every channel closed), and reads with a
timeout on every read, so nothing can hang. "Nothing more was sent" is checked with a barrier
(``Stream.expect_nothing_else``), never by waiting a while and seeing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import serde
from common.errors import EdgefleetError
from common.types import (
    AgentMessage,
    ArtifactChunk,
    ControllerMessage,
    Device,
    DeviceIdentity,
    HardwareProfile,
    Hello,
    InferenceRecord,
    Outcome,
    ReportedState,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Welcome,
)
from controller.api.device_api import AUTHORIZATION_KEY, DEVICE_ID_KEY
from controller.client import AdminClient
from controller.server import Controller, ControllerConfig
from controller.service.sync import SyncPolicy

T = TypeVar("T")

EPOCH_MS = 1_700_000_000_000
#: Every read from the controller waits at most this long.
READ_TIMEOUT_S = 10.0
#: The telemetry sequence number ``Stream.expect_nothing_else`` sends (far above what tests use).
BARRIER_SEQUENCE = 1_000_000_000
#: Liveness is 3 x 10 s of *fake* time, so only tests that move the clock that far see it.
POLICY = SyncPolicy(heartbeat_interval_ms=10_000, resend_after_s=5.0)
#: The scheduled reconcile job stays out of the way unless a test asks for it.
NO_TICK_S = 3600.0
HW = HardwareProfile(
    hardware_class="phone-cpu",
    cpu_cores=4,
    memory_bytes=4 << 30,
    execution_providers=("CPUExecutionProvider",),
    os="linux",
    onnxruntime_version="1.20.0",
    agent_version="test",
)
SHA_X = "ab" * 32


def run(coro: Coroutine[Any, Any, T], *, timeout: float = 50.0) -> T:
    """Run one scenario on a fresh event loop, failing (not hanging) after ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class FakeClock:
    """The controller's clock (``now_ms`` and ``monotonic``); moves only when a test says so."""

    def __init__(self) -> None:
        self._wall_ms = EPOCH_MS
        self._mono = 1000.0

    def now_ms(self) -> int:
        return self._wall_ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self._mono += seconds
        self._wall_ms += round(seconds * 1000)


@dataclass(frozen=True)
class Ended:
    """How a server stream ended."""

    status: grpc.StatusCode
    details: str
    error: EdgefleetError | None  # the typed error for any status but OK


async def rpc_error(awaitable: Awaitable[Any], status: grpc.StatusCode) -> EdgefleetError:
    """Await a call that must fail with ``status``; return the typed error behind it."""
    try:
        result = await asyncio.wait_for(awaitable, READ_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == status, f"expected {status.name}, got {exc.code().name}: {exc.details()}"
        return serde.error_from_rpc_error(exc)
    raise AssertionError(f"expected {status.name}, but the call succeeded with {result!r}")


async def wait_until(predicate: Callable[[], Awaitable[T]], *, what: str, wait_s: float = 5.0) -> T:
    deadline = time.monotonic() + wait_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_s}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.02)


class Stream:
    """One Connect call. A pump task moves everything the controller sends into an inbox, so a test can
    wait for a message or for the end of the stream, each with a timeout, or check that nothing else
    was sent (``expect_nothing_else``)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._inbox: asyncio.Queue[ControllerMessage | Ended] = asyncio.Queue()
        self._pump = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        end: Ended
        try:
            while True:
                pb = await self.call.read()
                if pb is grpc.aio.EOF:
                    end = Ended(await self.call.code(), await self.call.details() or "", None)
                    break
                self._inbox.put_nowait(serde.controller_message_from_pb(pb))
        except grpc.aio.AioRpcError as exc:
            end = Ended(exc.code(), exc.details() or "", serde.error_from_rpc_error(exc))
        except asyncio.CancelledError:  # the test cancelled the call
            end = Ended(grpc.StatusCode.CANCELLED, "cancelled by the test", None)
        self._inbox.put_nowait(end)

    async def send(self, message: AgentMessage) -> None:
        await self.send_pb(serde.agent_message_to_pb(message))

    async def send_pb(self, pb: Any) -> None:
        await asyncio.wait_for(self.call.write(pb), READ_TIMEOUT_S)

    async def hello(
        self, *, acked_version: int = 0, watermark: int = 0, reported: ReportedState | None = None
    ) -> Welcome:
        reported = reported if reported is not None else ReportedState(acked_version=acked_version)
        await self.send(Hello(hardware=HW, reported=reported, telemetry_watermark=watermark))
        return await self.expect(Welcome)

    async def recv(self, wait_s: float = READ_TIMEOUT_S) -> ControllerMessage:
        item = await asyncio.wait_for(self._inbox.get(), wait_s)
        if isinstance(item, Ended):
            raise AssertionError(f"the stream ended ({item}) while a message was expected")
        return item

    async def expect(self, cls: type[T], wait_s: float = READ_TIMEOUT_S) -> T:
        message = await self.recv(wait_s)
        assert isinstance(message, cls), f"expected a {cls.__name__}, got {message!r}"
        return message

    async def expect_end(self, wait_s: float = READ_TIMEOUT_S) -> Ended:
        item = await asyncio.wait_for(self._inbox.get(), wait_s)
        assert isinstance(item, Ended), f"expected the stream to end, got {item!r}"
        return item

    async def expect_nothing_else(self) -> None:
        """Assert the controller has queued nothing for this stream beyond what the test already read.

        A positive barrier, not a silence window: the controller handles a stream's messages one after
        the other and queues its replies in order, so when the ack of a telemetry batch sent now is the
        next message, nothing was queued before it (by this stream's earlier messages, or by a kick or
        reconcile pass that has returned). It stores one record (``BARRIER_SEQUENCE``, only once per
        device), refreshes the stream's liveness and needs the hello to have been answered.
        """
        await self.send(telemetry(BARRIER_SEQUENCE, BARRIER_SEQUENCE))
        message = await self.recv()
        assert message == TelemetryAck(up_to_sequence=BARRIER_SEQUENCE), (
            f"expected nothing from the controller before the barrier's ack, got {message!r}"
        )

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._pump), READ_TIMEOUT_S)
        if not self._pump.done():  # pragma: no cover - only if grpc misbehaves
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


class FakeAgent:
    """A device identity plus its own channel to the controller."""

    def __init__(self, fleet: Fleet, identity: DeviceIdentity) -> None:
        self.fleet = fleet
        self.identity = identity
        self.channel = fleet.channel()
        self.stub = serde.ControllerServiceStub(self.channel)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (DEVICE_ID_KEY, self.identity.device_id),
            (AUTHORIZATION_KEY, f"Bearer {self.identity.credential}"),
        )

    def connect(self, metadata: tuple[tuple[str, str], ...] | None = None) -> Stream:
        call = self.stub.Connect(metadata=self.metadata() if metadata is None else metadata)
        stream = Stream(call)
        self.fleet.streams.append(stream)
        return stream

    async def online(self, **hello: Any) -> tuple[Stream, Welcome]:
        stream = self.connect()
        return stream, await stream.hello(**hello)

    async def fetch(
        self, sha256: str, offset: int = 0, metadata: tuple[tuple[str, str], ...] | None = None
    ) -> list[ArtifactChunk]:
        call = self.stub.FetchArtifact(
            serde.fetch_artifact_request_to_pb(sha256, offset),
            metadata=self.metadata() if metadata is None else metadata,
            timeout=READ_TIMEOUT_S,
        )
        return [serde.artifact_chunk_from_pb(pb) async for pb in call]


class Fleet:
    """A running controller with an admin client and the channels the test opened."""

    def __init__(self, controller: Controller, clock: FakeClock) -> None:
        self.controller = controller
        self.clock = clock
        self.address = controller.address
        self.admin = AdminClient(self.address, timeout_s=READ_TIMEOUT_S)
        self.streams: list[Stream] = []
        self._channels: list[grpc.aio.Channel] = []

    @property
    def artifacts_root(self) -> Path:
        return self.controller.config.data_dir / "artifacts"

    def channel(self, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.address, options=options)
        self._channels.append(channel)
        return channel

    async def call_admin(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """AdminClient is synchronous: run it off the loop the controller serves on."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def admin_error(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> EdgefleetError:
        try:
            result = await self.call_admin(fn, *args, **kwargs)
        except EdgefleetError as exc:
            return exc
        raise AssertionError(f"expected {fn.__name__} to fail, it returned {result!r}")

    async def token(self, *, ttl_s: int = 600, uses: int = 1) -> str:
        return (await self.call_admin(self.admin.create_token, ttl_s=ttl_s, uses=uses)).token

    async def enroll_call(self, token: str, device_id: str = "", credential: str = "") -> DeviceIdentity:
        stub = serde.ControllerServiceStub(self.channel())
        pb = await stub.Enroll(
            serde.enroll_request_to_pb(token, HW, device_id, credential), timeout=READ_TIMEOUT_S
        )
        return serde.enroll_response_from_pb(pb)

    async def enroll(self, device_id: str = "") -> FakeAgent:
        return FakeAgent(self, await self.enroll_call(await self.token(), device_id))

    async def devices(self) -> dict[str, Device]:
        return {d.id: d for d in await self.call_admin(self.admin.list_devices)}

    async def device(self, device_id: str) -> Device:
        return await self.call_admin(self.admin.get_device, device_id)

    async def wait_device(
        self, device_id: str, predicate: Callable[[Device], bool], what: str, *, wait_s: float = 5.0
    ) -> Device:
        async def check() -> Device | None:
            device = await self.device(device_id)
            return device if predicate(device) else None

        return await wait_until(check, what=f"device {device_id}: {what}", wait_s=wait_s)

    def artifact_files(self) -> list[str]:
        """Every stored file but the manifests, which must each belong to a stored artifact."""
        files = sorted(
            str(p.relative_to(self.artifacts_root)) for p in self.artifacts_root.rglob("*") if p.is_file()
        )
        manifests = [f for f in files if f.startswith("manifests/")]
        orphans = {Path(f).name.removesuffix(".json") for f in manifests} - {Path(f).name for f in files}
        assert not orphans, f"manifests without their artifact: {sorted(orphans)}"
        return [f for f in files if not f.startswith("manifests/")]

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.close()
        for channel in self._channels:
            await channel.close()
        self.admin.close()


@contextlib.asynccontextmanager
async def running_controller(
    data_dir: Path,
    *,
    clock: FakeClock | None = None,
    policy: SyncPolicy = POLICY,
    reconcile_interval_s: float = NO_TICK_S,
    **config: Any,
) -> AsyncIterator[Fleet]:
    clock = clock or FakeClock()
    controller = Controller(
        ControllerConfig(
            data_dir=data_dir,
            listen="127.0.0.1:0",
            policy=policy,
            reconcile_interval_s=reconcile_interval_s,
            grace_s=1.0,
            **config,
        ),
        clock=clock,
    )
    fleet: Fleet | None = None
    try:
        await controller.start()
        fleet = Fleet(controller, clock)
        yield fleet
    finally:
        if fleet is not None:
            await fleet.aclose()
        await controller.stop()


def telemetry(first: int, last: int) -> TelemetryBatch:
    """A batch of inference records with sequences first..last."""
    return TelemetryBatch(
        records=tuple(
            TelemetryRecord(
                sequence=seq,
                timestamp_ms=EPOCH_MS + seq,
                body=InferenceRecord(model_sha256=SHA_X, latency_ms=1.5, outcome=Outcome.OK),
            )
            for seq in range(first, last + 1)
        )
    )


def write_add_model(path: Path, n: int, *, offset: float = 0.0) -> Path:
    """A small valid ONNX model (y = x + w) whose size is about 4*n bytes; ``offset`` changes the bytes."""
    weights = numpy_helper.from_array(np.arange(n, dtype=np.float32) + np.float32(offset), name="w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
