"""``fleet-agent run``: the asyncio driver around the sans-IO core.

The core decides; this module only performs its actions (gRPC calls, file writes, model loads)
and feeds the outcomes back as events. All core calls happen on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from agent import hardware
from agent.artifact_cache import ArtifactCache, ChecksumMismatch
from agent.core import AgentCore, CoreConfig, Link
from agent.core import actions as act
from agent.core import events as ev
from agent.core.backoff import BackoffPolicy
from agent.infer_api import InferApi
from agent.runtime import ModelLoadError, ModelSlot, load_model
from agent.state import DataDir
from common import limits, serde
from common.errors import EdgefleetError, NotFound, TransientError
from common.types import AgentMessage, Assignment, AssignmentFailure, DeviceIdentity, InferenceRecord

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # The core owns the retry schedule (jittered); keep the channel's own backoff short under it.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
OUTBOUND_QUEUE = 1024
ENROLL_TIMEOUT_S = 15.0


@dataclass
class AgentConfig:
    controller: str
    data_dir: Path
    hardware_class: str
    token: str = ""
    device_id: str = ""
    listen: str = "127.0.0.1:0"
    labels: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)


class AgentDaemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.data = DataDir(config.data_dir)
        self.cache = ArtifactCache(self.data.artifacts)
        self.slot = ModelSlot()
        self.core = AgentCore(
            CoreConfig(
                hardware=hardware.detect(config.hardware_class, config.labels),
                has_bootstrap_token=bool(config.token),
                backoff=config.backoff,
            ),
            clock=time.monotonic,
            wall_clock_ms=lambda: time.time_ns() // 1_000_000,
            rng=random.Random(),
        )
        self.identity: DeviceIdentity | None = None
        self.exit_reason: str | None = None
        self.port = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._server: grpc.aio.Server | None = None
        self._infer_api: InferApi | None = None
        self._outbound: asyncio.Queue[Any] | None = None
        self._stream: Any = None
        self._stream_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetching: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.config.controller, options=CHANNEL_OPTIONS)
        self._stub = serde.ControllerServiceStub(self._channel)
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
            ]
        )
        self._infer_api = InferApi(self)
        serde.add_AgentServiceServicer_to_server(self._infer_api, server)
        self.port = server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        self._server = server
        self.identity = self.data.load_identity()
        self.dispatch(ev.Started(self.identity, self.data.load_snapshot()))

    @property
    def address(self) -> str:
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    async def run_until_stopped(self) -> None:
        """Drive the core's timers until ``stop()`` or a Fatal action."""
        while not self._stopping:
            wake_at = self.core.next_wakeup()
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if not self._stopping:
                self._step(ev.Tick())

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        self.stop()
        self._close_stream()
        tasks = [t for t in (self._stream_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(2.0)
            if self._infer_api is not None:
                self._infer_api.close()
        if self._channel is not None:
            await self._channel.close(None)

    # --- the core loop --------------------------------------------------------------------------

    def dispatch(self, event: ev.Event) -> None:
        """Feed an outside event to the core; wake the timer loop only if a deadline moved earlier
        (a later one just costs one idle Tick), so a busy Infer path does not spin the loop."""
        before = self.core.next_wakeup()
        self._step(event)
        after = self.core.next_wakeup()
        if after is not None and (before is None or after < before):
            self._wake.set()

    def _step(self, event: ev.Event) -> None:
        for action in self.core.step(event):
            try:
                self._execute(action)
            except Exception:
                log.exception("device=%s failed to perform %s", self.core.device_id, type(action).__name__)

    def record_inference(self, record: InferenceRecord) -> None:
        self.dispatch(ev.InferenceDone(record))

    def _execute(self, action: act.Action) -> None:
        match action:
            case act.Enroll():
                self._spawn(self._enroll())
            case act.OpenStream(identity=identity):
                self._open_stream(identity)
            case act.CloseStream():
                self._close_stream()
            case act.Send(message=message):
                self._send(message)
            case act.FetchArtifact(assignment=assignment):
                if assignment.version not in self._fetching:
                    self._fetching.add(assignment.version)
                    self._spawn(self._fetch(assignment))
            case act.LoadModel(assignment=assignment, restore=restore):
                self._spawn(self._load(assignment, restore))
            case act.PersistIdentity(identity=identity):
                self.data.save_identity(identity)
                self.identity = identity
            case act.PersistSnapshot(snapshot=snapshot):
                self.data.save_snapshot(snapshot)
            case act.Fatal(reason=reason):
                log.error("agent cannot continue: %s", reason)
                self.exit_reason = reason
                self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        assert self.identity is not None
        return (
            ("x-edgefleet-device-id", self.identity.device_id),
            ("authorization", f"Bearer {self.identity.credential}"),
        )

    # --- enrollment and the control stream ------------------------------------------------------

    async def _enroll(self) -> None:
        request = serde.enroll_request_to_pb(
            self.config.token, self.core.config.hardware, self.config.device_id
        )
        try:
            response = await self._stub.Enroll(request, timeout=ENROLL_TIMEOUT_S)
            self.dispatch(ev.EnrollSucceeded(serde.enroll_response_from_pb(response)))
        except grpc.aio.AioRpcError as exc:
            self.dispatch(ev.EnrollFailed(serde.error_from_rpc_error(exc)))

    def _open_stream(self, identity: DeviceIdentity) -> None:
        self._close_stream()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=OUTBOUND_QUEUE)
        self._outbound = queue

        async def requests() -> AsyncIterator[Any]:
            while (item := await queue.get()) is not None:
                yield item

        self._stream = self._stub.Connect(requests(), metadata=self._metadata())
        self._stream_task = asyncio.get_running_loop().create_task(self._read_stream(self._stream))
        # Defer: the core is still inside step() for the event that asked for this stream.
        asyncio.get_running_loop().call_soon(self.dispatch, ev.StreamOpened())

    async def _read_stream(self, call: Any) -> None:
        error: EdgefleetError
        try:
            async for pb in call:
                self.dispatch(ev.MessageReceived(serde.controller_message_from_pb(pb)))
            error = TransientError("the controller ended the control stream")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and call is not self._stream:
                return  # we closed it ourselves
            error = serde.error_from_rpc_error(exc)
        except EdgefleetError as exc:
            log.error("device=%s controller sent a bad message: %s", self.core.device_id, exc)
            call.cancel()
            error = exc
        except asyncio.CancelledError:
            return
        if call is self._stream:
            self._stream = None
            if self._outbound is not None:
                self._outbound.put_nowait(None)
            self._outbound = None
            self.dispatch(ev.StreamClosed(error))

    def _close_stream(self) -> None:
        if self._outbound is not None:
            self._outbound.put_nowait(None)
            self._outbound = None
        if self._stream is not None:
            call, self._stream = self._stream, None
            call.cancel()

    def _send(self, message: AgentMessage) -> None:
        if self._outbound is None:
            return  # not connected: the core re-sends what matters after reconnecting
        try:
            self._outbound.put_nowait(serde.agent_message_to_pb(message))
        except asyncio.QueueFull:
            log.warning("device=%s outbound queue full; resetting the stream", self.core.device_id)
            self._close_stream()
            self.dispatch(ev.StreamClosed(TransientError("outbound queue full")))

    # --- artifacts and models -------------------------------------------------------------------

    async def _fetch(self, assignment: Assignment) -> None:
        sha256 = assignment.artifact_sha256
        try:
            if self.cache.path_if_complete(sha256) is None:
                await self._download(assignment)
            self.dispatch(ev.ArtifactReady(assignment))
        except ChecksumMismatch as exc:
            self.dispatch(ev.ArtifactFailed(assignment, exc, AssignmentFailure.CHECKSUM_MISMATCH))
        except NotFound as exc:
            self.dispatch(ev.ArtifactFailed(assignment, exc, AssignmentFailure.ARTIFACT_NOT_FOUND))
        except grpc.aio.AioRpcError as exc:
            error = serde.error_from_rpc_error(exc)
            failure = AssignmentFailure.ARTIFACT_NOT_FOUND if isinstance(error, NotFound) else None
            self.dispatch(ev.ArtifactFailed(assignment, error, failure))
        except EdgefleetError as exc:
            self.dispatch(ev.ArtifactFailed(assignment, exc))
        except OSError as exc:
            self.dispatch(ev.ArtifactFailed(assignment, TransientError(f"local disk: {exc}")))
        finally:
            self._fetching.discard(assignment.version)

    async def _download(self, assignment: Assignment) -> None:
        sha256 = assignment.artifact_sha256
        offset = self.cache.partial_size(sha256)
        if offset:
            log.info("device=%s resuming download of %s at byte %d", self.core.device_id, sha256[:12], offset)
        size = assignment.artifact_size_bytes
        call = self._stub.FetchArtifact(
            serde.fetch_artifact_request_to_pb(sha256, offset), metadata=self._metadata()
        )
        async for pb in call:
            chunk = serde.artifact_chunk_from_pb(pb)
            if chunk.manifest is not None:
                size = chunk.manifest.size_bytes
            await asyncio.to_thread(self.cache.append, sha256, chunk.offset, chunk.data)
        await asyncio.to_thread(self.cache.finalize, sha256, size)

    async def _load(self, assignment: Assignment, restore: bool) -> None:
        try:
            path = self.cache.path_if_complete(assignment.artifact_sha256)
            if path is None:
                raise ModelLoadError(
                    failure=AssignmentFailure.LOAD_FAILED, message="artifact is not in the local cache"
                )
            if restore:
                # After a restart, re-check the bytes on disk before trusting them.
                await asyncio.to_thread(self.cache.verify, assignment.artifact_sha256)
            model = await asyncio.to_thread(
                load_model,
                path,
                sha256=assignment.artifact_sha256,
                model_name=assignment.model_name,
                variant=assignment.variant,
                threads=self.config.threads,
            )
        except ModelLoadError as exc:
            self.dispatch(ev.ModelLoadFailed(assignment, exc.failure, exc.message))
            return
        except ChecksumMismatch as exc:
            self.dispatch(ev.ModelLoadFailed(assignment, AssignmentFailure.CHECKSUM_MISMATCH, exc.message))
            return
        self.slot.swap(model)
        log.info(
            "device=%s serving %s/%s (%s)",
            self.core.device_id,
            assignment.model_name,
            assignment.variant,
            assignment.artifact_sha256[:12],
        )
        self.dispatch(ev.ModelLoaded(assignment))

    @property
    def connected(self) -> bool:
        return self.core.link is Link.READY


async def run_agent(config: AgentConfig) -> int:
    import signal

    daemon = AgentDaemon(config)
    await daemon.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    print(f"agent listening on {daemon.address}", flush=True)
    try:
        await daemon.run_until_stopped()
    finally:
        await daemon.close()
    return 1 if daemon.exit_reason else 0
