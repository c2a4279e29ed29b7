"""The agent core: a sans-IO state machine, ``step(event) -> actions``.

It owns every decision the agent makes — when to enroll, (re)connect, send a hello, heartbeat,
flush telemetry, fetch and load a model, acknowledge an assignment — and does no I/O itself. Time
comes from an injected clock (seconds, monotonic) and randomness from an injected RNG, so the
daemon, the simulator and the tests drive the very same code. ``step`` never raises: an unexpected
exception is logged and turned into no actions, leaving the previous state intact.

The connection lifecycle is a transition table (``_TRANSITIONS``) keyed by (state, event type);
events that concern the model and telemetry are handled in every state.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.core import actions as act
from agent.core import events as ev
from agent.core.backoff import BackoffPolicy
from agent.core.snapshot import AgentSnapshot, FailedVersion
from common import limits
from common.errors import TransientError
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
    ReportedState,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Welcome,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
WallClockMs = Callable[[], int]

#: Telemetry sequence numbers are reserved (and persisted) this many at a time.
SEQUENCE_BLOCK = 1000


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
    has_bootstrap_token: bool = True
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    fetch_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_s=1.0, cap_s=60.0))
    #: Used until the controller's Welcome says otherwise.
    heartbeat_interval_s: float = 10.0
    #: A batch not acked within this long is sent again (the controller dedups by sequence).
    telemetry_ack_timeout_s: float = 15.0
    #: Small batches wait at most this long, so telemetry does not cost one message per request.
    telemetry_flush_interval_s: float = 1.0
    max_batch: int = limits.MAX_TELEMETRY_BATCH
    max_pending: int = limits.MAX_PENDING_TELEMETRY


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
        self._heartbeat_interval_s = config.heartbeat_interval_s
        self._next_heartbeat_at: float | None = None
        self._pending: deque[TelemetryRecord] = deque()
        self._inflight: tuple[TelemetryRecord, ...] = ()
        self._inflight_sent_at = 0.0
        self._oldest_pending_at: float | None = None
        self._next_sequence = 1
        self._sequence_reserved_until = 0
        self.records_dropped = 0
        self._unsent_acks: dict[int, AssignmentAck] = {}
        #: The last assignment acknowledged as applied: what the device should be serving.
        self._applied_assignment: Assignment | None = None

    # --- public surface -------------------------------------------------------------------------

    @property
    def config(self) -> CoreConfig:
        return self._config

    @property
    def device_id(self) -> str:
        return self.identity.device_id if self.identity else "-"

    @property
    def pending_telemetry(self) -> int:
        return len(self._pending) + len(self._inflight)

    @property
    def active(self) -> Assignment | None:
        return self._active

    def snapshot(self) -> AgentSnapshot:
        return AgentSnapshot(
            reported=self.reported,
            active=self._active,
            last_known_good=self._last_known_good,
            sequence_reserved_until=self._sequence_reserved_until,
            records_dropped=self.records_dropped,
            failed=self._failed,
        )

    def next_wakeup(self) -> float | None:
        """The earliest clock time at which a Tick may produce actions (None: only events will)."""
        candidates = [self._reconnect_at, self._fetch_retry_at]
        if self.link is Link.READY:
            candidates.append(self._next_heartbeat_at)
            if self._inflight:
                candidates.append(self._inflight_sent_at + self._config.telemetry_ack_timeout_s)
            elif self._oldest_pending_at is not None:
                candidates.append(self._oldest_pending_at + self._config.telemetry_flush_interval_s)
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def step(self, event: ev.Event) -> list[act.Action]:
        out: list[act.Action] = []
        # Cheap undo log: scalars via a shallow copy, the two containers handlers mutate in place.
        saved, saved_pending, saved_acks = self.__dict__.copy(), self._pending.copy(), dict(self._unsent_acks)
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
            self._pending, self._unsent_acks = saved_pending, saved_acks
            return []
        return out

    # --- start-up and enrollment ----------------------------------------------------------------

    def _on_started(self, event: ev.Started, out: list[act.Action]) -> None:
        if event.snapshot is not None:
            self._restore(event.snapshot, out)
        if event.identity is not None:
            self.identity = event.identity
            self._open_stream(out)
        elif self._config.has_bootstrap_token:
            self.link = Link.ENROLLING
            out.append(act.Enroll())
        else:
            self.link = Link.FATAL
            out.append(act.Fatal("no device identity in the data dir and no bootstrap token given"))

    def _restore(self, snap: AgentSnapshot, out: list[act.Action]) -> None:
        self.reported = snap.reported
        self._last_known_good = snap.last_known_good
        self._failed = snap.failed
        self.records_dropped = snap.records_dropped
        # Never reuse a sequence number that may already have reached the controller.
        self._next_sequence = snap.sequence_reserved_until + 1
        self._sequence_reserved_until = snap.sequence_reserved_until
        if snap.active is not None:
            # Serve the last acknowledged model straight from the local cache: no controller needed.
            self._active = snap.active
            self._applied_assignment = snap.active
            out.append(act.LoadModel(snap.active, restore=True))

    def _on_enroll_succeeded(self, event: ev.EnrollSucceeded, out: list[act.Action]) -> None:
        self.identity = event.identity
        self._connect_attempt = 0
        log.info("device=%s enrolled", self.device_id)
        out.append(act.PersistIdentity(event.identity))
        self._open_stream(out)

    def _on_enroll_failed(self, event: ev.EnrollFailed, out: list[act.Action]) -> None:
        if isinstance(event.error, TransientError):
            delay = self._config.backoff.delay(self._connect_attempt, self._rng, event.error.retry_after)
            self._connect_attempt += 1
            self._reconnect_at = self._clock() + delay
            self.link = Link.ENROLL_BACKOFF
            log.warning("enroll failed (%s); retrying in %.1fs", event.error, delay)
        else:
            self.link = Link.FATAL
            out.append(act.Fatal(f"enrollment refused: {event.error}"))

    # --- connection lifecycle -------------------------------------------------------------------

    def _open_stream(self, out: list[act.Action]) -> None:
        assert self.identity is not None
        self.link = Link.CONNECTING
        self._reconnect_at = None
        out.append(act.OpenStream(self.identity))

    def _on_stream_opened(self, event: ev.StreamOpened, out: list[act.Action]) -> None:
        self.link = Link.AWAITING_WELCOME
        out.append(
            act.Send(
                Hello(
                    hardware=self._config.hardware,
                    reported=self.reported,
                    telemetry_watermark=self._next_sequence - 1,
                    records_dropped=self.records_dropped,
                )
            )
        )

    def _on_stream_closed(self, event: ev.StreamClosed, out: list[act.Action]) -> None:
        retry_after = event.error.retry_after if isinstance(event.error, TransientError) else None
        delay = self._config.backoff.delay(self._connect_attempt, self._rng, retry_after)
        self._connect_attempt += 1
        self._reconnect_at = self._clock() + delay
        self._next_heartbeat_at = None
        # Whatever was in flight was not acknowledged: it goes out again after reconnecting.
        self._pending.extendleft(reversed(self._inflight))
        self._inflight = ()
        self._trim_pending()
        if self._pending and self._oldest_pending_at is None:
            self._oldest_pending_at = self._clock()
        if self.link is Link.READY:
            log.warning(
                "device=%s control stream lost (%s); reconnecting in %.1fs",
                self.device_id,
                event.error,
                delay,
            )
        else:
            log.info("device=%s connect failed (%s); retrying in %.1fs", self.device_id, event.error, delay)
        self.link = Link.BACKOFF

    def _on_tick_backoff(self, event: ev.Tick, out: list[act.Action]) -> None:
        if self._reconnect_at is not None and self._clock() >= self._reconnect_at:
            self._open_stream(out)

    def _on_tick_enroll_backoff(self, event: ev.Tick, out: list[act.Action]) -> None:
        if self._reconnect_at is not None and self._clock() >= self._reconnect_at:
            self._reconnect_at = None
            self.link = Link.ENROLLING
            out.append(act.Enroll())

    def _on_message(self, event: ev.MessageReceived, out: list[act.Action]) -> None:
        msg = event.message
        if isinstance(msg, Welcome):
            self._on_welcome(msg, out)
        elif self.link is not Link.READY:
            log.warning("device=%s %s before welcome; ignored", self.device_id, type(msg).__name__)
        elif isinstance(msg, Assignment):
            self._on_assignment(msg, out)
        elif isinstance(msg, TelemetryAck):
            self._on_telemetry_ack(msg.up_to_sequence)

    def _on_welcome(self, msg: Welcome, out: list[act.Action]) -> None:
        self.link = Link.READY
        self._connect_attempt = 0
        if msg.heartbeat_interval_ms > 0:
            self._heartbeat_interval_s = msg.heartbeat_interval_ms / 1000.0
        self._next_heartbeat_at = self._clock() + self._heartbeat_interval_s
        if msg.telemetry_watermark >= self._next_sequence:
            self._skip_sequences_past(msg.telemetry_watermark, out)
        self._on_telemetry_ack(msg.telemetry_watermark)
        log.info("device=%s connected (acked_version=%d)", self.device_id, self.reported.acked_version)
        for ack in sorted(self._unsent_acks.values(), key=lambda a: a.version):
            out.append(act.Send(ack))
        self._unsent_acks.clear()

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
        if a.is_empty or a.artifact_sha256 == self.reported.active_sha256:
            self._applied(a, out)
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
        failure = event.failure or AssignmentFailure.ARTIFACT_NOT_FOUND
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
            self._applied(a, out)
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
                event.failure is AssignmentFailure.CHECKSUM_MISMATCH
                and self.target is None
                and applied is not None
                and applied.artifact_sha256 == a.artifact_sha256
            ):
                # The cached copy of what we acknowledged rotted on disk (the cache deleted it): heal by
                # downloading it again rather than silently serving nothing under an acked version.
                log.warning(
                    "device=%s cached model %s is corrupt; fetching it again",
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

    # --- telemetry ------------------------------------------------------------------------------

    def _on_inference(self, event: ev.InferenceDone, out: list[act.Action]) -> None:
        self._append_record(event.record, out)

    def _record_event(self, kind: str, message: str, a: Assignment) -> None:
        # Events are appended without persisting the reservation here; the caller persists a snapshot.
        self._append_record(
            DeviceEvent(kind=kind, message=message[: limits.MAX_TEXT_CHARS], assignment_version=a.version),
            None,
        )

    def _take_sequence(self, out: list[act.Action] | None) -> int:
        seq = self._next_sequence
        self._next_sequence += 1
        if seq > self._sequence_reserved_until:
            self._reserve(out)
        return seq

    def _reserve(self, out: list[act.Action] | None) -> None:
        """Persist a block of sequence numbers ahead of use (one write per SEQUENCE_BLOCK records)."""
        self._sequence_reserved_until = self._next_sequence + SEQUENCE_BLOCK - 1
        if out is not None:
            out.append(act.PersistSnapshot(self.snapshot()))

    def _append_record(self, body: InferenceRecord | DeviceEvent, out: list[act.Action] | None) -> None:
        seq = self._take_sequence(out)
        self._pending.append(TelemetryRecord(sequence=seq, timestamp_ms=self._wall_ms(), body=body))
        self._trim_pending()
        if self._oldest_pending_at is None:
            self._oldest_pending_at = self._clock()

    def _skip_sequences_past(self, watermark: int, out: list[act.Action]) -> None:
        """The controller holds sequences we never issued (our state was lost): renumber above them,
        or the controller's dedup would take our new records for ones it already has."""
        log.warning(
            "device=%s controller has telemetry up to %d, above our counter %d; renumbering",
            self.device_id,
            watermark,
            self._next_sequence,
        )
        self._next_sequence = watermark + 1
        self._pending = deque(replace(r, sequence=self._take_sequence(None)) for r in self._pending)
        self._reserve(out)

    def _trim_pending(self) -> None:
        """Bound memory: pending plus in-flight never exceed max_pending; the oldest go first, counted."""
        while self._pending and len(self._pending) + len(self._inflight) > self._config.max_pending:
            self._pending.popleft()
            self.records_dropped += 1

    def _on_telemetry_ack(self, up_to: int) -> None:
        if self._inflight and self._inflight[-1].sequence <= up_to:
            self._inflight = ()
        while self._pending and self._pending[0].sequence <= up_to:
            self._pending.popleft()
        if not self._pending:
            self._oldest_pending_at = None

    # --- timers (READY only) ----------------------------------------------------------------------

    def _on_time(self, out: list[act.Action]) -> None:
        now = self._clock()
        if self._next_heartbeat_at is not None and now >= self._next_heartbeat_at:
            out.append(act.Send(Heartbeat(sent_at_ms=self._wall_ms())))
            self._next_heartbeat_at = now + self._heartbeat_interval_s
        if self._inflight and now >= self._inflight_sent_at + self._config.telemetry_ack_timeout_s:
            self._inflight_sent_at = now
            out.append(act.Send(TelemetryBatch(self._inflight)))
        if not self._inflight and self._pending:
            due = (
                self._oldest_pending_at is not None
                and now >= self._oldest_pending_at + self._config.telemetry_flush_interval_s
            )
            if due or len(self._pending) >= self._config.max_batch:
                batch = tuple(
                    self._pending.popleft() for _ in range(min(self._config.max_batch, len(self._pending)))
                )
                self._inflight = batch
                self._inflight_sent_at = now
                self._oldest_pending_at = now if self._pending else None
                out.append(act.Send(TelemetryBatch(batch)))

    def _on_tick_any(self, event: ev.Tick, out: list[act.Action]) -> None:
        if self._fetch_retry_at is not None and self._clock() >= self._fetch_retry_at:
            self._fetch_retry_at = None
            if self.target is not None:
                out.append(act.FetchArtifact(self.target))


