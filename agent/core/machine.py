"""The agent core: a sans-IO state machine, ``step(event) -> actions``.

It owns every decision the agent makes — when to enroll, (re)connect, send a hello, heartbeat,
flush telemetry, fetch and load a model, acknowledge an assignment — and does no I/O itself. Time
comes from an injected clock (seconds, monotonic) and randomness from an injected RNG, so the
daemon, the simulator and the tests drive the very same code. ``step`` never raises: an unexpected
exception is logged and turned into no actions, leaving the previous state intact.

The connection lifecycle is a transition table (``_TRANSITIONS``) keyed by (state, event type);
events that concern the model, telemetry and block profiles are handled in every state.

Block profiles (``ProfileRequest`` from the controller): one at a time, behind a bounded queue;
idempotent by request id (a request already finished is answered with its kept report again, one
queued or running is ignored); the report is held while the link is down and sent once it is READY.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.core import actions as act
from agent.core import events as ev
from agent.core.backoff import BackoffPolicy
from agent.core.snapshot import AgentSnapshot, FailedVersion
from agent.core.telemetry import OutboxState, Telemetry
from common import limits
from common.errors import NotFound, PermanentError, TransientError, Unauthenticated
from common.types import (
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    DeviceEvent,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    InferenceRecord,
    LinkMeasurement,
    ProfileReport,
    ProfileRequest,
    ReportedState,
    SegmentEndpoint,
    TelemetryAck,
    Welcome,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
WallClockMs = Callable[[], int]

#: Load failures that mean the local copy of a model is bad or missing, not that the model is.
_CACHE_LOST = frozenset({AssignmentFailure.CHECKSUM_MISMATCH, AssignmentFailure.ARTIFACT_NOT_FOUND})


class Link(enum.Enum):
    STARTING = "starting"
    ENROLLING = "enrolling"
    ENROLL_BACKOFF = "enroll_backoff"
    CONNECTING = "connecting"
    AWAITING_WELCOME = "awaiting_welcome"
    READY = "ready"
    BACKOFF = "backoff"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class CoreConfig:
    hardware: HardwareProfile
    #: The device's links to compute pools, sent with every hello (the planner's input).
    links: tuple[LinkMeasurement, ...] = ()
    has_bootstrap_token: bool = True
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    fetch_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_s=1.0, cap_s=60.0))
    #: Used until the controller's Welcome says otherwise.
    heartbeat_interval_s: float = 10.0
    #: A controller that has not welcomed us this long after we opened the stream is treated as a
    #: lost stream (close, back off, reconnect) rather than waited for forever.
    welcome_timeout_s: float = 15.0
    #: A controller that answers nothing (not even a heartbeat) for this many heartbeat intervals is
    #: treated as gone: the stream is closed and reopened (a black-holed link looks just like a quiet
    #: one to the transport).
    silence_intervals: float = 3.0
    #: ...but never less than this: a round trip is not promised faster than this, whatever the
    #: heartbeat interval.
    min_silence_s: float = 1.0
    #: A batch not acked within this long is sent again (the controller dedups by sequence).
    telemetry_ack_timeout_s: float = 15.0
    #: Small batches wait at most this long, so telemetry does not cost one message per request.
    telemetry_flush_interval_s: float = 1.0
    max_batch: int = limits.MAX_TELEMETRY_BATCH
    #: Unsent records kept in memory (the next batches); the rest wait in the driver's outbox.
    max_pending: int = limits.MAX_PENDING_TELEMETRY
    #: Profile requests queued behind the running one (more are dropped: the controller resends),
    #: and finished reports kept to answer a repeated request without profiling again.
    max_queued_profiles: int = limits.MAX_QUEUED_PROFILES
    max_kept_reports: int = limits.MAX_KEPT_PROFILE_REPORTS
    #: Where the driver keeps the identity; only used to tell an operator what to remove.
    identity_file: str = "identity.json"


class AgentCore:
    def __init__(
        self, config: CoreConfig, *, clock: Clock, wall_clock_ms: WallClockMs, rng: random.Random
    ) -> None:
        self._config = config
        self._clock = clock
        self._wall_ms = wall_clock_ms
        self._rng = rng
        self.link = Link.STARTING
        self.identity: DeviceIdentity | None = None
        self.reported = ReportedState()
        self._active: Assignment | None = None
        self._last_known_good: Assignment | None = None
        self._failed: FailedVersion | None = None
        #: The newest assignment received that is not yet applied (being fetched or loaded).
        self.target: Assignment | None = None
        self._fetch_attempt = 0
        self._fetch_retry_at: float | None = None
        self._connect_attempt = 0
        self._reconnect_at: float | None = None
        self._welcome_deadline: float | None = None
        #: When the controller was last heard on this stream (READY only).
        self._silent_after: float | None = None
        self._heartbeat_interval_s = config.heartbeat_interval_s
        self._next_heartbeat_at: float | None = None
        self._telemetry = Telemetry(
            max_batch=config.max_batch,
            window=config.max_pending,
            ack_timeout_s=config.telemetry_ack_timeout_s,
            flush_interval_s=config.telemetry_flush_interval_s,
        )
        self._unsent_acks: dict[int, AssignmentAck] = {}
        #: The last assignment acknowledged as applied: what the device should be serving.
        self._applied_assignment: Assignment | None = None
        #: The assignment whose segments (its own, those it serves) are ready, and a retry of a
        #: target's segments after a transient failure.
        self._segments: Assignment | None = None
        self._segments_attempt = 0
        self._segments_retry_at: float | None = None
        #: Where peers reach this device's SegmentService (set by the driver once it listens).
        self.endpoint = ""
        #: The links the device reports: as configured, then as measured from its traffic.
        self._links: tuple[LinkMeasurement, ...] = config.links
        # Block profiles. Tuples, replaced rather than mutated, so step()'s undo log restores them.
        #: The request being fetched or run, and whether it is running (False: fetching).
        self._profile: ProfileRequest | None = None
        self._profile_running = False
        self._profile_fetch_attempt = 0
        self._profile_retry_at: float | None = None
        self._profile_queue: tuple[ProfileRequest, ...] = ()
        #: Finished reports, oldest first (bounded), and those not yet sent (the link was down).
        self._profile_reports: tuple[ProfileReport, ...] = ()
        self._unsent_reports: tuple[ProfileReport, ...] = ()

    # --- public surface -------------------------------------------------------------------------

    @property
    def config(self) -> CoreConfig:
        return self._config

    @property
    def device_id(self) -> str:
        return self.identity.device_id if self.identity else "-"

    @property
    def pending_telemetry(self) -> int:
        return self._telemetry.count

    @property
    def records_dropped(self) -> int:
        return self._telemetry.records_dropped

    @property
    def active(self) -> Assignment | None:
        return self._active

    def artifacts_in_use(self) -> set[str]:
        """The sha256s of every model the core may still ask the driver to load: what the driver's
        artifact cache must keep (everything else may be deleted)."""
        candidates = (self._active, self._last_known_good, self.target, self._applied_assignment)
        shas = {a.artifact_sha256 for a in candidates if a is not None and a.artifact_sha256}
        for a in (self.target, self._segments):
            if a is not None:
                shas.update(sha for sha, _ in a.segment_artifacts())
        if self._profile is not None:
            shas.update(profile_artifacts(self._profile))
        return shas

    @property
    def profile(self) -> ProfileRequest | None:
        """The profile request being fetched or run, if any."""
        return self._profile

    @property
    def queued_profiles(self) -> tuple[ProfileRequest, ...]:
        return self._profile_queue

    def snapshot(self) -> AgentSnapshot:
        return AgentSnapshot(
            reported=self.reported,
            active=self._active,
            last_known_good=self._last_known_good,
            sequence_reserved_until=self._telemetry.reserved_until,
            records_dropped=self._telemetry.records_dropped,
            failed=self._failed,
            segments=self._segments,
        )

    def next_wakeup(self) -> float | None:
        """The earliest clock time at which a Tick may produce actions (None: only events will)."""
        candidates = [
            self._reconnect_at,
            self._fetch_retry_at,
            self._welcome_deadline,
            self._profile_retry_at,
        ]
        if self.link is Link.READY:
            candidates += [self._next_heartbeat_at, self._telemetry.next_due(), self._silent_after]
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def step(self, event: ev.Event) -> list[act.Action]:
        out: list[act.Action] = []
        # Undo log: the core's own fields by a shallow copy (they are immutable values, bar the acks
        # dict); the telemetry queue journals its own changes, so a step costs no copy of it.
        saved, saved_acks = self.__dict__.copy(), dict(self._unsent_acks)
        self._telemetry.begin(out)
        try:
            handler = _TRANSITIONS.get((self.link, type(event))) or _ANY_STATE.get(type(event))
            if handler is None:
                log.debug(
                    "device=%s ignoring %s in state %s", self.device_id, type(event).__name__, self.link.value
                )
            else:
                handler(self, event, out)
            if self.link is Link.READY:
                self._on_time(out)
        except Exception:  # the core must never take its driver down
            log.exception(
                "device=%s core failed handling %s; state kept", self.device_id, type(event).__name__
            )
            self.__dict__.update(saved)
            self._unsent_acks = saved_acks
            self._telemetry.rollback()
            return []
        self._telemetry.commit()
        return out

    # --- start-up and enrollment ----------------------------------------------------------------

    def _on_started(self, event: ev.Started, out: list[act.Action]) -> None:
        if event.snapshot is not None:
            self._restore(event.snapshot, event.outbox, out)
        elif event.outbox is not None:
            # No snapshot (first boot, or it was lost) but records a previous run made: send them.
            self._telemetry.restore(0, 0, event.outbox, self._clock())
        if event.identity is not None:
            self.identity = event.identity
            self._open_stream(out)
        elif self._config.has_bootstrap_token:
            self.link = Link.ENROLLING
            out.append(act.Enroll())
        else:
            self.link = Link.FATAL
            out.append(act.Fatal("no device identity in the data dir and no bootstrap token given"))

    def _restore(self, snap: AgentSnapshot, outbox: OutboxState | None, out: list[act.Action]) -> None:
        self.reported = snap.reported
        self._last_known_good = snap.last_known_good
        self._failed = snap.failed
        self._telemetry.restore(snap.sequence_reserved_until, snap.records_dropped, outbox, self._clock())
        if snap.active is not None:
            # Serve the last acknowledged model straight from the local cache: no controller needed.
            self._active = snap.active
            self._applied_assignment = snap.active
            out.append(act.LoadModel(snap.active, restore=True))
        if snap.segments is not None:
            # Route and serve by the last acknowledged plan again, from the local cache.
            self._segments = snap.segments
            out.append(act.PrepareSegments(snap.segments, restore=True))

    def _on_enroll_succeeded(self, event: ev.EnrollSucceeded, out: list[act.Action]) -> None:
        self.identity = event.identity
        self._connect_attempt = 0
        log.info("device=%s enrolled", self.device_id)
        out.append(act.PersistIdentity(event.identity))
        self._open_stream(out)

    def _on_enroll_failed(self, event: ev.EnrollFailed, out: list[act.Action]) -> None:
        # Only a refusal is final; anything else (the controller down, or failing) is worth retrying:
        # enrollment is idempotent, so a retry never spends a second use of the token.
        if isinstance(event.error, PermanentError):
            self.link = Link.FATAL
            out.append(act.Fatal(f"enrollment refused: {event.error}"))
            return
        retry_after = event.error.retry_after if isinstance(event.error, TransientError) else None
        delay = self._config.backoff.delay(self._connect_attempt, self._rng, retry_after)
        self._connect_attempt += 1
        self._reconnect_at = self._clock() + delay
        self.link = Link.ENROLL_BACKOFF
        log.warning("device=%s enroll failed (%s); retrying in %.1fs", self.device_id, event.error, delay)

    # --- connection lifecycle -------------------------------------------------------------------

    def _open_stream(self, out: list[act.Action]) -> None:
        assert self.identity is not None
        self.link = Link.CONNECTING
        self._reconnect_at = None
        self._welcome_deadline = self._clock() + self._config.welcome_timeout_s
        out.append(act.OpenStream(self.identity))

    def _on_stream_opened(self, event: ev.StreamOpened, out: list[act.Action]) -> None:
        self.link = Link.AWAITING_WELCOME
        out.append(
            act.Send(
                Hello(
                    hardware=self._config.hardware,
                    reported=self.reported,
                    telemetry_watermark=self._telemetry.last_used_sequence,
                    records_dropped=self._telemetry.records_dropped,
                    links=self._links,
                    endpoint=self.endpoint,
                )
            )
        )

    def _on_stream_closed(self, event: ev.StreamClosed, out: list[act.Action]) -> None:
        if isinstance(event.error, Unauthenticated):
            # The device was deleted, or its credential revoked: reconnecting can never succeed.
            self._link_down()
            self.link = Link.FATAL
            out.append(
                act.Fatal(
                    f"the controller no longer accepts this device's credential: {event.error}; remove "
                    f"{self._config.identity_file} and enroll again with a new token"
                )
            )
            return
        retry_after = event.error.retry_after if isinstance(event.error, TransientError) else None
        self._back_off(retry_after, str(event.error))

    def _link_down(self) -> None:
        self._welcome_deadline = None
        self._silent_after = None
        self._next_heartbeat_at = None
        # Whatever was in flight was not acknowledged: it goes out again after reconnecting.
        self._telemetry.requeue_inflight(self._clock())

    def _back_off(self, retry_after: float | None, why: str) -> None:
        """The stream is gone (or given up on): reconnect after a jittered, growing delay."""
        delay = self._config.backoff.delay(self._connect_attempt, self._rng, retry_after)
        self._connect_attempt += 1
        self._reconnect_at = self._clock() + delay
        self._link_down()
        if self.link is Link.READY:
            log.warning(
                "device=%s control stream lost (%s); reconnecting in %.1fs", self.device_id, why, delay
            )
        else:
            log.info("device=%s connect failed (%s); retrying in %.1fs", self.device_id, why, delay)
        self.link = Link.BACKOFF

    def _on_tick_connecting(self, event: ev.Tick, out: list[act.Action]) -> None:
        if self._welcome_deadline is not None and self._clock() >= self._welcome_deadline:
            reason = f"no welcome from the controller within {self._config.welcome_timeout_s:g}s"
            out.append(act.CloseStream(reason))
            self._back_off(None, reason)

    def _on_tick_backoff(self, event: ev.Tick, out: list[act.Action]) -> None:
        if self._reconnect_at is not None and self._clock() >= self._reconnect_at:
            self._open_stream(out)

    def _on_tick_enroll_backoff(self, event: ev.Tick, out: list[act.Action]) -> None:
        if self._reconnect_at is not None and self._clock() >= self._reconnect_at:
            self._reconnect_at = None
            self.link = Link.ENROLLING
            out.append(act.Enroll())

    def _on_message(self, event: ev.MessageReceived, out: list[act.Action]) -> None:
        self._handle_message(event, out)
        if self.link is Link.READY:  # heard from: it is alive
            self._silent_after = self._clock() + self._silence_s()

    def _handle_message(self, event: ev.MessageReceived, out: list[act.Action]) -> None:
        msg = event.message
        if isinstance(msg, Welcome):
            self._on_welcome(msg, out)
        elif self.link is not Link.READY:
            log.warning("device=%s %s before welcome; ignored", self.device_id, type(msg).__name__)
        elif isinstance(msg, Assignment):
            self._on_assignment(msg, out)
        elif isinstance(msg, TelemetryAck):
            self._telemetry.ack(msg.up_to_sequence)
        elif isinstance(msg, ProfileRequest):
            self._on_profile_request(msg, out)

    def _on_welcome(self, msg: Welcome, out: list[act.Action]) -> None:
        self.link = Link.READY
        self._connect_attempt = 0
        self._welcome_deadline = None
        if msg.heartbeat_interval_ms > 0:
            self._heartbeat_interval_s = msg.heartbeat_interval_ms / 1000.0
        self._next_heartbeat_at = self._clock() + self._heartbeat_interval_s
        if msg.telemetry_watermark > self._telemetry.last_used_sequence:
            log.warning(
                "device=%s controller has telemetry up to %d, above our counter %d; renumbering",
                self.device_id,
                msg.telemetry_watermark,
                self._telemetry.last_used_sequence,
            )
            self._telemetry.renumber_past(msg.telemetry_watermark)
            out.append(act.PersistSnapshot(self.snapshot()))
        self._telemetry.ack(msg.telemetry_watermark)
        log.info("device=%s connected (acked_version=%d)", self.device_id, self.reported.acked_version)
        for ack in sorted(self._unsent_acks.values(), key=lambda a: a.version):
            out.append(act.Send(ack))
        self._unsent_acks.clear()
        out.extend(act.Send(report) for report in self._unsent_reports)
        self._unsent_reports = ()

    # --- assignments ----------------------------------------------------------------------------

    def _on_assignment(self, a: Assignment, out: list[act.Action]) -> None:
        if a.version <= self.reported.acked_version:
            # Already applied (or permanently failed): the controller missed our ack. Repeat it.
            self._ack(self._ack_for(a.version), out)
            return
        if self.target is not None and a.version <= self.target.version:
            return  # already working on it (or on something newer)
        log.info("device=%s new assignment v%d: %s/%s", self.device_id, a.version, a.model_name, a.variant)
        self.target = a
        self._fetch_attempt = 0
        self._fetch_retry_at = None
        self._segments_attempt = 0
        self._segments_retry_at = None
        if a.is_empty or a.artifact_sha256 == self.reported.active_sha256:
            self._model_ready(a, out)
            return
        out.append(act.FetchArtifact(a))

    def _ack_for(self, version: int) -> AssignmentAck:
        if self._failed is not None and self._failed.version == version:
            return AssignmentAck(
                version=version,
                reported=self.reported,
                failure=self._failed.failure,
                message=self._failed.message,
            )
        return AssignmentAck(version=self.reported.acked_version, reported=self.reported)

    def _on_artifact_ready(self, event: ev.ArtifactReady, out: list[act.Action]) -> None:
        if not self._is_target(event.assignment):
            return
        self._fetch_retry_at = None
        out.append(act.LoadModel(event.assignment))

    def _on_artifact_failed(self, event: ev.ArtifactFailed, out: list[act.Action]) -> None:
        if not self._is_target(event.assignment):
            return
        err = event.error
        if isinstance(err, TransientError):
            delay = self._config.fetch_backoff.delay(self._fetch_attempt, self._rng, err.retry_after)
            self._fetch_attempt += 1
            self._fetch_retry_at = self._clock() + delay
            log.warning(
                "device=%s fetch of v%d failed (%s); retrying in %.1fs",
                self.device_id,
                event.assignment.version,
                err,
                delay,
            )
            return
        failure = event.failure or (
            AssignmentFailure.ARTIFACT_NOT_FOUND
            if isinstance(err, NotFound)
            else AssignmentFailure.FETCH_FAILED
        )
        self._failed_version(event.assignment, failure, str(err), out)

    def _on_model_loaded(self, event: ev.ModelLoaded, out: list[act.Action]) -> None:
        a = event.assignment
        if self._active is not None and self._active.artifact_sha256 != a.artifact_sha256:
            self._last_known_good = self._active
        self._active = a
        self.reported = replace(
            self.reported,
            active_sha256=a.artifact_sha256,
            active_model_name=a.model_name,
            active_variant=a.variant,
            last_known_good_sha256=self._last_known_good.artifact_sha256 if self._last_known_good else "",
        )
        if self._is_target(a):
            self._record_event(
                "model_swapped", f"now serving {a.model_name}/{a.variant} ({a.artifact_sha256[:12]})", a
            )
            self._model_ready(a, out)
            return
        out.append(act.PersistSnapshot(self.snapshot()))
        applied = self._applied_assignment
        if self.target is None and applied is not None and applied.artifact_sha256 != a.artifact_sha256:
            # A load of superseded work landed after a newer version was acked: put the acked model back.
            out.append(act.LoadModel(applied))

    def _on_model_load_failed(self, event: ev.ModelLoadFailed, out: list[act.Action]) -> None:
        a = event.assignment
        if self._active is not None and self._active.artifact_sha256 == a.artifact_sha256:
            # A restored model that no longer loads: fall back to the last-known-good one.
            self._active = None
            self.reported = replace(self.reported, active_sha256="", active_model_name="", active_variant="")
            if self._last_known_good is not None:
                out.append(act.LoadModel(self._last_known_good, restore=True))
            applied = self._applied_assignment
            if (
                event.failure in _CACHE_LOST
                and self.target is None
                and applied is not None
                and applied.artifact_sha256 == a.artifact_sha256
            ):
                # The cached copy of what we acknowledged rotted on disk (the cache deleted it) or is gone:
                # heal by downloading it again rather than silently serving nothing under an acked version.
                log.warning(
                    "device=%s cached model %s is corrupt or missing; fetching it again",
                    self.device_id,
                    a.artifact_sha256[:12],
                )
                self.target = applied
                self._fetch_attempt = 0
                self._fetch_retry_at = None
                out.append(act.FetchArtifact(applied))
                return
        if self._is_target(a):
            self._failed_version(a, event.failure, event.message, out)
        else:
            out.append(act.PersistSnapshot(self.snapshot()))

    def _model_ready(self, a: Assignment, out: list[act.Action]) -> None:
        """The target's model serves: make its segments ready (if they differ from those ready now),
        then acknowledge it."""
        if _segment_work(a) == _segment_work(self._segments):
            self._segments = a if a.segment_artifacts() else self._segments
            self._applied(a, out)
            return
        out.append(act.PrepareSegments(a))

    def _on_segments_ready(self, event: ev.SegmentsReady, out: list[act.Action]) -> None:
        a = event.assignment
        if not self._is_target(a):
            return  # a restore, or superseded work: the driver routes by the newest it prepared
        self._segments = a
        self._segments_retry_at = None
        self._applied(a, out)

    def _on_segments_failed(self, event: ev.SegmentsFailed, out: list[act.Action]) -> None:
        a = event.assignment
        if not self._is_target(a):
            log.warning("device=%s segments of v%d: %s", self.device_id, a.version, event.message)
            return
        if event.transient:
            delay = self._config.fetch_backoff.delay(self._segments_attempt, self._rng, None)
            self._segments_attempt += 1
            self._segments_retry_at = self._clock() + delay
            log.warning(
                "device=%s segments of v%d failed (%s); retrying in %.1fs",
                self.device_id,
                a.version,
                event.message,
                delay,
            )
            return
        # The model (its fallback) serves; the plan's partitioned path does not: say so.
        self._failed_version(a, AssignmentFailure.LOAD_FAILED, f"segments: {event.message}", out)

    def _applied(self, a: Assignment, out: list[act.Action]) -> None:
        self.target = None
        if not a.is_empty:
            self._applied_assignment = a
        self.reported = replace(self.reported, acked_version=a.version)
        out.append(act.PersistSnapshot(self.snapshot()))
        self._ack(AssignmentAck(version=a.version, reported=self.reported), out)

    def _failed_version(
        self, a: Assignment, failure: AssignmentFailure, message: str, out: list[act.Action]
    ) -> None:
        log.error(
            "device=%s assignment v%d failed (%s): %s; keeping %s",
            self.device_id,
            a.version,
            failure.value,
            message,
            self.reported.active_sha256[:12] or "no model",
        )
        self.target = None
        self._fetch_retry_at = None
        self._failed = FailedVersion(a.version, failure, message[: limits.MAX_TEXT_CHARS])
        # A failed version is settled too: acking it stops the controller resending it, while the
        # failure tells the operator why the device still runs the previous model.
        self.reported = replace(self.reported, acked_version=a.version)
        self._record_event("assignment_failed", f"{failure.value}: {message}", a)
        out.append(act.PersistSnapshot(self.snapshot()))
        self._ack(self._ack_for(a.version), out)

    def _ack(self, ack: AssignmentAck, out: list[act.Action]) -> None:
        if self.link is Link.READY:
            out.append(act.Send(ack))
        else:
            self._unsent_acks[ack.version] = ack

    def _is_target(self, a: Assignment) -> bool:
        return self.target is not None and self.target.version == a.version

    # --- block profiles -------------------------------------------------------------------------

    def _on_profile_request(self, r: ProfileRequest, out: list[act.Action]) -> None:
        done = next((p for p in self._profile_reports if p.request_id == r.request_id), None)
        if done is not None:
            # Finished already: the controller did not get the report (or sent the request again
            # before it arrived). Answer again instead of profiling again.
            self._send_report(done, out)
            return
        if (self._profile is not None and self._profile.request_id == r.request_id) or any(
            q.request_id == r.request_id for q in self._profile_queue
        ):
            return  # running or queued: the report comes when it is done
        # The controller keeps one request per (device, model): a newer one replaces a queued older one.
        queue = tuple(q for q in self._profile_queue if q.model_name != r.model_name)
        if len(queue) >= self._config.max_queued_profiles:
            log.warning(
                "device=%s profile queue full (%d); dropped request %s of %s (the controller resends it)",
                self.device_id,
                len(queue),
                r.request_id,
                r.model_name,
            )
            return
        log.info(
            "device=%s profile request %s: %s, %d blocks, batch sizes %s",
            self.device_id,
            r.request_id,
            r.model_name,
            len(r.blocks),
            list(r.batch_sizes),
        )
        self._profile_queue = (*queue, r)
        self._start_next_profile(out)

    def _start_next_profile(self, out: list[act.Action]) -> None:
        if self._profile is not None or not self._profile_queue:
            return
        self._profile, *rest = self._profile_queue
        self._profile_queue = tuple(rest)
        self._profile_running = False
        self._profile_fetch_attempt = 0
        self._profile_retry_at = None
        out.append(act.FetchProfileArtifacts(self._profile))

    def _is_profile(self, request_id: str) -> bool:
        return self._profile is not None and self._profile.request_id == request_id

    def _on_profile_artifacts_ready(self, event: ev.ProfileArtifactsReady, out: list[act.Action]) -> None:
        if not self._is_profile(event.request_id) or self._profile_running:
            return
        assert self._profile is not None
        self._profile_running = True
        self._profile_retry_at = None
        out.append(act.RunProfile(self._profile))

    def _on_profile_artifacts_failed(self, event: ev.ProfileArtifactsFailed, out: list[act.Action]) -> None:
        if not self._is_profile(event.request_id) or self._profile_running:
            return
        assert self._profile is not None
        err = event.error
        if isinstance(err, TransientError):
            delay = self._config.fetch_backoff.delay(self._profile_fetch_attempt, self._rng, err.retry_after)
            self._profile_fetch_attempt += 1
            self._profile_retry_at = self._clock() + delay
            log.warning(
                "device=%s profile %s: fetching artifacts failed (%s); retrying in %.1fs",
                self.device_id,
                event.request_id,
                err,
                delay,
            )
            return
        report = ProfileReport(
            request_id=self._profile.request_id,
            model_name=self._profile.model_name,
            error=f"cannot fetch the profile's artifacts: {err}"[: limits.MAX_TEXT_CHARS],
        )
        self._finish_profile(report, out)

    def _on_profile_done(self, event: ev.ProfileDone, out: list[act.Action]) -> None:
        if self._is_profile(event.report.request_id) and self._profile_running:
            self._finish_profile(event.report, out)

    def _finish_profile(self, report: ProfileReport, out: list[act.Action]) -> None:
        failed = sum(1 for t in report.timings if t.error)
        log.info(
            "device=%s profile %s of %s done: %d timings, %d failed%s",
            self.device_id,
            report.request_id,
            report.model_name,
            len(report.timings),
            failed,
            f"; error: {report.error}" if report.error else "",
        )
        self._profile = None
        self._profile_running = False
        self._profile_retry_at = None
        kept = (*self._profile_reports, report)
        self._profile_reports = kept[-self._config.max_kept_reports :]
        self._send_report(report, out)
        self._start_next_profile(out)

    def _send_report(self, report: ProfileReport, out: list[act.Action]) -> None:
        if self.link is Link.READY:
            out.append(act.Send(report))
        else:  # held until the link is READY again (then sent with the welcome)
            others = tuple(r for r in self._unsent_reports if r.request_id != report.request_id)
            self._unsent_reports = (*others, report)[-self._config.max_kept_reports :]

    # --- telemetry ------------------------------------------------------------------------------

    def _on_inference(self, event: ev.InferenceDone, out: list[act.Action]) -> None:
        record = event.record
        if not record.assignment_version:
            record = replace(record, assignment_version=self.reported.acked_version)
        self._append_record(record, out)

    def _on_telemetry_loaded(self, event: ev.TelemetryLoaded, out: list[act.Action]) -> None:
        self._telemetry.loaded(event.records, requested=event.requested, now=self._clock())

    def _on_outbox_trimmed(self, event: ev.OutboxTrimmed, out: list[act.Action]) -> None:
        log.warning(
            "device=%s outbox over its budget: dropped %d records (sequences %d..%d)",
            self.device_id,
            event.dropped,
            event.first_sequence,
            event.last_sequence,
        )
        self._telemetry.trimmed(event.dropped, event.first_sequence, event.last_sequence)
        # The count is reported with the next hello; keep it across a restart.
        out.append(act.PersistSnapshot(self.snapshot()))

    def _on_links_measured(self, event: ev.LinksMeasured, out: list[act.Action]) -> None:
        measured = {m.pool: m for m in event.links}
        links = tuple(
            sorted(
                (*(m for m in self._links if m.pool not in measured), *measured.values()),
                key=lambda m: m.pool,
            )
        )
        if links == self._links:
            return
        self._links = links
        log.info(
            "device=%s measured links: %s",
            self.device_id,
            ", ".join(f"{m.pool} rtt {m.rtt_ms:g}/{m.rtt_p95_ms:g} ms" for m in measured.values()),
        )
        if self.link is Link.READY:  # the planner's input changed: tell the controller now
            out.append(act.Send(Heartbeat(sent_at_ms=self._wall_ms(), links=links)))

    def _on_path_changed(self, event: ev.PathChanged, out: list[act.Action]) -> None:
        kind = "path_degraded" if event.degraded else "path_restored"
        version = self._segments.version if self._segments is not None else 0
        log.warning("device=%s %s: %s", self.device_id, kind, event.reason)
        self._append_record(
            DeviceEvent(kind=kind, message=event.reason[: limits.MAX_TEXT_CHARS], assignment_version=version),
            out,
        )

    def _record_event(self, kind: str, message: str, a: Assignment) -> None:
        # Events are appended without persisting the reservation here; the caller persists a snapshot.
        self._append_record(
            DeviceEvent(kind=kind, message=message[: limits.MAX_TEXT_CHARS], assignment_version=a.version),
            None,
        )

    def _append_record(self, body: InferenceRecord | DeviceEvent, out: list[act.Action] | None) -> None:
        reserved = self._telemetry.append(body, now=self._clock(), timestamp_ms=self._wall_ms())
        if reserved and out is not None:
            # One write per SEQUENCE_BLOCK records: a restart continues above the reserved block.
            out.append(act.PersistSnapshot(self.snapshot()))

    # --- timers (READY only) ----------------------------------------------------------------------

    def _silence_s(self) -> float:
        return max(self._config.min_silence_s, self._config.silence_intervals * self._heartbeat_interval_s)

    def _on_time(self, out: list[act.Action]) -> None:
        now = self._clock()
        if self._silent_after is not None and now >= self._silent_after:
            reason = (
                f"the controller answered nothing for {self._silence_s():g}s "
                f"({self._config.silence_intervals:g} heartbeat intervals, at least {self._config.min_silence_s:g}s)"
            )
            out.append(act.CloseStream(reason))
            self._back_off(None, reason)
            return
        if self._next_heartbeat_at is not None and now >= self._next_heartbeat_at:
            out.append(act.Send(Heartbeat(sent_at_ms=self._wall_ms())))
            self._next_heartbeat_at = now + self._heartbeat_interval_s
        batch = self._telemetry.due(now)
        if batch is not None:
            out.append(act.Send(batch))

    def _on_tick_any(self, event: ev.Tick, out: list[act.Action]) -> None:
        now = self._clock()
        if self._fetch_retry_at is not None and now >= self._fetch_retry_at:
            self._fetch_retry_at = None
            if self.target is not None:
                out.append(act.FetchArtifact(self.target))
        if self._segments_retry_at is not None and now >= self._segments_retry_at:
            self._segments_retry_at = None
            if self.target is not None:
                out.append(act.PrepareSegments(self.target))
        if self._profile_retry_at is not None and now >= self._profile_retry_at:
            self._profile_retry_at = None
            if self._profile is not None and not self._profile_running:
                out.append(act.FetchProfileArtifacts(self._profile))


def _segment_work(a: Assignment | None) -> tuple[object, ...]:
    """What a driver must prepare for an assignment's segments: its own segment, the route to the
    peers that run the rest, and what it serves others. Equal work: nothing to prepare in between."""
    own = ""
    route: tuple[tuple[str, tuple[SegmentEndpoint, ...]], ...] = ()
    if a is not None and a.plan is not None and a.plan.pattern != "local":
        segment = a.own_segment
        own = segment.artifact_sha256 if segment is not None else ""
        route = tuple((s.artifact_sha256, s.endpoints) for s in a.plan.segments if s.tier != "device")
    return (own, route, a.serve if a is not None else ())


# Handlers take the concrete event type their key names; the table is what guarantees the match.
_Handler = Callable[[AgentCore, Any, list[act.Action]], None]


def _tick_backoff(core: AgentCore, event: ev.Tick, out: list[act.Action]) -> None:
    core._on_tick_any(event, out)
    core._on_tick_backoff(event, out)


def _tick_enroll_backoff(core: AgentCore, event: ev.Tick, out: list[act.Action]) -> None:
    core._on_tick_enroll_backoff(event, out)


def _tick_connecting(core: AgentCore, event: ev.Tick, out: list[act.Action]) -> None:
    core._on_tick_any(event, out)
    core._on_tick_connecting(event, out)


_TRANSITIONS: dict[tuple[Link, type], _Handler] = {
    (Link.STARTING, ev.Started): AgentCore._on_started,
    (Link.ENROLLING, ev.EnrollSucceeded): AgentCore._on_enroll_succeeded,
    (Link.ENROLLING, ev.EnrollFailed): AgentCore._on_enroll_failed,
    (Link.ENROLL_BACKOFF, ev.Tick): _tick_enroll_backoff,
    (Link.CONNECTING, ev.StreamOpened): AgentCore._on_stream_opened,
    (Link.CONNECTING, ev.StreamClosed): AgentCore._on_stream_closed,
    (Link.CONNECTING, ev.Tick): _tick_connecting,
    (Link.AWAITING_WELCOME, ev.MessageReceived): AgentCore._on_message,
    (Link.AWAITING_WELCOME, ev.StreamClosed): AgentCore._on_stream_closed,
    (Link.AWAITING_WELCOME, ev.Tick): _tick_connecting,
    (Link.READY, ev.MessageReceived): AgentCore._on_message,
    (Link.READY, ev.StreamClosed): AgentCore._on_stream_closed,
    (Link.BACKOFF, ev.Tick): _tick_backoff,
}

#: Model and telemetry events are handled whatever the link is doing (offline autonomy).
_ANY_STATE: dict[type, _Handler] = {
    ev.Tick: AgentCore._on_tick_any,
    ev.ArtifactReady: AgentCore._on_artifact_ready,
    ev.ArtifactFailed: AgentCore._on_artifact_failed,
    ev.ModelLoaded: AgentCore._on_model_loaded,
    ev.ModelLoadFailed: AgentCore._on_model_load_failed,
    ev.InferenceDone: AgentCore._on_inference,
    ev.PathChanged: AgentCore._on_path_changed,
    ev.LinksMeasured: AgentCore._on_links_measured,
    ev.TelemetryLoaded: AgentCore._on_telemetry_loaded,
    ev.OutboxTrimmed: AgentCore._on_outbox_trimmed,
    ev.SegmentsReady: AgentCore._on_segments_ready,
    ev.SegmentsFailed: AgentCore._on_segments_failed,
    ev.ProfileArtifactsReady: AgentCore._on_profile_artifacts_ready,
    ev.ProfileArtifactsFailed: AgentCore._on_profile_artifacts_failed,
    ev.ProfileDone: AgentCore._on_profile_done,
}


def profile_artifacts(request: ProfileRequest) -> dict[str, int]:
    """sha256 -> size of every artifact a profile request needs (its blocks and its inputs)."""
    needed = {b.artifact_sha256: b.artifact_size_bytes for b in request.blocks}
    needed[request.inputs_sha256] = request.inputs_size_bytes
    return needed
