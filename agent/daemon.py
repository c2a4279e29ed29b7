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
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from agent import hardware, profiler, segment_api
from agent.artifact_cache import ArtifactCache, ChecksumMismatch
from agent.core import AgentCore, CoreConfig, Link
from agent.core import actions as act
from agent.core import events as ev
from agent.core.backoff import BackoffPolicy
from agent.core.machine import profile_artifacts
from agent.infer_api import InferApi
from agent.outbox import Outbox, OutboxBudget, SqliteOutbox
from agent.outbox import perform as outbox_perform
from agent.partition import SegmentHost
from agent.runtime import ModelLoadError, ModelSlot, load_model
from agent.segment_api import SegmentApi
from agent.state import DataDir
from agent.stream import ControlStream
from agent.transport import Transport
from agent.transport import grpc as grpc_transport
from common import limits, serde
from common.errors import EdgefleetError, InvalidArgument, NotFound, PermanentError, TransientError
from common.types import (
    Assignment,
    AssignmentFailure,
    DeviceIdentity,
    InferenceRecord,
    LinkMeasurement,
    ProfileReport,
    ProfileRequest,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def channel_options(keepalive_s: float = 20.0) -> list[tuple[str, int]]:
    """The controller channel's options: a keepalive ping every ``keepalive_s`` (answered within half
    of it, or the connection is dead) — how a link that silently drops everything is told from a
    quiet one."""
    return [
        *limits.GRPC_MESSAGE_OPTIONS,
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", max(500, int(keepalive_s * 500))),
        # What current gRPC actually enforces for an unanswered ping (keepalive_timeout_ms alone is
        # not: measured on 1.85, a black-holed stream stayed "READY" for a minute without it).
        ("grpc.http2.ping_timeout_ms", max(500, int(keepalive_s * 500))),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging a stream that carries nothing (gRPC otherwise stops after two pings without
        # data, and spaces them minutes apart): a black-holed link is then found within keepalive_s.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", int(keepalive_s * 1000)),
        # The core owns the retry schedule (jittered); keep the channel's own backoff short under it.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


CHANNEL_OPTIONS = channel_options()
#: Control messages a connection holds before its transport has taken them (gRPC: written to the
#: stream; MQTT: acknowledged by the broker); one more resets the connection.
OUTBOUND_QUEUE = 1024
ENROLL_TIMEOUT_S = 15.0
#: Infer calls served at once; more are refused with RESOURCE_EXHAUSTED, so a flood of requests
#: cannot queue without bound in front of the inference thread pool.
MAX_CONCURRENT_INFER_RPCS = 256


def max_concurrent_rpcs() -> int:
    """RPCs of any kind at once (gRPC refuses more): Infer's share, every peer stream this agent
    serves (``segment_api.MAX_STREAMS_SERVED``: an idle stream holds its place), unary segment calls
    and room for the rest; each of those shares is bounded by its own servicer."""
    return MAX_CONCURRENT_INFER_RPCS + segment_api.MAX_STREAMS_SERVED + segment_api.MAX_UNARY_CALLS + 64


@dataclass
class AgentConfig:
    controller: str
    data_dir: Path
    hardware_class: str
    token: str = ""
    device_id: str = ""
    listen: str = "127.0.0.1:0"
    labels: dict[str, str] = field(default_factory=dict)
    #: What the device knows of its links to compute pools (told by the operator; measured later).
    links: tuple[LinkMeasurement, ...] = ()
    #: HOST:PORT peers reach this agent's SegmentService at ('' : the listen address as bound).
    advertise: str = ""
    threads: int = 1
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    fetch_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_s=1.0, cap_s=60.0))
    welcome_timeout_s: float = 15.0
    #: The control channel: ``grpc`` (the Connect stream to ``controller``) or ``mqtt`` (through the
    #: broker at ``mqtt``, HOST:PORT). Enrollment and artifacts always go over gRPC to ``controller``.
    transport: str = "grpc"
    mqtt: str = ""
    #: The telemetry outbox's budget (what unacknowledged records may take on disk, and for how
    #: long) and its fsync policy (see ``agent.outbox``).
    outbox_budget: OutboxBudget = field(default_factory=OutboxBudget)
    outbox_sync: str = "normal"
    #: gRPC keepalive to the controller (seconds between pings; a ping unanswered for half of it
    #: ends the connection).
    keepalive_s: float = 20.0


#: The telemetry outbox, in the data dir.
OUTBOX_FILE = "outbox.sqlite3"


class _Abandoned(Exception):
    """The download is no longer wanted: the core moved on to other bytes."""


#: A fetch's outcome: None (in the cache), or the error and the assignment failure it means (None:
#: transient, retried by the core).
_FetchOutcome = tuple[EdgefleetError, AssignmentFailure | None] | None


class AgentDaemon:
    def __init__(
        self, config: AgentConfig, *, controller_stub: Any = None, transport: Transport | None = None
    ) -> None:
        """``controller_stub`` stands in for the ControllerService stub (tests); by default ``start``
        opens a channel to ``config.controller``. ``transport`` replaces the control channel the config
        names (tests, the simulator: e.g. an in-process one)."""
        self.config = config
        self.data = DataDir(config.data_dir)
        self.cache = ArtifactCache(self.data.artifacts)
        self.slot = ModelSlot()
        self.core = AgentCore(
            CoreConfig(
                hardware=hardware.detect(config.hardware_class, config.labels),
                links=config.links,
                has_bootstrap_token=bool(config.token),
                backoff=config.backoff,
                fetch_backoff=config.fetch_backoff,
                welcome_timeout_s=config.welcome_timeout_s,
                identity_file=str(self.data.identity_path),
            ),
            clock=time.monotonic,
            wall_clock_ms=lambda: time.time_ns() // 1_000_000,
            rng=random.Random(),
        )
        #: Unacknowledged telemetry, durable: opened by ``start``.
        self.outbox: Outbox | None = None
        self.identity: DeviceIdentity | None = None
        self.exit_reason: str | None = None
        self.port = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = controller_stub
        self._server: grpc.aio.Server | None = None
        self._infer_api: InferApi | None = None
        self._segment_api: SegmentApi | None = None
        self._transport: Transport | None = transport
        #: The control connection (the task connecting and reading it).
        self._stream = ControlStream(
            dispatch=self.dispatch, spawn=self._spawn, device_id=lambda: self.core.device_id
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Downloads in progress, by sha256, whoever asked for the bytes (an assignment, a profile).
        self._downloads: dict[str, asyncio.Task[_FetchOutcome]] = {}
        #: Assignment fetches in progress, by sha256, each with the newest assignment that asked.
        self._fetching: dict[str, Assignment] = {}
        #: Profiles are run one at a time, in a worker thread, off the serving path.
        self._profile_lock = asyncio.Lock()
        #: Loads are performed one at a time, in the order the core asked for them.
        self._load_lock = asyncio.Lock()
        #: sha256s of loads asked for and not finished (their artifacts must stay in the cache).
        self._loading: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._stopping = False
        #: Segments: this device's own (when its plan cuts the model) and those it serves peers.
        self._segment_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="segment")
        self.segments = SegmentHost(
            "-",
            threads=config.threads,
            executor=self._segment_pool,
            links={m.pool: m.bandwidth_mbps for m in config.links},
        )
        self.segments.on_links = lambda links: self.dispatch(ev.LinksMeasured(links))
        #: One segment preparation at a time, in the order the core asked.
        self._segments_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.config.controller, options=channel_options(self.config.keepalive_s)
            )
            self._stub = serde.ControllerServiceStub(self._channel)
        if self._transport is None:
            self._transport = self._make_transport()
        self._stream.transport = self._transport
        server = grpc.aio.server(
            options=limits.GRPC_MESSAGE_OPTIONS,
            maximum_concurrent_rpcs=max_concurrent_rpcs(),
        )
        self._infer_api = InferApi(self, max_inflight=MAX_CONCURRENT_INFER_RPCS)
        serde.add_AgentServiceServicer_to_server(self._infer_api, server)
        self._segment_api = SegmentApi(self)
        serde.add_SegmentServiceServicer_to_server(self._segment_api, server)
        self.port = server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await server.start()
        self._server = server
        self.core.endpoint = self.config.advertise or self.address
        if not self.config.advertise and self.address.startswith(("0.0.0.0:", "[::]:")):
            log.warning(
                "listening on %s without --advertise: peers are told %s, which only this host can reach",
                self.address,
                self.core.endpoint,
            )
        self.identity = self.data.load_identity()
        if self.identity is not None:
            self.segments.device_id = self.identity.device_id
        self.outbox = SqliteOutbox(
            self.data.root / OUTBOX_FILE,
            self.config.outbox_budget,
            wall_ms=lambda: time.time_ns() // 1_000_000,
            synchronous=self.config.outbox_sync,
        )
        held = self.outbox.state()
        if held.count:
            log.info(
                "outbox holds %d unacknowledged records (%d..%d)",
                held.count,
                held.first_sequence,
                held.last_sequence,
            )
        self.dispatch(ev.Started(self.identity, self.data.load_snapshot(), held))
        # Whatever a previous run left behind and no longer needs. Partial downloads stay: the
        # controller will resend the assignment they belong to, and they resume.
        self._prune_cache(drop_partials=False)

    def _make_transport(self) -> Transport:
        if self.config.transport == "grpc":
            return grpc_transport.GrpcTransport(self._stub, max_queued=OUTBOUND_QUEUE)
        if self.config.transport == "mqtt":
            from agent.transport.mqtt import MqttConfig, MqttTransport

            if not self.config.mqtt:
                raise InvalidArgument("--transport mqtt needs --mqtt HOST:PORT (the broker)")
            return MqttTransport(
                MqttConfig.parse(
                    self.config.mqtt,
                    max_queued=OUTBOUND_QUEUE,
                    keepalive_s=max(1, round(self.config.keepalive_s)),
                )
            )
        raise InvalidArgument(f"unknown transport {self.config.transport!r}: use grpc or mqtt")

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
        self._stream.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            if self._segment_api is not None:
                self._segment_api.close()  # idle peer streams end now, not at the grace period's end
            await self._server.stop(2.0)
            if self._infer_api is not None:
                self._infer_api.close()
        await self.segments.aclose()
        self._segment_pool.shutdown(wait=False)
        if self._transport is not None:
            await self._transport.aclose()  # e.g. MQTT's goodbye (offline status) of the last connection
        if self._channel is not None:
            await self._channel.close(None)
        if self.outbox is not None:
            self.outbox.close()

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
                self._stream.open(identity)
            case act.CloseStream(reason=reason):
                log.info("device=%s closing the control stream: %s", self.core.device_id, reason)
                self._stream.close()
            case act.Send(message=message):
                self._stream.send(message)
            case act.FetchArtifact(assignment=assignment):
                self._start_fetch(assignment)
            case act.LoadModel(assignment=assignment, restore=restore):
                self._loading[assignment.artifact_sha256] += 1
                self._spawn(self._load(assignment, restore))
            case act.PrepareSegments(assignment=assignment, restore=restore):
                self._spawn(self._prepare_segments(assignment, restore))
            case act.FetchProfileArtifacts(request=request):
                self._spawn(self._fetch_profile(request))
            case act.RunProfile(request=request):
                self._spawn(self._run_profile(request))
            case act.PersistIdentity(identity=identity):
                self.data.save_identity(identity)
                self.identity = identity
                self.segments.device_id = identity.device_id
            case act.PersistSnapshot(snapshot=snapshot):
                self.data.save_snapshot(snapshot)
            case (
                act.AppendTelemetry() | act.DeleteTelemetry() | act.LoadTelemetry() | act.RenumberTelemetry()
            ):
                self._outbox_action(action)
            case act.Fatal(reason=reason):
                log.error("device=%s agent cannot continue: %s", self.core.device_id, reason)
                self.exit_reason = reason
                self.stop()

    def _outbox_action(self, action: act.Action) -> None:
        if self.outbox is not None:
            for event in outbox_perform(self.outbox, action):
                self._later(event)

    def _later(self, event: ev.Event) -> None:
        """Dispatch once the current step is done (the core is not re-entrant)."""
        asyncio.get_running_loop().call_soon(self.dispatch, event)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        assert self.identity is not None
        return grpc_transport.metadata(self.identity)

    # --- enrollment and the control stream ------------------------------------------------------

    async def _enroll(self) -> None:
        error: EdgefleetError
        try:
            # Recorded on disk before the first attempt: every retry, after a lost reply or a restart,
            # asks for the same id with the same credential, which the controller answers with the
            # same identity instead of spending another use of the token.
            pending = self.data.pending_enrollment(self.config.device_id)
            request = serde.enroll_request_to_pb(
                self.config.token, self.core.config.hardware, pending.device_id, pending.credential
            )
            response = await self._stub.Enroll(request, timeout=ENROLL_TIMEOUT_S)
            identity = serde.enroll_response_from_pb(response)
        except grpc.aio.AioRpcError as exc:
            error = serde.error_from_rpc_error(exc)
        except OSError as exc:
            error = TransientError(f"cannot record the pending enrollment in {self.data.root}: {exc}")
        except EdgefleetError as exc:
            error = TransientError(f"the controller's enroll response is unreadable: {exc}")
        except Exception as exc:
            log.exception("device=%s enrollment failed unexpectedly", self.data.device_id)
            error = TransientError(f"enrollment failed: {exc!r}")
        else:
            self.dispatch(ev.EnrollSucceeded(identity))
            return
        self.dispatch(ev.EnrollFailed(error))

    # --- artifacts ------------------------------------------------------------------------------

    def _start_fetch(self, assignment: Assignment) -> None:
        """One fetch per sha256, whatever the versions asking for it; its outcome goes to the newest
        assignment that asked (the core ignores outcomes for versions it no longer wants)."""
        sha256 = assignment.artifact_sha256
        already = sha256 in self._fetching
        self._fetching[sha256] = assignment
        if not already:
            self._spawn(self._fetch(sha256))

    def _wanted(self, sha256: str) -> bool:
        """Whether the core may still need these bytes (its assignment target, a model it may load,
        the profile it is fetching): a download nobody wants is abandoned between chunks."""
        return sha256 in self.core.artifacts_in_use()

    async def _fetch(self, sha256: str) -> None:
        try:
            failed = await self._obtain(sha256, self._fetching[sha256].artifact_size_bytes)
        except _Abandoned:
            log.info(
                "device=%s download of %s abandoned: no longer assigned", self.core.device_id, sha256[:12]
            )
            return
        finally:
            assignment = self._fetching.pop(sha256)
        if failed is None:
            self.dispatch(ev.ArtifactReady(assignment))
        else:
            error, failure = failed
            self.dispatch(ev.ArtifactFailed(assignment, error, failure))

    async def _obtain(self, sha256: str, size_bytes: int) -> _FetchOutcome:
        """Get an artifact into the cache (resuming a partial download, sha256-verified): one download
        per sha256 whoever asks, its outcome shared. Raises _Abandoned once nothing wants the bytes."""
        download = self._downloads.get(sha256)
        if download is None:
            download = self._spawn(self._try_fetch(sha256, size_bytes))
            self._downloads[sha256] = download
            download.add_done_callback(lambda done: self._forget_download(sha256, done))
        # Shielded: one asker giving up (or being cancelled) does not cancel the others' download.
        return await asyncio.shield(download)

    def _forget_download(self, sha256: str, done: asyncio.Task[_FetchOutcome]) -> None:
        if self._downloads.get(sha256) is done:
            del self._downloads[sha256]
        if not done.cancelled():
            done.exception()  # retrieved: an abandoned download nobody awaits any more is not an error

    async def _try_fetch(self, sha256: str, size_bytes: int) -> _FetchOutcome:
        """None once the artifact is in the cache; else the error and the reason to report (None:
        transient, to be retried by the core with backoff)."""
        offset = 0
        error: EdgefleetError
        try:
            if self.cache.path_if_complete(sha256) is None:
                offset = self.cache.partial_size(sha256)
                await self._download(sha256, offset, size_bytes)
            return None
        except _Abandoned:
            raise
        except grpc.aio.AioRpcError as exc:
            error = serde.error_from_rpc_error(exc)
            if isinstance(error, InvalidArgument) and offset > 0:
                # The controller says we resume beyond the end of the artifact: our partial is bad.
                self.cache.discard_partial(sha256)
                error = TransientError(
                    f"resuming {sha256[:12]} at byte {offset} refused ({error}); discarded the partial "
                    "download, starting again from byte 0"
                )
        except OSError as exc:
            error = TransientError(f"local disk: {exc}")
        except EdgefleetError as exc:
            error = exc
        except Exception as exc:
            log.exception("device=%s fetching %s failed unexpectedly", self.core.device_id, sha256[:12])
            error = PermanentError(f"fetching failed: {exc!r}")
        return error, _fetch_failure(error)

    async def _download(self, sha256: str, offset: int, size: int) -> None:
        if offset:
            log.info("device=%s resuming download of %s at byte %d", self.core.device_id, sha256[:12], offset)
        call = self._stub.FetchArtifact(
            serde.fetch_artifact_request_to_pb(sha256, offset), metadata=self._metadata()
        )
        try:
            async for pb in call:
                chunk = serde.artifact_chunk_from_pb(pb)
                if chunk.manifest is not None:
                    size = chunk.manifest.size_bytes
                await asyncio.to_thread(self.cache.append, sha256, chunk.offset, chunk.data)
                # Checked between chunks, never while a write is in progress: the partial stays whole.
                if not self._wanted(sha256):
                    raise _Abandoned
        finally:
            call.cancel()
        await asyncio.to_thread(self.cache.finalize, sha256, size)
        log.info("device=%s downloaded artifact %s (%d bytes)", self.core.device_id, sha256[:12], size)

    # --- block profiles -------------------------------------------------------------------------

    async def _fetch_profile(self, request: ProfileRequest) -> None:
        """Every block artifact and the inputs of ``request``, one after the other, through the same
        resumable, verified download as models; the outcome goes back to the core."""
        for sha256, size in profile_artifacts(request).items():
            try:
                failed = await self._obtain(sha256, size)
            except _Abandoned:
                log.info(
                    "device=%s profile %s: download of %s abandoned (no longer wanted)",
                    self.core.device_id,
                    request.request_id,
                    sha256[:12],
                )
                return
            if failed is not None:
                self.dispatch(ev.ProfileArtifactsFailed(request.request_id, failed[0]))
                self._prune_cache()  # a profile given up on keeps nothing; one to retry keeps its bytes
                return
        self.dispatch(ev.ProfileArtifactsReady(request.request_id))

    async def _run_profile(self, request: ProfileRequest) -> None:
        """Time the blocks in a worker thread (one profile at a time: serving keeps the other cores),
        then tell the core and drop the profile's artifacts from the cache."""
        async with self._profile_lock:
            paths = {
                sha: path for sha in profile_artifacts(request) if (path := self.cache.path_if_complete(sha))
            }
            inputs = paths.get(request.inputs_sha256)
            started = time.monotonic()
            try:
                if inputs is None:  # verified when fetched, but removed since (e.g. by hand)
                    report = ProfileReport(
                        request.request_id,
                        request.model_name,
                        error="the profile inputs are not in the local cache",
                    )
                else:
                    report = await asyncio.to_thread(profiler.profile_blocks, request, paths, inputs)
                    try:
                        report = await profiler.with_dispatch(report)
                    except Exception:  # the block timings stand; the planner adds no dispatch cost
                        log.exception(
                            "device=%s profile %s: measuring the dispatch cost failed",
                            self.core.device_id,
                            request.request_id,
                        )
            except Exception as exc:  # the profiler reports per block; anything else is its bug, reported
                log.exception(
                    "device=%s profile %s failed unexpectedly", self.core.device_id, request.request_id
                )
                report = ProfileReport(
                    request.request_id, request.model_name, error=f"profiler failed: {exc!r}"
                )
            log.info(
                "device=%s profiled %s (%s) in %.1f s: %d timings%s",
                self.core.device_id,
                request.model_name,
                request.request_id,
                time.monotonic() - started,
                len(report.timings),
                f", error: {report.error}" if report.error else "",
            )
        self.dispatch(ev.ProfileDone(report))
        self._prune_cache()

    def _prune_cache(self, *, drop_partials: bool = True) -> None:
        """Delete cached artifacts nothing refers to any more (the cache would otherwise only grow)."""
        keep = self.core.artifacts_in_use() | set(self._downloads) | set(self._loading)
        try:
            removed = self.cache.retain(keep, drop_partials=drop_partials)
        except (OSError, EdgefleetError) as exc:
            log.warning("device=%s cannot prune the artifact cache: %s", self.core.device_id, exc)
            return
        if removed:
            log.info(
                "device=%s removed %d unused artifact(s): %s",
                self.core.device_id,
                len(removed),
                ", ".join(s[:12] for s in removed),
            )

    # --- segments -------------------------------------------------------------------------------

    async def _prepare_segments(self, assignment: Assignment, restore: bool) -> None:
        """Every segment artifact of ``assignment`` into the cache (the same resumable, verified
        download as models; after a restart, verified again from disk), then loaded and swapped in."""
        async with self._segments_lock:
            paths: dict[str, Path] = {}
            for sha256, size in assignment.segment_artifacts():
                try:
                    failed = await self._obtain(sha256, size)
                    if failed is None and restore:
                        await asyncio.to_thread(self.cache.verify, sha256)
                except _Abandoned:
                    return  # superseded: the core asks for the newer one
                except ChecksumMismatch as exc:  # verify deleted the file: a retry downloads it again
                    self.dispatch(ev.SegmentsFailed(assignment, exc.message, transient=True))
                    return
                if failed is not None:
                    error, failure = failed
                    self.dispatch(
                        ev.SegmentsFailed(assignment, f"{sha256[:12]}: {error}", transient=failure is None)
                    )
                    return
                path = self.cache.path_if_complete(sha256)
                if path is None:
                    self.dispatch(
                        ev.SegmentsFailed(assignment, f"{sha256[:12]} left the cache", transient=True)
                    )
                    return
                paths[sha256] = path
            try:
                await self.segments.prepare(assignment, paths)
            except EdgefleetError as exc:
                log.error(
                    "device=%s segments of v%d failed: %s", self.core.device_id, assignment.version, exc
                )
                self.dispatch(ev.SegmentsFailed(assignment, exc.message))
                return
            self.dispatch(ev.SegmentsReady(assignment))
        self._prune_cache()

    # --- models ---------------------------------------------------------------------------------

    async def _load(self, assignment: Assignment, restore: bool) -> None:
        sha256 = assignment.artifact_sha256
        try:
            # One at a time, in the order asked for: a slow load of superseded work can never land
            # after (and so replace) a newer one.
            async with self._load_lock:
                event = await self._load_one(assignment, restore)
                self.dispatch(event)
        finally:
            self._loading[sha256] -= 1
            if self._loading[sha256] <= 0:
                del self._loading[sha256]
        if isinstance(event, ev.ModelLoaded):
            self._prune_cache()

    async def _load_one(self, assignment: Assignment, restore: bool) -> ev.ModelLoaded | ev.ModelLoadFailed:
        sha256 = assignment.artifact_sha256
        try:
            path = self.cache.path_if_complete(sha256)
            if path is None:
                raise NotFound(f"artifact {sha256[:12]} is not in the local cache")
            if restore:
                # After a restart, re-check the bytes on disk before trusting them.
                await asyncio.to_thread(self.cache.verify, sha256)
            model = await asyncio.to_thread(
                load_model,
                path,
                sha256=sha256,
                model_name=assignment.model_name,
                variant=assignment.variant,
                threads=self.config.threads,
            )
        except ModelLoadError as exc:
            return ev.ModelLoadFailed(assignment, exc.failure, exc.message)
        except ChecksumMismatch as exc:
            log.warning("device=%s cached artifact %s is corrupt: %s", self.core.device_id, sha256[:12], exc)
            return ev.ModelLoadFailed(assignment, AssignmentFailure.CHECKSUM_MISMATCH, exc.message)
        except NotFound as exc:
            return ev.ModelLoadFailed(assignment, AssignmentFailure.ARTIFACT_NOT_FOUND, exc.message)
        except Exception as exc:
            log.exception("device=%s loading %s failed unexpectedly", self.core.device_id, sha256[:12])
            return ev.ModelLoadFailed(
                assignment, AssignmentFailure.LOAD_FAILED, f"cannot load the model: {exc}"
            )
        self.slot.swap(model)  # the previous model goes once the requests still using it finish
        log.info(
            "device=%s serving %s/%s (%s), loaded in %.0f ms: inputs %s, outputs %s",
            self.core.device_id,
            assignment.model_name,
            assignment.variant,
            sha256[:12],
            model.load_ms,
            model.inputs,
            model.outputs,
        )
        return ev.ModelLoaded(assignment)

    @property
    def connected(self) -> bool:
        return self.core.link is Link.READY


def _fetch_failure(error: EdgefleetError) -> AssignmentFailure | None:
    """The reason a failed fetch fails its version; None when it is worth retrying."""
    if isinstance(error, TransientError):
        return None
    if isinstance(error, ChecksumMismatch):
        return AssignmentFailure.CHECKSUM_MISMATCH
    if isinstance(error, NotFound):
        return AssignmentFailure.ARTIFACT_NOT_FOUND
    return AssignmentFailure.FETCH_FAILED


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