# Handlers take the concrete event type their key names; the table is what guarantees the match.
_Handler = Callable[[AgentCore, Any, list[act.Action]], None]


def _tick_backoff(core: AgentCore, event: ev.Tick, out: list[act.Action]) -> None:
    core._on_tick_any(event, out)
    core._on_tick_backoff(event, out)


def _tick_enroll_backoff(core: AgentCore, event: ev.Tick, out: list[act.Action]) -> None:
    core._on_tick_enroll_backoff(event, out)


_TRANSITIONS: dict[tuple[Link, type], _Handler] = {
    (Link.STARTING, ev.Started): AgentCore._on_started,
    (Link.ENROLLING, ev.EnrollSucceeded): AgentCore._on_enroll_succeeded,
    (Link.ENROLLING, ev.EnrollFailed): AgentCore._on_enroll_failed,
    (Link.ENROLL_BACKOFF, ev.Tick): _tick_enroll_backoff,
    (Link.CONNECTING, ev.StreamOpened): AgentCore._on_stream_opened,
    (Link.CONNECTING, ev.StreamClosed): AgentCore._on_stream_closed,
    (Link.AWAITING_WELCOME, ev.MessageReceived): AgentCore._on_message,
    (Link.AWAITING_WELCOME, ev.StreamClosed): AgentCore._on_stream_closed,
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
}
