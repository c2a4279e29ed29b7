"""Tests for the agent's sans-IO core (``agent.core``).

Everything runs on a fake clock that the tests move by hand: no sleeps, no threads, no I/O. Tests that
expose a known defect of the core are marked ``xfail(strict=True)`` with the reason starting "BUG:"
(or "QUESTIONABLE:"); once the core is fixed they XPASS, fail, and the marker has to go.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.core import AgentCore, CoreConfig, Link
from agent.core import actions as act
from agent.core import events as ev
from agent.core.backoff import BackoffPolicy
from agent.core.snapshot import AgentSnapshot, FailedVersion
from agent.core.telemetry import SEQUENCE_BLOCK, OutboxState, Telemetry
from common.errors import EdgefleetError, NotFound, PermanentError, TransientError, Unauthenticated
from common.types import (
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    BlockTiming,
    CallOverhead,
    DeviceEvent,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    InferenceRecord,
    LinkMeasurement,
    Outcome,
    ProfileBlock,
    ProfileReport,
    ProfileRequest,
    ReportedState,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Welcome,
)

IDENT = DeviceIdentity(device_id="dev-1", credential="cred-1")
HW = HardwareProfile(
    hardware_class="edge-npu",
    cpu_cores=4,
    memory_bytes=2**30,
    execution_providers=("CPUExecutionProvider",),
    os="linux",
    agent_version="0.1.0",
)
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64
EPOCH_MS = 1_700_000_000_000
#: Heartbeat interval used by tests that do not care about heartbeats (keeps them out of the way).
QUIET_HEARTBEAT_MS = 3_600_000


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        #: Set to make every reading fail (to check that the core contains its own exceptions).
        self.broken = False
        #: Set to let this many readings succeed and fail every one after (a failure mid-step).
        self.readings_left: int | None = None

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("clock exploded")
        if self.readings_left is not None:
            if self.readings_left <= 0:
                raise RuntimeError("clock exploded mid-step")
            self.readings_left -= 1
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def wall_ms(self) -> int:
        return EPOCH_MS + int(self.now * 1000)


def asg(version: int, sha: str, *, name: str = "digits", variant: str = "fp32") -> Assignment:
    return Assignment(
        version=version, model_name=name, variant=variant, artifact_sha256=sha, artifact_size_bytes=1234
    )


def rec(i: float) -> InferenceRecord:
    """An inference record told apart from the others by its latency."""
    return InferenceRecord(model_sha256=SHA_A, latency_ms=float(i), outcome=Outcome.OK)


def sent(actions: list[act.Action], kind: type | None = None) -> list[Any]:
    return [
        a.message
        for a in actions
        if isinstance(a, act.Send) and (kind is None or isinstance(a.message, kind))
    ]


def of_type(actions: list[act.Action], cls: type) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


def latencies(batch: TelemetryBatch) -> list[float]:
    return [r.body.latency_ms for r in batch.records if isinstance(r.body, InferenceRecord)]


def pending_records(core: AgentCore) -> list[TelemetryRecord]:
    """The telemetry records waiting to be batched, oldest first."""
    return list(core._telemetry.pending())


def state_of(core: AgentCore) -> dict[str, Any]:
    """Everything the core holds, in comparable form (to check that a step changed nothing)."""
    return _comparable(core, skip=("_clock", "_wall_ms", "_config"))


def _comparable(obj: object, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(obj).items():
        if key in skip:
            continue
        if key == "_rng":
            value = value.getstate()
        elif isinstance(value, Telemetry):
            value = _comparable(value)
        elif isinstance(value, deque):
            value = tuple(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[key] = value
    return out


OUTBOX_ACTIONS = (act.AppendTelemetry, act.DeleteTelemetry, act.LoadTelemetry, act.RenumberTelemetry)


class Harness:
    """One core, its fake clock and a log of every action it emitted."""

    def __init__(self, *, seed: int = 0, **config: Any) -> None:
        self.clock = FakeClock()
        self.config = CoreConfig(hardware=HW, **config)
        self.core = AgentCore(
            self.config, clock=self.clock, wall_clock_ms=self.clock.wall_ms, rng=random.Random(seed)
        )
        self.log: list[act.Action] = []
        self.outbox: dict[int, TelemetryRecord] = {}
        self.outbox_log: list[act.Action] = []
        self.loads: list[act.Action] = []

    def step(self, event: Any) -> list[act.Action]:
        """One step; returns its actions but the outbox's, which the harness carries out itself
        (``outbox``, by sequence) the way a driver would, logging them in ``outbox_log``."""
        out = self.core.step(event)
        assert isinstance(out, list)
        self.log.extend(out)
        kept = []
        for a in out:
            if isinstance(a, OUTBOX_ACTIONS):
                self.outbox_log.append(a)
                self._run_outbox(a)
            else:
                kept.append(a)
        return kept

    def _run_outbox(self, a: act.Action) -> None:
        match a:
            case act.AppendTelemetry(record=record):
                assert record.sequence not in self.outbox, "a sequence written twice"
                self.outbox[record.sequence] = record
            case act.DeleteTelemetry(up_to_sequence=up_to):
                for seq in [s for s in self.outbox if s <= up_to]:
                    del self.outbox[seq]
            case act.LoadTelemetry():
                self.loads.append(a)
            case act.RenumberTelemetry(start_at=start):
                ordered = [self.outbox[s] for s in sorted(self.outbox)]
                self.outbox = {start + i: replace(r, sequence=start + i) for i, r in enumerate(ordered)}

    def answer_load(self) -> list[act.Action]:
        """Answer the oldest LoadTelemetry from the harness's outbox."""
        load = self.loads.pop(0)
        assert isinstance(load, act.LoadTelemetry)
        records = tuple(self.outbox[s] for s in sorted(self.outbox) if s > load.after_sequence)[: load.limit]
        return self.step(ev.TelemetryLoaded(records, requested=load.limit))

    def recv(self, message: Any) -> list[act.Action]:
        return self.step(ev.MessageReceived(message))

    def tick(self, advance: float = 0.0) -> list[act.Action]:
        self.clock.advance(advance)
        return self.step(ev.Tick())

    def tick_at(self, t: float) -> list[act.Action]:
        assert t >= self.clock.now, "the fake clock never goes back"
        self.clock.now = t
        return self.step(ev.Tick())

    def wakeup(self) -> float:
        w = self.core.next_wakeup()
        assert w is not None
        return w

    def start(self, identity: DeviceIdentity | None = IDENT, snapshot: AgentSnapshot | None = None) -> list:
        return self.step(ev.Started(identity, snapshot))

    def connect(self, *, heartbeat_ms: int = QUIET_HEARTBEAT_MS, watermark: int = 0) -> list[act.Action]:
        """From CONNECTING: the stream opens and the controller welcomes us. Returns the welcome's actions."""
        assert self.core.link is Link.CONNECTING
        hello = self.step(ev.StreamOpened())
        assert len(sent(hello, Hello)) == 1
        return self.recv(Welcome(heartbeat_interval_ms=heartbeat_ms, telemetry_watermark=watermark))

    def ready(self, **kw: Any) -> list[act.Action]:
        self.start()
        out = self.connect(**kw)
        assert self.core.link is Link.READY
        return out

    def reconnect(self, **kw: Any) -> list[act.Action]:
        """From BACKOFF: wait out the delay, reopen, hello, welcome."""
        assert self.core.link is Link.BACKOFF
        assert of_type(self.tick_at(self.wakeup()), act.OpenStream)
        return self.connect(**kw)

    def apply(self, a: Assignment) -> list[act.Action]:
        """Run one assignment through fetch and load; returns the ModelLoaded step's actions."""
        assert self.recv(a) == [act.FetchArtifact(a)]
        assert self.step(ev.ArtifactReady(a)) == [act.LoadModel(a)]
        return self.step(ev.ModelLoaded(a))


# --- start-up and enrollment -----------------------------------------------------------------------


def test_first_boot_enrolls_persists_identity_then_connects_and_says_hello() -> None:
    h = Harness()
    assert h.start(identity=None) == [act.Enroll()]
    assert h.core.link is Link.ENROLLING

    assert h.step(ev.EnrollSucceeded(IDENT)) == [act.PersistIdentity(IDENT), act.OpenStream(IDENT)]
    assert h.core.link is Link.CONNECTING
    assert h.core.identity == IDENT

    out = h.step(ev.StreamOpened())
    assert out == [
        act.Send(Hello(hardware=HW, reported=ReportedState(), telemetry_watermark=0, records_dropped=0))
    ]
    assert h.core.link is Link.AWAITING_WELCOME

    assert h.recv(Welcome(heartbeat_interval_ms=5_000, telemetry_watermark=0)) == []
    assert h.core.link is Link.READY


def test_started_with_identity_connects_without_enrolling() -> None:
    h = Harness()
    assert h.start(identity=IDENT) == [act.OpenStream(IDENT)]
    assert h.core.link is Link.CONNECTING
    # The only deadline: the controller's welcome.
    assert h.core.next_wakeup() == pytest.approx(h.clock.now + h.config.welcome_timeout_s)


def test_no_identity_and_no_bootstrap_token_is_fatal() -> None:
    h = Harness(has_bootstrap_token=False)
    out = h.start(identity=None)
    assert len(out) == 1 and isinstance(out[0], act.Fatal)
    assert out[0].reason
    assert h.core.link is Link.FATAL
    assert h.tick(3600) == []


def test_started_twice_is_ignored() -> None:
    h = Harness()
    h.start()
    before = state_of(h.core)
    assert h.start(identity=None) == []
    assert state_of(h.core) == before


@pytest.mark.parametrize(
    "error", [Unauthenticated("token refused"), PermanentError("expired"), NotFound("x")]
)
def test_permanent_enroll_failure_is_fatal(error: PermanentError) -> None:
    h = Harness()
    h.start(identity=None)
    out = h.step(ev.EnrollFailed(error))
    assert len(out) == 1 and isinstance(out[0], act.Fatal)
    assert str(error) in out[0].reason
    assert h.core.link is Link.FATAL
    assert h.core.next_wakeup() is None
    assert h.tick(10_000) == []


def test_transient_enroll_failure_waits_for_backoff_then_enrolls_again() -> None:
    h = Harness(seed=3, backoff=BackoffPolicy(base_s=2.0, cap_s=30.0))
    h.start(identity=None)
    t0 = h.clock.now
    assert h.step(ev.EnrollFailed(TransientError("controller down"))) == []
    assert h.core.link is Link.ENROLL_BACKOFF
    wake = h.wakeup()
    delay = wake - t0
    assert 1e-3 < delay <= 2.0
    assert h.tick_at(wake - 1e-4) == []
    assert h.tick_at(wake) == [act.Enroll()]
    assert h.core.link is Link.ENROLLING
    assert h.core.next_wakeup() is None
    # The retried enrollment can succeed.
    assert h.step(ev.EnrollSucceeded(IDENT)) == [act.PersistIdentity(IDENT), act.OpenStream(IDENT)]


def test_enroll_backoff_ceiling_grows_with_attempts() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=64.0)
    worst = [0.0] * 6
    for seed in range(60):
        h = Harness(seed=seed, backoff=policy)
        h.start(identity=None)
        for attempt in range(6):
            t0 = h.clock.now
            assert h.step(ev.EnrollFailed(TransientError("down"))) == []
            delay = h.wakeup() - t0
            assert 0.0 <= delay <= policy.base_s * 2**attempt
            worst[attempt] = max(worst[attempt], delay)
            assert h.tick_at(h.wakeup()) == [act.Enroll()]
    # Later attempts wait (at least sometimes) longer than an earlier attempt's ceiling allows.
    for attempt in range(1, 6):
        assert worst[attempt] > policy.base_s * 2 ** (attempt - 1)


def test_enroll_retry_after_is_a_floor() -> None:
    h = Harness(backoff=BackoffPolicy(base_s=0.5, cap_s=30.0))
    h.start(identity=None)
    t0 = h.clock.now
    assert h.step(ev.EnrollFailed(TransientError("busy", retry_after=7.0))) == []
    assert t0 + 7.0 <= h.wakeup() <= t0 + 7.5  # the floor plus at most the first attempt's jitter
    assert h.tick_at(t0 + 6.99) == []
    assert h.tick_at(h.wakeup()) == [act.Enroll()]


@pytest.mark.parametrize("error", [PermanentError("refused"), Unauthenticated("bad token")])
def test_only_permanent_enroll_errors_are_fatal(error: PermanentError) -> None:
    h = Harness()
    h.start(identity=None)
    assert of_type(h.step(ev.EnrollFailed(error)), act.Fatal)


def test_enroll_failing_with_an_untyped_error_is_retried() -> None:
    # Neither transient nor permanent (e.g. the controller's INTERNAL before it mapped to transient):
    # enrollment is idempotent now, so retrying is the safe reading.
    h = Harness()
    h.start(identity=None)
    assert h.step(ev.EnrollFailed(EdgefleetError("internal error"))) == []
    assert h.core.link is Link.ENROLL_BACKOFF
    assert h.tick_at(h.wakeup()) == [act.Enroll()]


# --- heartbeats ------------------------------------------------------------------------------------


def test_heartbeat_is_sent_after_the_welcome_interval_and_not_before() -> None:
    h = Harness(heartbeat_interval_s=10.0)
    h.start()
    h.step(ev.StreamOpened())
    # No heartbeat while waiting for the welcome (up to the welcome timeout).
    assert h.tick(14.0) == []
    t0 = h.clock.now
    assert h.recv(Welcome(heartbeat_interval_ms=2_000, telemetry_watermark=0)) == []
    assert h.wakeup() == pytest.approx(t0 + 2.0)
    assert h.tick_at(t0 + 1.999) == []
    out = h.tick_at(t0 + 2.0)
    assert out == [act.Send(Heartbeat(sent_at_ms=h.clock.wall_ms()))]
    # And again one interval later, not twice in a row.
    assert h.tick() == []
    assert h.wakeup() == pytest.approx(t0 + 4.0)
    assert h.tick_at(t0 + 3.9) == []
    assert sent(h.tick_at(t0 + 4.0), Heartbeat)


def test_zero_heartbeat_interval_in_welcome_keeps_the_configured_one() -> None:
    h = Harness(heartbeat_interval_s=7.0)
    h.start()
    h.step(ev.StreamOpened())
    t0 = h.clock.now
    h.recv(Welcome(heartbeat_interval_ms=0, telemetry_watermark=0))
    assert h.wakeup() == pytest.approx(t0 + 7.0)
    assert h.tick_at(t0 + 6.5) == []
    assert sent(h.tick_at(t0 + 7.0), Heartbeat)


def test_no_heartbeats_while_disconnected() -> None:
    h = Harness()
    h.ready(heartbeat_ms=1_000)
    assert sent(h.tick(1.0), Heartbeat)
    t0 = h.clock.now
    h.step(ev.StreamClosed(TransientError("gone", retry_after=30.0)))
    assert h.wakeup() >= t0 + 30.0
    for _ in range(29):
        assert h.tick(1.0) == []
    assert h.tick_at(h.wakeup()) == [act.OpenStream(IDENT)]
    h.step(ev.StreamOpened())
    assert h.tick(5.0) == []  # still no heartbeat until welcomed again


# --- reconnecting ----------------------------------------------------------------------------------


def test_stream_closed_reconnects_only_after_the_delay() -> None:
    h = Harness(seed=1, backoff=BackoffPolicy(base_s=4.0, cap_s=30.0))
    h.ready()
    t0 = h.clock.now
    assert h.step(ev.StreamClosed(TransientError("reset"))) == []
    assert h.core.link is Link.BACKOFF
    wake = h.wakeup()
    assert 1e-3 < wake - t0 <= 4.0
    assert h.tick_at(wake - 1e-4) == []
    assert h.tick_at(wake) == [act.OpenStream(IDENT)]
    assert h.core.link is Link.CONNECTING
    assert h.core.next_wakeup() == pytest.approx(wake + h.config.welcome_timeout_s)
    # The new stream says hello again, with what the core knows now.
    assert sent(h.step(ev.StreamOpened()), Hello)


def test_connect_failure_before_welcome_backs_off_too() -> None:
    h = Harness(seed=2)
    h.start()
    assert h.step(ev.StreamClosed(TransientError("refused"))) == []
    assert h.core.link is Link.BACKOFF
    assert of_type(h.tick_at(h.wakeup()), act.OpenStream)
    h.step(ev.StreamOpened())
    assert h.step(ev.StreamClosed()) == []  # closed while awaiting the welcome
    assert h.core.link is Link.BACKOFF
    assert of_type(h.tick_at(h.wakeup()), act.OpenStream)


def test_stream_retry_after_is_a_floor() -> None:
    h = Harness(backoff=BackoffPolicy(base_s=0.5, cap_s=30.0))
    h.ready()
    t0 = h.clock.now
    h.step(ev.StreamClosed(TransientError("shedding", retry_after=5.0)))
    assert t0 + 5.0 <= h.wakeup() <= t0 + 5.5
    assert h.tick_at(t0 + 4.99) == []
    assert h.tick_at(h.wakeup()) == [act.OpenStream(IDENT)]


def test_reconnect_delays_are_jittered_capped_and_grow_with_attempts() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=8.0)
    attempts = 8
    delays: list[list[float]] = [[] for _ in range(attempts)]
    for seed in range(150):
        h = Harness(seed=seed, backoff=policy)
        h.ready()
        for attempt in range(attempts):
            t0 = h.clock.now
            assert h.step(ev.StreamClosed(TransientError("gone"))) == []
            delay = h.wakeup() - t0
            assert 0.0 <= delay <= min(policy.cap_s, policy.base_s * 2**attempt) + 1e-9
            delays[attempt].append(delay)
            assert h.tick_at(h.wakeup()) == [act.OpenStream(IDENT)]
    # Jitter: a fleet restarting together does not come back in lock-step.
    for attempt in range(attempts):
        assert len(set(delays[attempt])) > 140
    # Growth: the typical delay doubles until the cap, and later attempts exceed earlier ceilings.
    means = [statistics.mean(d) for d in delays]
    for attempt in range(1, 5):
        assert means[attempt] > 1.5 * means[attempt - 1]
        assert max(delays[attempt]) > policy.base_s * 2 ** (attempt - 1)
    for attempt in range(5, attempts):  # capped: base * 2**4 == 8 == cap
        assert means[attempt] == pytest.approx(policy.cap_s / 2, rel=0.25)


def test_reconnect_attempts_reset_after_a_welcome() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=60.0)
    for seed in range(40):
        h = Harness(seed=seed, backoff=policy)
        h.ready()
        for _ in range(6):
            h.step(ev.StreamClosed())
            h.tick_at(h.wakeup())
        h.connect()
        t0 = h.clock.now
        h.step(ev.StreamClosed())
        assert h.wakeup() - t0 <= policy.base_s


def test_stream_events_in_the_wrong_state_are_ignored() -> None:
    h = Harness()
    h.ready()
    before = state_of(h.core)
    assert h.step(ev.StreamOpened()) == []
    assert h.step(ev.EnrollSucceeded(DeviceIdentity("other", "x"))) == []
    assert h.step(ev.EnrollFailed(Unauthenticated("no"))) == []
    assert state_of(h.core) == before
    h.step(ev.StreamClosed())
    before = state_of(h.core)
    assert h.step(ev.StreamClosed()) == []  # already closed
    assert state_of(h.core) == before


# --- assignments -----------------------------------------------------------------------------------


def test_assignment_is_fetched_loaded_persisted_then_acked() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    assert h.recv(v1) == [act.FetchArtifact(v1)]
    assert h.core.target == v1
    assert h.step(ev.ArtifactReady(v1)) == [act.LoadModel(v1)]
    out = h.step(ev.ModelLoaded(v1))
    # Persist first, then ack: an ack must never get ahead of what survives a crash.
    assert [type(a) for a in out] == [act.PersistSnapshot, act.Send]
    snap = out[0].snapshot
    assert snap.active == v1
    assert snap.reported.acked_version == 1
    assert snap.reported.active_sha256 == SHA_A
    ack = out[1].message
    assert isinstance(ack, AssignmentAck)
    assert ack.version == 1
    assert ack.failure is None
    assert ack.reported.active_sha256 == SHA_A
    assert ack.reported.acked_version == 1
    assert ack.reported.active_model_name == "digits"
    assert ack.reported.active_variant == "fp32"
    assert h.core.active == v1
    assert h.core.target is None
    # A "model_swapped" device event went into telemetry.
    assert h.core.pending_telemetry == 1


def test_resent_assignment_is_reacked_without_refetching() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    first_ack = sent(h.apply(v1), AssignmentAck)[0]
    for _ in range(3):
        out = h.recv(v1)
        assert out == [act.Send(first_ack)]
    assert not of_type(h.log[-3:], act.FetchArtifact)


def test_assignment_for_the_active_sha_is_acked_without_fetching() -> None:
    h = Harness()
    h.ready()
    h.apply(asg(1, SHA_A))
    v2 = asg(2, SHA_A, name="digits-renamed")
    out = h.recv(v2)
    assert not of_type(out, act.FetchArtifact) and not of_type(out, act.LoadModel)
    acks = sent(out, AssignmentAck)
    assert len(acks) == 1 and acks[0].version == 2 and acks[0].failure is None
    assert acks[0].reported.active_sha256 == SHA_A
    assert h.core.reported.acked_version == 2
    assert of_type(out, act.PersistSnapshot)


def test_empty_assignment_is_acked_without_fetching() -> None:
    h = Harness()
    h.ready()
    out = h.recv(Assignment(version=1))
    assert not of_type(out, act.FetchArtifact)
    assert [a.version for a in sent(out, AssignmentAck)] == [1]
    assert h.core.reported.acked_version == 1


def test_newer_assignment_supersedes_the_one_being_fetched() -> None:
    h = Harness()
    h.ready()
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    assert h.recv(v1) == [act.FetchArtifact(v1)]
    assert h.recv(v2) == [act.FetchArtifact(v2)]
    assert h.core.target == v2
    # v1 finishing late (or failing) changes nothing.
    assert h.step(ev.ArtifactReady(v1)) == []
    assert h.step(ev.ArtifactFailed(v1, TransientError("slow"))) == []
    assert h.step(ev.ArtifactFailed(v1, PermanentError("gone"), AssignmentFailure.ARTIFACT_NOT_FOUND)) == []
    assert h.core.next_wakeup() == pytest.approx(h.clock.now + QUIET_HEARTBEAT_MS / 1000)
    # Nor does the controller repeating the older version.
    assert h.recv(v1) == []
    assert h.recv(v2) == []  # already working on it
    assert h.step(ev.ArtifactReady(v2)) == [act.LoadModel(v2)]
    acks = sent(h.step(ev.ModelLoaded(v2)), AssignmentAck)
    assert [(a.version, a.failure, a.reported.active_sha256) for a in acks] == [(2, None, SHA_B)]
    assert not [a for a in sent(h.log, AssignmentAck) if a.version == 1]


def test_older_assignment_version_is_not_applied_after_a_newer_one() -> None:
    h = Harness()
    h.ready()
    h.apply(asg(5, SHA_A))
    out = h.recv(asg(3, SHA_B))
    assert not of_type(out, act.FetchArtifact)
    assert h.core.reported.acked_version == 5
    assert all(a.version <= 5 for a in sent(out, AssignmentAck))


def test_last_known_good_becomes_the_previous_model_after_a_swap() -> None:
    h = Harness()
    h.ready()
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    h.apply(v1)
    assert h.core.reported.last_known_good_sha256 == ""
    out = h.apply(v2)
    assert h.core.active == v2
    assert h.core.reported.active_sha256 == SHA_B
    assert h.core.reported.last_known_good_sha256 == SHA_A
    assert h.core.snapshot().last_known_good == v1
    ack = sent(out, AssignmentAck)[0]
    assert ack.reported.last_known_good_sha256 == SHA_A
    persisted = of_type(out, act.PersistSnapshot)[-1].snapshot
    assert persisted.last_known_good == v1 and persisted.active == v2


# --- failures --------------------------------------------------------------------------------------


def test_model_load_failure_acks_the_failure_and_keeps_serving_last_known_good() -> None:
    h = Harness()
    h.ready()
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    h.apply(v1)
    assert h.recv(v2) == [act.FetchArtifact(v2)]
    assert h.step(ev.ArtifactReady(v2)) == [act.LoadModel(v2)]
    out = h.step(ev.ModelLoadFailed(v2, AssignmentFailure.LOAD_FAILED, "bad opset"))
    assert [type(a) for a in out] == [act.PersistSnapshot, act.Send]
    ack = out[1].message
    assert ack.version == 2
    assert ack.failure is AssignmentFailure.LOAD_FAILED
    assert ack.message == "bad opset"
    assert ack.reported.active_sha256 == SHA_A
    assert ack.reported.acked_version == 2
    assert h.core.active == v1
    assert out[0].snapshot.failed == FailedVersion(2, AssignmentFailure.LOAD_FAILED, "bad opset")
    assert out[0].snapshot.active == v1
    # The controller repeating v2 gets the same failure again, and nothing is refetched.
    for _ in range(2):
        assert h.recv(v2) == [act.Send(ack)]
    # The failure was recorded as a device event.
    events = [r.body for r in pending_records(h.core) if isinstance(r.body, DeviceEvent)]
    assert any(e.kind == "assignment_failed" and e.assignment_version == 2 for e in events)


def test_long_failure_message_is_truncated() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    h.step(ev.ArtifactReady(v1))
    out = h.step(ev.ModelLoadFailed(v1, AssignmentFailure.SMOKE_TEST_FAILED, "x" * 10_000))
    ack = sent(out, AssignmentAck)[0]
    assert 0 < len(ack.message) <= 2_000


def test_permanent_artifact_failure_acks_the_failure_and_never_retries() -> None:
    h = Harness()
    h.ready()
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    h.apply(v1)
    h.recv(v2)
    out = h.step(
        ev.ArtifactFailed(v2, PermanentError("sha256 mismatch"), AssignmentFailure.CHECKSUM_MISMATCH)
    )
    acks = sent(out, AssignmentAck)
    assert len(acks) == 1
    assert acks[0].version == 2
    assert acks[0].failure is AssignmentFailure.CHECKSUM_MISMATCH
    assert "sha256 mismatch" in acks[0].message
    assert acks[0].reported.active_sha256 == SHA_A
    assert h.core.target is None
    for _ in range(5):
        assert not of_type(h.tick(600.0), act.FetchArtifact)


def test_permanent_artifact_failure_without_a_reason_reports_not_found() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    acks = sent(h.step(ev.ArtifactFailed(v1, NotFound("no such artifact"))), AssignmentAck)
    assert [(a.version, a.failure) for a in acks] == [(1, AssignmentFailure.ARTIFACT_NOT_FOUND)]


def test_transient_artifact_failure_refetches_only_after_backoff() -> None:
    fetch = BackoffPolicy(base_s=4.0, cap_s=60.0)
    h = Harness(seed=5, fetch_backoff=fetch)
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    for attempt in range(4):
        t0 = h.clock.now
        assert h.step(ev.ArtifactFailed(v1, TransientError("connection reset"))) == []
        wake = h.wakeup()  # heartbeats are an hour away, so this is the fetch retry
        assert 1e-3 < wake - t0 <= fetch.base_s * 2**attempt
        assert h.tick_at(wake - 1e-4) == []
        assert h.tick_at(wake) == [act.FetchArtifact(v1)]
        assert h.tick(1000.0 if attempt == 3 else 0.0) == []  # one retry per failure
    assert not sent(h.log, AssignmentAck)
    assert h.step(ev.ArtifactReady(v1)) == [act.LoadModel(v1)]


def test_transient_artifact_failure_honours_retry_after() -> None:
    h = Harness(fetch_backoff=BackoffPolicy(base_s=0.1, cap_s=60.0))
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    t0 = h.clock.now
    h.step(ev.ArtifactFailed(v1, TransientError("rate limited", retry_after=30.0)))
    assert t0 + 30.0 <= h.wakeup() <= t0 + 30.1
    assert h.tick_at(t0 + 29.9) == []
    assert h.tick_at(h.wakeup()) == [act.FetchArtifact(v1)]


def test_fetch_retries_continue_while_disconnected() -> None:
    h = Harness(fetch_backoff=BackoffPolicy(base_s=1.0, cap_s=1.0), backoff=BackoffPolicy(1000.0, 1000.0))
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    h.step(ev.StreamClosed())
    h.step(ev.ArtifactFailed(v1, TransientError("reset")))
    assert h.tick_at(h.clock.now + 1.0) == [act.FetchArtifact(v1)]


def test_acks_produced_while_disconnected_are_sent_after_the_next_welcome() -> None:
    h = Harness()
    h.ready()
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    h.apply(v1)
    h.recv(v2)
    h.step(ev.StreamClosed())
    assert h.step(ev.ArtifactReady(v2)) == [act.LoadModel(v2)]
    out = h.step(ev.ModelLoaded(v2))
    assert of_type(out, act.PersistSnapshot)
    assert not sent(out)  # nowhere to send it
    assert of_type(h.tick_at(h.wakeup()), act.OpenStream)
    hello = sent(h.step(ev.StreamOpened()), Hello)[0]
    assert hello.reported.acked_version == 2
    assert not sent(h.log[-1:], AssignmentAck)  # not before the welcome
    out = h.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=0))
    acks = sent(out, AssignmentAck)
    assert [(a.version, a.failure, a.reported.active_sha256) for a in acks] == [(2, None, SHA_B)]
    # Sent once: the next reconnect does not repeat it.
    h.step(ev.StreamClosed())
    assert not sent(h.reconnect(), AssignmentAck)


def test_failure_acks_produced_while_disconnected_are_sent_after_the_next_welcome() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    h.step(ev.StreamClosed())
    h.step(ev.ArtifactFailed(v1, PermanentError("bad"), AssignmentFailure.CHECKSUM_MISMATCH))
    acks = sent(h.reconnect(), AssignmentAck)
    assert [(a.version, a.failure) for a in acks] == [(1, AssignmentFailure.CHECKSUM_MISMATCH)]


def test_assignment_before_welcome_is_ignored() -> None:
    h = Harness()
    h.start()
    h.step(ev.StreamOpened())
    before = state_of(h.core)
    assert h.recv(asg(1, SHA_A)) == []
    assert state_of(h.core) == before


# --- telemetry -------------------------------------------------------------------------------------


def test_telemetry_is_batched_until_the_flush_interval_with_increasing_sequences() -> None:
    h = Harness(telemetry_flush_interval_s=1.0)
    h.ready()
    t0 = h.clock.now
    for i in range(3):
        assert not sent(h.step(ev.InferenceDone(rec(i))))
        h.clock.advance(0.1)
    assert not sent(h.log, TelemetryBatch)
    assert h.wakeup() == pytest.approx(t0 + 1.0)
    assert h.tick_at(t0 + 0.99) == []
    out = h.tick_at(t0 + 1.0)
    batches = sent(out, TelemetryBatch)
    assert len(batches) == 1
    seqs = [r.sequence for r in batches[0].records]
    assert latencies(batches[0]) == [0.0, 1.0, 2.0]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] >= 1
    stamps = [r.timestamp_ms for r in batches[0].records]
    assert stamps == [EPOCH_MS + int((t0 + 0.1 * i) * 1000) for i in range(3)]


def test_each_record_names_the_assignment_it_was_served_under() -> None:
    """The controller checks a request against the plan it ran under, so the core stamps the
    version in force when the request finished (an agent that set one itself is left alone)."""
    h = Harness(telemetry_flush_interval_s=1.0)
    h.ready()
    h.step(ev.InferenceDone(rec(0)))  # before any assignment
    h.apply(asg(1, SHA_A))
    h.step(ev.InferenceDone(rec(1)))
    h.apply(asg(2, SHA_B))
    h.step(ev.InferenceDone(rec(2)))
    h.step(ev.InferenceDone(replace(rec(3), assignment_version=1)))  # finished under v1, recorded now
    records = [r for b in sent(h.tick(1.0), TelemetryBatch) for r in b.records]
    records = [r for r in records if isinstance(r.body, InferenceRecord)]  # not the model-swap events
    assert [(r.body.latency_ms, r.body.assignment_version) for r in records] == [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 1),
    ]


def test_first_record_persists_a_sequence_reservation() -> None:
    h = Harness()
    h.ready()
    out = h.step(ev.InferenceDone(rec(0)))
    snaps = of_type(out, act.PersistSnapshot)
    assert len(snaps) == 1 and snaps[0].snapshot.sequence_reserved_until >= 1
    # The rest of the block is used without persisting again.
    for i in range(1, 50):
        assert not of_type(h.step(ev.InferenceDone(rec(i))), act.PersistSnapshot)


def test_full_batch_is_sent_at_once_and_only_one_batch_is_in_flight() -> None:
    h = Harness(max_batch=4, telemetry_flush_interval_s=100.0, telemetry_ack_timeout_s=1000.0)
    h.ready()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    assert not sent(h.log, TelemetryBatch)
    out = h.step(ev.InferenceDone(rec(3)))
    batches = sent(out, TelemetryBatch)
    assert len(batches) == 1 and latencies(batches[0]) == [0, 1, 2, 3]
    for i in range(4, 12):
        assert not sent(h.step(ev.InferenceDone(rec(i))), TelemetryBatch)
    assert h.core.pending_telemetry == 12
    out = h.recv(TelemetryAck(batches[0].records[-1].sequence))
    nxt = sent(out, TelemetryBatch)
    assert len(nxt) == 1 and latencies(nxt[0]) == [4, 5, 6, 7]


def test_batch_is_resent_after_the_ack_timeout_not_before() -> None:
    h = Harness(telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=15.0)
    h.ready()
    h.step(ev.InferenceDone(rec(0)))
    h.step(ev.InferenceDone(rec(1)))
    first = sent(h.tick(1.0), TelemetryBatch)[0]
    t_sent = h.clock.now
    assert h.wakeup() == pytest.approx(t_sent + 15.0)
    # New records meanwhile wait: one batch in flight at a time.
    h.step(ev.InferenceDone(rec(2)))
    assert not sent(h.tick_at(t_sent + 14.9), TelemetryBatch)
    again = sent(h.tick_at(t_sent + 15.0), TelemetryBatch)
    assert again == [first]  # same records, same sequence numbers
    assert not sent(h.tick(1.0), TelemetryBatch)
    assert sent(h.tick_at(t_sent + 30.0), TelemetryBatch) == [first]


def test_telemetry_ack_clears_the_batch() -> None:
    h = Harness(telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=5.0)
    h.ready()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    batch = sent(h.tick(1.0), TelemetryBatch)[0]
    # A partial ack leaves the rest of the batch, which goes out again after the timeout.
    h.recv(TelemetryAck(batch.records[0].sequence))
    assert h.core.pending_telemetry == 2
    assert sent(h.tick(5.0), TelemetryBatch) == [TelemetryBatch(batch.records[1:])]
    h.recv(TelemetryAck(batch.records[-1].sequence))
    assert h.core.pending_telemetry == 0
    for _ in range(5):
        assert not sent(h.tick(10.0), TelemetryBatch)


def test_inflight_batch_and_newer_records_are_resent_in_order_after_reconnect() -> None:
    h = Harness(telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.ready()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    first = sent(h.tick(1.0), TelemetryBatch)[0]
    h.step(ev.InferenceDone(rec(3)))
    h.step(ev.InferenceDone(rec(4)))
    h.step(ev.StreamClosed())
    assert h.core.pending_telemetry == 5
    h.reconnect()
    h.tick(1.0)
    batches = sent(h.log, TelemetryBatch)[1:]
    assert len(batches) == 1
    assert latencies(batches[0]) == [0, 1, 2, 3, 4]
    assert batches[0].records[:3] == first.records  # same sequence numbers, same order
    seqs = [r.sequence for r in batches[0].records]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


def test_inflight_batch_alone_is_resent_after_reconnect() -> None:
    h = Harness(telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.ready()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    first = sent(h.tick(1.0), TelemetryBatch)[0]
    h.step(ev.StreamClosed())
    assert h.core.pending_telemetry == 3
    h.reconnect()
    for _ in range(10):
        h.tick(1.0)
    assert sent(h.log, TelemetryBatch)[1:2] == [first]


def test_welcome_watermark_drops_records_the_controller_already_has() -> None:
    h = Harness(telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.ready()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    first = sent(h.tick(1.0), TelemetryBatch)[0]
    h.step(ev.InferenceDone(rec(3)))
    h.step(ev.StreamClosed())
    # The controller stored the batch but its ack was lost.
    h.reconnect(watermark=first.records[-1].sequence)
    assert h.core.pending_telemetry == 1
    h.tick(1.0)
    batches = sent(h.log, TelemetryBatch)[1:]
    assert [latencies(b) for b in batches] == [[3.0]]


def test_records_made_offline_are_flushed_right_after_the_welcome() -> None:
    h = Harness(telemetry_flush_interval_s=1.0)
    h.start()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    h.clock.advance(5.0)
    assert not sent(h.log, TelemetryBatch)
    out = h.connect()
    batches = sent(out, TelemetryBatch)
    assert len(batches) == 1 and latencies(batches[0]) == [0, 1, 2]


def drain(h: Harness, rounds: int = 40) -> list[float]:
    """Run the link until the outbox is empty: answer loads, ack every batch; the latencies sent."""
    got: list[float] = []
    seen = 0
    for _ in range(rounds):
        if h.loads:
            h.answer_load()
        h.tick(1.0)
        batches = sent(h.log, TelemetryBatch)[seen:]
        seen += len(batches)
        for b in batches:
            got += latencies(b)
            h.recv(TelemetryAck(b.records[-1].sequence))
        if not h.outbox and not h.loads:
            break
    return got


def test_memory_holds_a_window_and_the_rest_waits_in_the_outbox_in_order() -> None:
    h = Harness(max_pending=5, max_batch=2, telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.start()  # connecting: nothing can be sent
    for i in range(8):
        h.step(ev.InferenceDone(rec(i)))
    # Every record is in the outbox; memory holds the oldest five; nothing is dropped.
    assert sorted(h.outbox) == list(range(1, 9))
    assert [r.body.latency_ms for r in h.core._telemetry.pending()] == [0, 1, 2, 3, 4]
    assert h.core.pending_telemetry == 8 and h.core.records_dropped == 0
    h.connect()
    assert drain(h) == [float(i) for i in range(8)]  # each once, in order
    assert h.outbox == {} and h.core.pending_telemetry == 0


def test_pending_bound_holds_after_the_inflight_batch_is_requeued() -> None:
    h = Harness(max_pending=6, max_batch=4, telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.ready()
    for i in range(4):
        h.step(ev.InferenceDone(rec(i)))  # a full batch: sent at once
    assert len(sent(h.log, TelemetryBatch)) == 1
    for i in range(4, 10):
        h.step(ev.InferenceDone(rec(i)))  # memory is now at its bound
    h.step(ev.StreamClosed())
    h.step(ev.InferenceDone(rec(10)))
    t = h.core._telemetry
    assert len(list(t.pending())) + len(t.inflight) <= 6
    assert len(h.outbox) == 11 and t.waiting == 11


def test_records_reach_the_outbox_before_any_batch_carries_them_and_acks_delete_them() -> None:
    h = Harness(max_batch=2, telemetry_flush_interval_s=1.0)
    h.ready()
    h.step(ev.InferenceDone(rec(1)))
    h.step(ev.InferenceDone(rec(2)))  # a full batch: sent in this same step
    kinds = [
        type(a)
        for a in h.log
        if isinstance(a, act.AppendTelemetry)
        or (isinstance(a, act.Send) and isinstance(a.message, TelemetryBatch))
    ]
    assert kinds.index(act.AppendTelemetry) < kinds.index(act.Send)
    assert kinds.count(act.AppendTelemetry) == 2 and kinds[-1] is act.Send
    (batch,) = sent(h.log, TelemetryBatch)
    h.recv(TelemetryAck(batch.records[-1].sequence))
    assert act.DeleteTelemetry(batch.records[-1].sequence) in h.outbox_log
    assert h.outbox == {}


def test_restart_sends_what_the_outbox_kept_and_numbers_new_records_above_it() -> None:
    h1 = Harness()
    h1.start()
    for i in range(3):
        h1.step(ev.InferenceDone(rec(i)))
    kept = dict(h1.outbox)  # the process dies: only the outbox and the snapshot survive
    snap = h1.core.snapshot()

    h2 = Harness()
    h2.outbox = kept
    first, last = min(kept), max(kept)
    h2.step(ev.Started(IDENT, snap, OutboxState(len(kept), first, last)))
    assert h2.loads and h2.loads[0] == act.LoadTelemetry(after_sequence=0, limit=h2.config.max_pending)
    h2.answer_load()
    assert h2.core.pending_telemetry == 3
    h2.step(ev.InferenceDone(rec(99)))
    assert max(h2.outbox) > last and len(h2.outbox) == 4
    h2.connect()
    batches = sent(h2.tick(1.0), TelemetryBatch)
    assert [latencies(b) for b in batches] == [[0, 1, 2, 99]]


def test_outbox_drops_are_counted_reported_and_persisted() -> None:
    h = Harness()
    h.start()
    for i in range(5):
        h.step(ev.InferenceDone(rec(i)))
    for seq in (1, 2, 3):
        del h.outbox[seq]
    out = h.step(ev.OutboxTrimmed(dropped=3, first_sequence=1, last_sequence=3))
    assert h.core.records_dropped == 3
    assert of_type(out, act.PersistSnapshot)[-1].snapshot.records_dropped == 3
    assert [r.sequence for r in h.core._telemetry.pending()] == [4, 5]  # memory matches the outbox
    hello = sent(h.step(ev.StreamOpened()), Hello)[0]
    assert hello.records_dropped == 3


def test_records_made_while_a_load_is_out_wait_their_turn() -> None:
    h = Harness(max_pending=4, max_batch=2, telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.ready()
    for i in range(8):
        h.step(ev.InferenceDone(rec(i)))  # the first two go out at once, memory fills, the rest waits
    assert h.core._telemetry.unloaded > 0
    seen = 0
    for round_ in range(30):
        if round_ % 3 == 1:
            h.step(ev.InferenceDone(rec(100 + round_)))  # more, some while a load is out
        if h.loads and round_ % 2:
            h.answer_load()
        h.tick(1.0)
        batches = sent(h.log, TelemetryBatch)[seen:]
        seen += len(batches)
        for b in batches:
            h.recv(TelemetryAck(b.records[-1].sequence))
    drain(h)
    first_sends: dict[int, float] = {}
    for b in sent(h.log, TelemetryBatch):
        for r in b.records:
            assert isinstance(r.body, InferenceRecord)
            first_sends.setdefault(r.sequence, r.body.latency_ms)
    made = sorted(
        (a.record for a in h.outbox_log if isinstance(a, act.AppendTelemetry)), key=lambda r: r.sequence
    )
    # Every record went out, first in sequence order, none skipped.
    assert list(first_sends) == [r.sequence for r in made]
    assert h.outbox == {}


# --- restart ---------------------------------------------------------------------------------------


def test_restart_serves_the_active_model_before_connecting() -> None:
    h1 = Harness()
    h1.ready()
    v1 = asg(1, SHA_A)
    h1.apply(v1)
    snap = of_type(h1.log, act.PersistSnapshot)[-1].snapshot

    h2 = Harness()
    out = h2.start(IDENT, snap)
    assert out == [act.LoadModel(v1, restore=True), act.OpenStream(IDENT)]
    assert h2.core.active == v1
    assert h2.core.reported == snap.reported
    # It serves (and reports) the model without any controller.
    loaded = h2.step(ev.ModelLoaded(v1))
    assert not sent(loaded, AssignmentAck)
    assert h2.core.reported.active_sha256 == SHA_A
    hello = sent(h2.step(ev.StreamOpened()), Hello)[0]
    assert hello.reported.acked_version == 1
    assert hello.reported.active_sha256 == SHA_A
    # The controller repeating v1 gets an ack, not a fetch.
    h2.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=0))
    out = h2.recv(v1)
    assert not of_type(out, act.FetchArtifact)
    assert [a.version for a in sent(out, AssignmentAck)] == [1]


def test_restart_without_identity_restores_model_then_enrolls() -> None:
    snap = AgentSnapshot(reported=ReportedState(acked_version=1, active_sha256=SHA_A), active=asg(1, SHA_A))
    h = Harness()
    assert h.start(None, snap) == [act.LoadModel(asg(1, SHA_A), restore=True), act.Enroll()]


def _max_sequence_used(actions: list[act.Action], core: AgentCore) -> int:
    seqs = [r.sequence for b in sent(actions, TelemetryBatch) for r in b.records]
    seqs += [r.sequence for r in pending_records(core)] + [r.sequence for r in core._telemetry.inflight]
    return max(seqs)


def test_restart_never_reuses_a_sequence_number() -> None:
    h1 = Harness(max_batch=50, telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=10_000.0)
    h1.ready()
    for i in range(int(SEQUENCE_BLOCK * 1.5)):
        h1.step(ev.InferenceDone(rec(i)))
    h1.tick(1.0)
    used = _max_sequence_used(h1.log, h1.core)
    assert used == int(SEQUENCE_BLOCK * 1.5)
    # The driver only ever wrote what PersistSnapshot handed it: restart from the last of those.
    persisted = of_type(h1.log, act.PersistSnapshot)[-1].snapshot

    h2 = Harness()
    h2.start(IDENT, persisted)
    hello = sent(h2.step(ev.StreamOpened()), Hello)[0]
    assert hello.telemetry_watermark >= used
    h2.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=0))
    for i in range(3):
        h2.step(ev.InferenceDone(rec(10_000 + i)))
    new = [r.sequence for r in pending_records(h2.core)]
    assert min(new) > used
    assert new == sorted(new)


def test_restart_never_reuses_a_sequence_taken_by_a_device_event() -> None:
    # Use the whole first block on inference records, so the "model_swapped" event starts a new block:
    # its reservation reaches disk only through the PersistSnapshot that precedes the ack.
    h1 = Harness(telemetry_flush_interval_s=10_000.0, max_batch=10_000)
    h1.ready()
    for i in range(SEQUENCE_BLOCK):
        h1.step(ev.InferenceDone(rec(i)))
    h1.apply(asg(1, SHA_A))
    used = _max_sequence_used(h1.log, h1.core)
    assert used == SEQUENCE_BLOCK + 1
    persisted = of_type(h1.log, act.PersistSnapshot)[-1].snapshot

    h2 = Harness()
    h2.start(IDENT, persisted)
    h2.step(ev.InferenceDone(rec(-1)))
    assert pending_records(h2.core)[0].sequence > used


def test_restart_keeps_records_dropped_and_failed_version() -> None:
    snap = AgentSnapshot(
        reported=ReportedState(acked_version=2, active_sha256=SHA_A),
        active=asg(1, SHA_A),
        sequence_reserved_until=2000,
        records_dropped=17,
        failed=FailedVersion(2, AssignmentFailure.LOAD_FAILED, "bad"),
    )
    h = Harness()
    h.start(IDENT, snap)
    hello = sent(h.step(ev.StreamOpened()), Hello)[0]
    assert hello.records_dropped == 17
    assert hello.telemetry_watermark == 2000
    h.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=0))
    out = h.recv(asg(2, SHA_B))
    assert not of_type(out, act.FetchArtifact)
    acks = sent(out, AssignmentAck)
    assert [(a.version, a.failure, a.message) for a in acks] == [(2, AssignmentFailure.LOAD_FAILED, "bad")]


def test_restored_model_that_fails_to_load_falls_back_to_last_known_good() -> None:
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    h1 = Harness()
    h1.ready()
    h1.apply(v1)
    h1.apply(v2)
    snap = h1.core.snapshot()
    assert snap.active == v2 and snap.last_known_good == v1

    h2 = Harness()
    assert h2.start(IDENT, snap)[0] == act.LoadModel(v2, restore=True)
    out = h2.step(ev.ModelLoadFailed(v2, AssignmentFailure.LOAD_FAILED, "file corrupt"))
    assert of_type(out, act.LoadModel) == [act.LoadModel(v1, restore=True)]
    assert not sent(out, AssignmentAck)
    assert h2.core.reported.active_sha256 == ""
    assert h2.core.reported.acked_version == 2  # the controller's v2 stays acknowledged
    h2.step(ev.ModelLoaded(v1))
    assert h2.core.active == v1
    assert h2.core.reported.active_sha256 == SHA_A
    assert h2.core.snapshot().active == v1


def test_restored_model_failing_without_last_known_good_serves_nothing() -> None:
    v1 = asg(1, SHA_A)
    snap = AgentSnapshot(reported=ReportedState(acked_version=1, active_sha256=SHA_A), active=v1)
    h = Harness()
    h.start(IDENT, snap)
    out = h.step(ev.ModelLoadFailed(v1, AssignmentFailure.LOAD_FAILED, "gone"))
    assert not of_type(out, act.LoadModel)
    assert h.core.active is None
    assert h.core.reported.active_sha256 == ""
    assert of_type(out, act.PersistSnapshot)[-1].snapshot.active is None


def test_restored_model_corrupt_on_disk_is_fetched_again_and_reacked() -> None:
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    snap = AgentSnapshot(
        reported=ReportedState(acked_version=2, active_sha256=SHA_B, last_known_good_sha256=SHA_A),
        active=v2,
        last_known_good=v1,
    )
    h = Harness()
    h.start(IDENT, snap)
    out = h.step(ev.ModelLoadFailed(v2, AssignmentFailure.CHECKSUM_MISMATCH, "cache rotted"))
    # Serve the last-known-good meanwhile, and heal the acknowledged model by downloading it again.
    assert of_type(out, act.LoadModel) == [act.LoadModel(v1, restore=True)]
    assert of_type(out, act.FetchArtifact) == [act.FetchArtifact(v2)]
    h.step(ev.ModelLoaded(v1))
    assert of_type(h.step(ev.ArtifactReady(v2)), act.LoadModel) == [act.LoadModel(v2)]
    h.step(ev.StreamOpened())
    h.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=0))
    out = h.step(ev.ModelLoaded(v2))
    assert h.core.reported.active_sha256 == SHA_B
    assert [(a.version, a.failure) for a in sent(out, AssignmentAck)] == [(2, None)]


def test_restored_model_that_cannot_load_is_not_refetched_in_a_loop() -> None:
    v1 = asg(1, SHA_A)
    snap = AgentSnapshot(reported=ReportedState(acked_version=1, active_sha256=SHA_A), active=v1)
    h = Harness()
    h.start(IDENT, snap)
    out = h.step(ev.ModelLoadFailed(v1, AssignmentFailure.LOAD_FAILED, "onnxruntime refused it"))
    assert not of_type(out, act.FetchArtifact)


def test_last_known_good_failing_too_does_not_loop() -> None:
    v1, v2 = asg(1, SHA_A), asg(2, SHA_B)
    snap = AgentSnapshot(
        reported=ReportedState(acked_version=2, active_sha256=SHA_B, last_known_good_sha256=SHA_A),
        active=v2,
        last_known_good=v1,
    )
    h = Harness()
    h.start(IDENT, snap)
    h.step(ev.ModelLoadFailed(v2, AssignmentFailure.LOAD_FAILED, "x"))
    out = h.step(ev.ModelLoadFailed(v1, AssignmentFailure.LOAD_FAILED, "y"))
    assert not of_type(out, act.LoadModel)
    assert h.core.active is None


# --- step never raises -----------------------------------------------------------------------------


class _Weird:
    pass


def _garbage_events() -> list[Any]:
    return [
        _Weird(),
        object(),
        None,
        42,
        "Tick",
        ev.MessageReceived(TelemetryAck(up_to_sequence=10**9)),
        ev.MessageReceived(_Weird()),  # type: ignore[arg-type]
        ev.StreamOpened(),
        ev.EnrollSucceeded(DeviceIdentity("x", "y")),
    ]


@pytest.mark.parametrize("where", ["starting", "connecting", "awaiting_welcome", "backoff", "fatal"])
def test_garbage_is_ignored_and_changes_nothing(where: str) -> None:
    h = Harness(has_bootstrap_token=where != "fatal", telemetry_flush_interval_s=1.0)
    if where == "fatal":
        h.start(identity=None)
    elif where != "starting":
        h.start()
    if where == "awaiting_welcome":
        h.step(ev.StreamOpened())
    if where == "backoff":
        h.step(ev.StreamClosed())
    h.step(ev.InferenceDone(rec(0)))
    link = h.core.link
    for event in _garbage_events():
        if where == "connecting" and isinstance(event, ev.StreamOpened):
            continue  # a real event there
        before = state_of(h.core)
        out = h.core.step(event)
        assert out == []
        assert state_of(h.core) == before
    assert h.core.link is link


def test_garbage_when_ready_changes_nothing() -> None:
    h = Harness(telemetry_flush_interval_s=1.0)
    h.ready()
    h.step(ev.InferenceDone(rec(0)))
    for event in [*_garbage_events()[:5], ev.MessageReceived(_Weird())]:  # type: ignore[arg-type]
        before = state_of(h.core)
        assert h.core.step(event) == []
        assert state_of(h.core) == before


def test_telemetry_ack_before_welcome_is_ignored() -> None:
    h = Harness()
    h.start()
    for i in range(3):
        h.step(ev.InferenceDone(rec(i)))
    h.step(ev.StreamOpened())
    before = state_of(h.core)
    assert h.recv(TelemetryAck(up_to_sequence=10**6)) == []
    assert state_of(h.core) == before
    assert h.core.pending_telemetry == 3


def test_step_never_raises_when_a_handler_fails() -> None:
    h = Harness()
    h.ready()
    h.apply(asg(1, SHA_A))
    bad_events = [
        ev.MessageReceived(Welcome(heartbeat_interval_ms=None, telemetry_watermark=0)),  # type: ignore[arg-type]
        ev.MessageReceived(Welcome(heartbeat_interval_ms="soon", telemetry_watermark="x")),  # type: ignore[arg-type]
        ev.ModelLoaded(None),  # type: ignore[arg-type]
        ev.ModelLoadFailed(None, AssignmentFailure.LOAD_FAILED, "x"),  # type: ignore[arg-type]
        ev.MessageReceived(TelemetryAck(up_to_sequence=None)),  # type: ignore[arg-type]
    ]
    for event in bad_events:
        assert isinstance(h.core.step(event), list)
    h.clock.broken = True
    for event in [ev.Tick(), ev.InferenceDone(rec(0)), ev.StreamClosed(), ev.MessageReceived(asg(2, SHA_B))]:
        assert isinstance(h.core.step(event), list)
    h.clock.broken = False
    assert isinstance(h.core.step(ev.Tick()), list)


def test_exception_inside_a_handler_leaves_state_unchanged() -> None:
    h = Harness()
    h.start()
    h.step(ev.StreamOpened())
    before = state_of(h.core)
    bad = Welcome(heartbeat_interval_ms=None, telemetry_watermark=0)  # type: ignore[arg-type]
    assert h.recv(bad) == []
    assert state_of(h.core) == before


# --- defects around superseded work ----------------------------------------------------------------


def test_superseded_fetch_retry_does_not_leave_a_stale_wakeup() -> None:
    h = Harness()
    h.ready()
    v1, v2, v3 = asg(1, SHA_A), asg(2, SHA_B), asg(3, SHA_A)
    h.apply(v1)
    h.recv(v2)
    h.step(ev.ArtifactFailed(v2, TransientError("reset")))
    h.recv(v3)  # roll back to the model already serving: acked at once, v2 abandoned
    h.tick(600.0)
    assert not of_type(h.log[-1:], act.FetchArtifact)
    assert h.wakeup() > h.clock.now


def test_late_load_of_a_superseded_assignment_does_not_override_a_newer_ack() -> None:
    h = Harness()
    h.ready()
    v1, v2, v3 = asg(1, SHA_A), asg(2, SHA_B), asg(3, SHA_A)
    h.apply(v1)
    h.recv(v2)
    assert h.step(ev.ArtifactReady(v2)) == [act.LoadModel(v2)]
    h.recv(v3)  # operator rolls back to A while B is still loading; acked at once
    out = h.step(ev.ModelLoaded(v2))
    reloads_a = any(isinstance(a, act.LoadModel) and a.assignment.artifact_sha256 == SHA_A for a in out)
    assert h.core.reported.active_sha256 == SHA_A or reloads_a


def test_welcome_watermark_above_own_counter_moves_sequences_past_it() -> None:
    h = Harness()
    h.start(IDENT, None)
    h.step(ev.StreamOpened())
    h.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=5000))
    h.step(ev.InferenceDone(rec(0)))
    assert pending_records(h.core)[0].sequence > 5000


# --- retry-after keeps its jitter ------------------------------------------------------------------


def test_retry_after_is_a_floor_with_jitter_on_top() -> None:
    # A controller shedding load gives every device the same retry-after: they must not all return
    # at that very instant.
    policy = BackoffPolicy(base_s=0.5, cap_s=30.0)
    for attempt in (0, 3, 10):
        ceiling = min(policy.cap_s, policy.base_s * 2**attempt)
        delays = [policy.delay(attempt, random.Random(seed), retry_after=20.0) for seed in range(500)]
        assert min(delays) >= 20.0
        assert max(delays) <= 20.0 + ceiling
        assert len(set(delays)) > 490
        # Spread over (most of) the jitter window, not bunched at one end.
        assert max(delays) - min(delays) > 0.8 * ceiling
        assert statistics.mean(delays) == pytest.approx(20.0 + ceiling / 2, rel=0.05)


def test_absurd_retry_after_is_capped() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=30.0)
    delays = [policy.delay(0, random.Random(seed), retry_after=1e9) for seed in range(50)]
    assert all(120.0 <= d <= 120.5 for d in delays)


def test_shed_devices_reconnect_spread_out() -> None:
    wakeups = []
    for seed in range(200):
        h = Harness(seed=seed, backoff=BackoffPolicy(base_s=1.0, cap_s=30.0))
        h.ready()
        for _ in range(3):  # a few failed attempts already: a wider jitter window
            h.step(ev.StreamClosed())
            h.tick_at(h.wakeup())
        t0 = h.clock.now
        h.step(ev.StreamClosed(TransientError("shedding", retry_after=10.0)))
        wakeups.append(h.wakeup() - t0)
    assert min(wakeups) >= 10.0
    assert max(wakeups) - min(wakeups) > 4.0
    assert len(set(wakeups)) == len(wakeups)


# --- welcome deadline ------------------------------------------------------------------------------


@pytest.mark.parametrize("opened", [False, True], ids=["stream-never-opens", "no-welcome"])
def test_controller_that_never_welcomes_is_given_up_on_and_retried(opened: bool) -> None:
    h = Harness(seed=4, welcome_timeout_s=15.0, backoff=BackoffPolicy(base_s=2.0, cap_s=30.0))
    h.start()
    t0 = h.clock.now
    if opened:
        h.step(ev.StreamOpened())
        assert h.core.link is Link.AWAITING_WELCOME
    assert h.wakeup() == pytest.approx(t0 + 15.0)
    assert h.tick_at(t0 + 14.99) == []
    out = h.tick_at(t0 + 15.0)
    assert len(out) == 1 and isinstance(out[0], act.CloseStream)
    assert "welcome" in out[0].reason
    assert h.core.link is Link.BACKOFF
    # Backs off exactly as after a lost stream: jittered, then a fresh attempt with a fresh deadline.
    wake = h.wakeup()
    assert t0 + 15.0 < wake <= t0 + 15.0 + 2.0
    assert h.tick_at(wake - 1e-4) == []
    assert h.tick_at(wake) == [act.OpenStream(IDENT)]
    assert h.wakeup() == pytest.approx(wake + 15.0)
    h.connect()
    assert h.core.link is Link.READY


def test_welcome_timeouts_back_off_more_each_time() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=64.0)
    worst = [0.0] * 5
    for seed in range(40):
        h = Harness(seed=seed, welcome_timeout_s=5.0, backoff=policy)
        h.start()
        for attempt in range(5):
            deadline = h.wakeup()
            assert of_type(h.tick_at(deadline), act.CloseStream)
            delay = h.wakeup() - deadline
            assert 0.0 <= delay <= policy.base_s * 2**attempt
            worst[attempt] = max(worst[attempt], delay)
            assert h.tick_at(h.wakeup()) == [act.OpenStream(IDENT)]
    assert worst[4] > policy.base_s * 2**3


def test_welcome_clears_the_deadline() -> None:
    h = Harness(welcome_timeout_s=15.0)
    h.ready()
    h.tick(3600.0)
    assert h.core.link is Link.READY
    assert not of_type(h.log, act.CloseStream)


def test_fetch_retries_run_while_waiting_for_a_welcome() -> None:
    h = Harness(fetch_backoff=BackoffPolicy(base_s=1.0, cap_s=1.0), backoff=BackoffPolicy(0.1, 0.1))
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    h.step(ev.ArtifactFailed(v1, TransientError("reset")))
    h.step(ev.StreamClosed())
    assert of_type(h.tick_at(h.clock.now + 0.2), act.OpenStream)
    assert h.core.link is Link.CONNECTING
    assert h.tick_at(h.clock.now + 1.0) == [act.FetchArtifact(v1)]


# --- a credential the controller no longer accepts -------------------------------------------------


@pytest.mark.parametrize("welcomed", [True, False])
def test_unauthenticated_stream_is_fatal_not_retried_forever(welcomed: bool) -> None:
    h = Harness(identity_file="/var/lib/edgefleet/identity.json")
    if welcomed:
        h.ready()
        h.step(ev.InferenceDone(rec(1)))
    else:
        h.start()
    out = h.step(ev.StreamClosed(Unauthenticated("unknown device or wrong credential")))
    assert len(out) == 1 and isinstance(out[0], act.Fatal)
    reason = out[0].reason
    assert "no longer accepts this device's credential" in reason
    assert "unknown device or wrong credential" in reason
    assert "remove /var/lib/edgefleet/identity.json" in reason and "new token" in reason
    assert h.core.link is Link.FATAL
    assert h.core.next_wakeup() is None
    assert h.tick(3600.0) == []


@pytest.mark.parametrize("error", [PermanentError("bad hello"), NotFound("x"), None])
def test_other_stream_errors_reconnect(error: PermanentError | None) -> None:
    h = Harness()
    h.ready()
    assert h.step(ev.StreamClosed(error)) == []
    assert h.core.link is Link.BACKOFF
    assert h.tick_at(h.wakeup()) == [act.OpenStream(IDENT)]


# --- fetch failure reasons -------------------------------------------------------------------------


def test_permanent_fetch_error_without_a_reason_reports_fetch_failed() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    acks = sent(h.step(ev.ArtifactFailed(v1, PermanentError("permission denied"))), AssignmentAck)
    assert [(a.version, a.failure) for a in acks] == [(1, AssignmentFailure.FETCH_FAILED)]


def test_fetch_failure_reason_given_by_the_driver_wins() -> None:
    h = Harness()
    h.ready()
    v1 = asg(1, SHA_A)
    h.recv(v1)
    out = h.step(ev.ArtifactFailed(v1, PermanentError("x"), AssignmentFailure.CHECKSUM_MISMATCH))
    assert [a.failure for a in sent(out, AssignmentAck)] == [AssignmentFailure.CHECKSUM_MISMATCH]


# --- artifacts the driver must keep ----------------------------------------------------------------


def test_artifacts_in_use_are_active_last_known_good_and_target() -> None:
    h = Harness()
    h.ready()
    assert h.core.artifacts_in_use() == set()
    h.apply(asg(1, SHA_A))
    h.apply(asg(2, SHA_B))
    assert h.core.artifacts_in_use() == {SHA_A, SHA_B}
    h.recv(asg(3, SHA_C))
    assert h.core.artifacts_in_use() == {SHA_A, SHA_B, SHA_C}
    h.recv(Assignment(version=4))  # the model is removed: nothing new to keep
    assert h.core.artifacts_in_use() == {SHA_A, SHA_B}


# --- inference events are cheap and still undoable -------------------------------------------------


def _full(h: Harness, n: int) -> None:
    for i in range(n):
        h.step(ev.InferenceDone(rec(i)))


@pytest.mark.parametrize("ready", [False, True])
def test_failed_inference_step_leaves_a_full_queue_unchanged(
    ready: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the window's bound an append goes to the outbox only; then the step fails (when ready: the
    # clock, read again by the timer pass after the append; otherwise: right after the append). The
    # changes must be undone and the step's outbox actions never reach the driver.
    h = Harness(max_pending=50, max_batch=10, telemetry_flush_interval_s=1000.0)
    if ready:
        h.ready()
    else:
        h.start()
    _full(h, 60)
    assert (
        h.core._telemetry.unloaded == (10 if not ready else h.core._telemetry.unloaded)
        and h.core.records_dropped == 0
    )
    before = state_of(h.core)
    if ready:
        h.clock.readings_left = 1
    else:
        append = Telemetry.append

        def append_then_fail(self: Telemetry, *args: Any, **kwargs: Any) -> bool:
            append(self, *args, **kwargs)
            raise RuntimeError("injected after the append")

        monkeypatch.setattr(Telemetry, "append", append_then_fail)
    assert h.core.step(ev.InferenceDone(rec(999))) == []
    h.clock.readings_left = None
    monkeypatch.undo()
    assert state_of(h.core) == before
    # And the core carries on as if the failed step never happened.
    h.step(ev.InferenceDone(rec(1000)))
    kept = [h.outbox[seq].body for seq in sorted(h.outbox)]
    assert [b.latency_ms for b in kept if isinstance(b, InferenceRecord)][-2:] == [59.0, 1000.0]
    assert h.core.records_dropped == 0


def test_failed_inference_step_that_had_cut_a_batch_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.core.machine as machine

    h = Harness(max_batch=4, telemetry_flush_interval_s=1000.0)
    h.ready()
    _full(h, 3)
    before = state_of(h.core)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    # The 4th record fills a batch, which is cut from the queue before the Send fails.
    monkeypatch.setattr(machine.act, "Send", boom)
    assert h.core.step(ev.InferenceDone(rec(3))) == []
    monkeypatch.undo()
    assert state_of(h.core) == before
    batches = sent(h.step(ev.InferenceDone(rec(3))), TelemetryBatch)
    assert [latencies(b) for b in batches] == [[0.0, 1.0, 2.0, 3.0]]


def test_failed_step_after_requeue_and_renumber_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.core.machine as machine

    h = Harness(telemetry_flush_interval_s=1.0, telemetry_ack_timeout_s=60.0)
    h.ready()
    _full(h, 3)
    h.tick(1.0)  # 3 in flight
    _full(h, 2)
    h.step(ev.StreamClosed())  # in flight requeued on the left
    assert of_type(h.tick_at(h.wakeup()), act.OpenStream)
    h.step(ev.StreamOpened())
    before = state_of(h.core)
    monkeypatch.setattr(machine.act, "PersistSnapshot", lambda *a: 1 / 0)
    # A watermark above our counter renumbers the queue, then persisting fails.
    assert h.recv(Welcome(heartbeat_interval_ms=QUIET_HEARTBEAT_MS, telemetry_watermark=10_000)) == []
    monkeypatch.undo()
    assert state_of(h.core) == before
    assert [r.sequence for r in pending_records(h.core)] == [1, 2, 3, 4, 5]


def test_inference_step_cost_does_not_grow_with_the_queue() -> None:
    import time

    def cost(queued: int) -> float:
        h = Harness(max_pending=20_000, telemetry_flush_interval_s=1e9)
        h.start()  # not connected: records only queue up
        _full(h, queued)
        record = ev.InferenceDone(rec(0))
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(500):
                h.core.step(record)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = cost(10), cost(10_000)
    # Copying the queue on every step made this ~25x; journaling keeps it flat.
    assert large < 4 * small, (small, large)


# --- random interleavings --------------------------------------------------------------------------

SHAS = (SHA_A, SHA_B, SHA_C, "")


class CoreMachine(RuleBasedStateMachine):
    """Random event interleavings; checks the core's invariants after every step."""

    h: Harness

    @initialize(seed=st.integers(0, 2**32 - 1), restart=st.booleans())
    def setup(self, seed: int, restart: bool) -> None:
        self.h = Harness(
            seed=seed,
            max_batch=4,
            max_pending=12,
            telemetry_flush_interval_s=1.0,
            telemetry_ack_timeout_s=5.0,
            backoff=BackoffPolicy(base_s=0.5, cap_s=4.0),
            fetch_backoff=BackoffPolicy(base_s=0.5, cap_s=4.0),
        )
        self.assignments: list[Assignment] = []
        self.max_version = 0
        self.max_acked = 0
        self.first_sent: dict[int, TelemetryRecord] = {}
        self.last_first_sent = 0
        self.seq_of_body: dict[int, int] = {}
        self.counter = 0
        self.sent_kinds: dict[type, int] = {}
        snap = None
        if restart:
            v = asg(1, SHA_A)
            snap = AgentSnapshot(
                reported=ReportedState(acked_version=1, active_sha256=SHA_A),
                active=v,
                sequence_reserved_until=0,
            )
            self.assignments.append(v)
            self.max_version = 1
            self.max_acked = 1
        self.do(ev.Started(IDENT, snap))

    def do(self, event: Any) -> None:
        out = self.h.step(event)
        for a in out:
            assert not isinstance(a, act.Fatal)
            if not isinstance(a, act.Send):
                continue
            msg = a.message
            self.sent_kinds[type(msg)] = self.sent_kinds.get(type(msg), 0) + 1
            if isinstance(msg, AssignmentAck):
                assert msg.version <= self.max_version
            elif isinstance(msg, TelemetryBatch):
                assert 0 < len(msg.records) <= self.h.config.max_batch
                seqs = [r.sequence for r in msg.records]
                assert seqs == sorted(set(seqs))  # in order, no duplicates
                for r in msg.records:
                    if r.sequence in self.first_sent:
                        assert self.first_sent[r.sequence] == r  # a sequence always names one record
                    else:
                        assert r.sequence > self.last_first_sent  # first sends in increasing order
                        self.first_sent[r.sequence] = r
                        self.last_first_sent = r.sequence
                    # and a record always carries one sequence
                    assert self.seq_of_body.setdefault(id(r.body), r.sequence) == r.sequence

    @rule()
    def stream_opened(self) -> None:
        self.do(ev.StreamOpened())

    @rule()
    def drive_to_ready(self) -> None:
        """What a healthy controller does: reconnect when due, open, welcome (so READY is well covered)."""
        if self.h.core.link is Link.BACKOFF:
            self.tick_to_wakeup()
        if self.h.core.link is Link.CONNECTING:
            self.do(ev.StreamOpened())
        if self.h.core.link is Link.AWAITING_WELCOME:
            self.do(ev.MessageReceived(Welcome(heartbeat_interval_ms=3000, telemetry_watermark=0)))

    @rule(hb=st.sampled_from([0, 500, 3000]), data=st.data())
    def welcome(self, hb: int, data: st.DataObject) -> None:
        watermark = data.draw(st.sampled_from([0, self.last_first_sent]))
        self.do(ev.MessageReceived(Welcome(heartbeat_interval_ms=hb, telemetry_watermark=watermark)))

    @rule(retry_after=st.none() | st.sampled_from([0.1, 3.0]), transient=st.booleans())
    def stream_closed(self, retry_after: float | None, transient: bool) -> None:
        err = TransientError("x", retry_after=retry_after) if transient else None
        self.do(ev.StreamClosed(err))

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 30.0]))
    def tick(self, dt: float) -> None:
        self.h.clock.advance(dt)
        self.do(ev.Tick())

    @rule()
    def tick_to_wakeup(self) -> None:
        w = self.h.core.next_wakeup()
        if w is not None and w > self.h.clock.now:
            self.h.clock.now = w
        self.do(ev.Tick())

    @rule(sha=st.sampled_from(SHAS), skip=st.integers(1, 2))
    def new_assignment(self, sha: str, skip: int) -> None:
        a = Assignment(self.max_version + skip, "m" if sha else "", "fp32" if sha else "", sha, 10)
        self.max_version = a.version
        self.assignments.append(a)
        self.do(ev.MessageReceived(a))

    @rule(data=st.data())
    def resend_assignment(self, data: st.DataObject) -> None:
        if self.assignments:
            self.do(ev.MessageReceived(data.draw(st.sampled_from(self.assignments))))

    @rule(data=st.data(), kind=st.sampled_from(["ready", "transient", "permanent", "loaded", "load_failed"]))
    def model_event(self, data: st.DataObject, kind: str) -> None:
        if not self.assignments:
            return
        # Mostly the newest one (the core's target), sometimes a stale one.
        a = data.draw(st.sampled_from([*self.assignments[-1:] * 3, *self.assignments]))
        if kind == "ready":
            self.do(ev.ArtifactReady(a))
        elif kind == "transient":
            self.do(ev.ArtifactFailed(a, TransientError("t")))
        elif kind == "permanent":
            self.do(ev.ArtifactFailed(a, PermanentError("p"), AssignmentFailure.CHECKSUM_MISMATCH))
        elif kind == "loaded":
            self.do(ev.ModelLoaded(a))
        else:
            self.do(ev.ModelLoadFailed(a, AssignmentFailure.LOAD_FAILED, "f"))

    @rule(n=st.integers(1, 6))
    def inference(self, n: int) -> None:
        for _ in range(n):
            self.counter += 1
            self.do(ev.InferenceDone(rec(self.counter)))

    @rule(data=st.data())
    def telemetry_ack(self, data: st.DataObject) -> None:
        self.do(ev.MessageReceived(TelemetryAck(data.draw(st.integers(0, max(self.last_first_sent, 0))))))

    @rule()
    def garbage(self) -> None:
        self.do(_Weird())

    @invariant()
    def acked_version_never_decreases(self) -> None:
        acked = self.h.core.reported.acked_version
        assert acked >= self.max_acked
        assert acked <= self.max_version
        self.max_acked = acked

    @rule()
    def outbox_answers(self) -> None:
        if self.h.loads:
            self.h.answer_load()

    @invariant()
    def telemetry_is_bounded(self) -> None:
        cfg = self.h.config
        t = self.h.core._telemetry
        assert len(list(t.pending())) + len(t.inflight) <= max(cfg.max_pending, cfg.max_batch)
        # What memory holds, the outbox holds too (nothing unacknowledged lives only in memory).
        for r in (*t.inflight, *t.pending()):
            assert self.h.outbox.get(r.sequence) == r


TestCoreRandomInterleavings = CoreMachine.TestCase
TestCoreRandomInterleavings.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class _Choice:
    """Stands in for hypothesis' ``data`` when the rules are driven by a plain seeded RNG."""

    def __init__(self, rng: random.Random, items: list[Assignment]) -> None:
        self.rng = rng
        self.items = items

    def draw(self, strategy: Any) -> Assignment:
        return self.items[-1] if self.rng.random() < 0.6 else self.rng.choice(self.items)


def _random_walk(seed: int, steps: int) -> CoreMachine:
    """Drive the state machine's rules from a plain seeded RNG, checking its invariants as it goes."""
    rng = random.Random(seed)
    m = CoreMachine()
    m.setup(seed=seed, restart=bool(seed % 2))

    def some(items: list[Assignment]) -> _Choice:
        return _Choice(rng, items)

    rules = [
        m.stream_opened,
        m.drive_to_ready,
        m.drive_to_ready,
        lambda: m.do(ev.MessageReceived(Welcome(rng.choice([0, 700]), rng.choice([0, m.last_first_sent])))),
        lambda: m.stream_closed(None, rng.random() < 0.5),
        lambda: m.tick(rng.choice([0.0, 0.3, 1.0, 6.0])),
        m.tick_to_wakeup,
        lambda: m.new_assignment(rng.choice(SHAS), rng.choice([1, 2])),
        lambda: m.do(ev.MessageReceived(rng.choice(m.assignments))) if m.assignments else None,
        lambda: m.model_event(some(m.assignments), rng.choice(["ready", "loaded"])),
        lambda: m.model_event(some(m.assignments), rng.choice(["ready", "loaded"])),
        lambda: m.model_event(some(m.assignments), rng.choice(["transient", "permanent"])),
        lambda: m.model_event(some(m.assignments), "load_failed"),
        lambda: m.inference(rng.randint(1, 5)),
        lambda: m.do(ev.MessageReceived(TelemetryAck(rng.randint(0, max(m.last_first_sent, 0))))),
        m.outbox_answers,
    ]
    for _ in range(steps):
        rng.choice(rules)()
        m.acked_version_never_decreases()
        m.telemetry_is_bounded()
    return m


def test_random_walks_keep_sequences_unique_and_acks_monotonic() -> None:
    """Seeded (non-hypothesis) random walks, longer than the stateful test's runs."""
    totals: dict[type, int] = {}
    failure_acks = 0
    for seed in range(25):
        m = _random_walk(seed, 300)
        # Every record ever sent went out under one sequence number, in first-send order.
        assert list(m.first_sent) == sorted(m.first_sent)
        for kind, n in m.sent_kinds.items():
            totals[kind] = totals.get(kind, 0) + n
        failure_acks += sum(1 for msg in sent(m.h.log, AssignmentAck) if msg.failure is not None)
    # The walks did reach the interesting parts (the checks above were not vacuous).
    assert totals.get(TelemetryBatch, 0) > 100
    assert totals.get(AssignmentAck, 0) > 50
    assert totals.get(Heartbeat, 0) > 10
    assert failure_acks > 0


def test_snapshot_round_trip_keeps_reported_state() -> None:
    h = Harness()
    h.ready()
    h.apply(asg(1, SHA_A))
    snap = h.core.snapshot()
    h2 = Harness()
    h2.start(IDENT, replace(snap))
    assert h2.core.snapshot().reported == snap.reported
    assert h2.core.snapshot().last_known_good == snap.last_known_good
    assert h2.core.snapshot().sequence_reserved_until == snap.sequence_reserved_until


# --- block profiles --------------------------------------------------------------------------------


def profile_request(request_id: str = "prof-1", model: str = "digits", sha: str = SHA_B) -> ProfileRequest:
    return ProfileRequest(
        request_id=request_id,
        model_name=model,
        source_sha256=SHA_A,
        blocks=(
            ProfileBlock(0, 5, "fp32", sha, 100),
            ProfileBlock(5, 0, "fp32", SHA_A, 200),
            ProfileBlock(0, 5, "int8", SHA_C, 50),
        ),
        inputs_sha256="d" * 64,
        inputs_size_bytes=300,
        batch_sizes=(1, 32),
        runs=10,
    )


def profile_report(r: ProfileRequest, error: str = "") -> ProfileReport:
    timings = () if error else (BlockTiming(0, 5, "fp32", 1, 0.5), BlockTiming(0, 5, "int8", 1, 0.0, "boom"))
    return ProfileReport(
        request_id=r.request_id,
        model_name=r.model_name,
        timings=timings,
        call_overhead=() if error else (CallOverhead(1, 0.01),),
        error=error,
    )


def profiled(h: Harness, r: ProfileRequest) -> list[act.Action]:
    """Run one request through fetch and profile; returns the ProfileDone step's actions."""
    assert h.step(ev.ProfileArtifactsReady(r.request_id)) == [act.RunProfile(r)]
    return h.step(ev.ProfileDone(profile_report(r)))


def test_profile_request_is_fetched_then_run_then_reported() -> None:
    h = Harness()
    h.ready()
    wake = h.core.next_wakeup()
    r = profile_request()
    assert h.recv(r) == [act.FetchProfileArtifacts(r)]
    assert h.core.profile == r
    # While it runs the cache must keep every block and the inputs.
    assert h.core.artifacts_in_use() == {SHA_A, SHA_B, SHA_C, "d" * 64}
    assert h.step(ev.ProfileArtifactsReady(r.request_id)) == [act.RunProfile(r)]
    assert h.step(ev.ProfileArtifactsReady(r.request_id)) == []  # running already: not run twice
    assert h.step(ev.ProfileDone(profile_report(r))) == [act.Send(profile_report(r))]
    assert h.core.profile is None
    assert h.core.artifacts_in_use() == set()  # so the driver prunes them
    assert h.core.next_wakeup() == wake  # no profile deadline left behind


def test_one_profile_at_a_time_the_others_wait_in_order() -> None:
    h = Harness()
    h.ready()
    first, second, third = (profile_request(f"prof-{i}", f"m{i}") for i in range(3))
    assert h.recv(first) == [act.FetchProfileArtifacts(first)]
    assert h.recv(second) == []
    assert h.recv(third) == []
    assert h.core.queued_profiles == (second, third)
    assert profiled(h, first) == [act.Send(profile_report(first)), act.FetchProfileArtifacts(second)]
    assert profiled(h, second) == [act.Send(profile_report(second)), act.FetchProfileArtifacts(third)]
    assert profiled(h, third) == [act.Send(profile_report(third))]
    assert h.core.queued_profiles == ()


def test_the_queue_is_bounded_and_overflow_is_dropped_for_the_controller_to_resend() -> None:
    h = Harness(max_queued_profiles=2)
    h.ready()
    running, *queued = (profile_request(f"prof-{i}", f"m{i}") for i in range(4))
    h.recv(running)
    assert h.recv(queued[0]) == [] and h.recv(queued[1]) == []
    before = state_of(h.core)
    assert h.recv(queued[2]) == []
    assert state_of(h.core) == before  # dropped, not queued
    assert h.core.queued_profiles == (queued[0], queued[1])


def test_a_request_running_or_queued_is_not_started_again() -> None:
    h = Harness()
    h.ready()
    running, waiting = profile_request("prof-1", "m1"), profile_request("prof-2", "m2")
    h.recv(running)
    h.recv(waiting)
    before = state_of(h.core)
    assert h.recv(running) == []
    assert h.recv(waiting) == []
    assert state_of(h.core) == before


def test_a_finished_request_repeated_gets_its_report_again_without_profiling() -> None:
    h = Harness()
    h.ready()
    r = profile_request()
    h.recv(r)
    profiled(h, r)
    assert h.recv(r) == [act.Send(profile_report(r))]
    assert h.core.profile is None and h.core.queued_profiles == ()


def test_a_newer_request_for_a_model_replaces_its_queued_one() -> None:
    h = Harness()
    h.ready()
    running = profile_request("prof-1", "m1")
    old, new = profile_request("prof-2", "m2"), profile_request("prof-3", "m2")
    h.recv(running)
    h.recv(old)
    assert h.recv(new) == []
    assert h.core.queued_profiles == (new,)


def test_report_is_held_while_the_link_is_down_and_sent_once_after_reconnecting() -> None:
    h = Harness()
    h.ready()
    r = profile_request()
    h.recv(r)
    assert h.step(ev.ProfileArtifactsReady(r.request_id)) == [act.RunProfile(r)]
    h.step(ev.StreamClosed(TransientError("network down")))
    assert h.core.link is Link.BACKOFF
    # The profile finishes offline: nothing can be sent yet.
    assert sent(h.step(ev.ProfileDone(profile_report(r)))) == []
    welcome = h.reconnect()
    assert sent(welcome, ProfileReport) == [profile_report(r)]
    h.step(ev.StreamClosed(TransientError("again")))
    assert sent(h.reconnect(), ProfileReport) == []  # sent once; a repeat only on the controller's ask


def test_profile_fetch_failures_retry_with_backoff_while_transient() -> None:
    h = Harness(fetch_backoff=BackoffPolicy(base_s=2.0, cap_s=8.0))
    h.ready()
    r = profile_request()
    h.recv(r)
    t0 = h.clock.now
    assert h.step(ev.ProfileArtifactsFailed(r.request_id, TransientError("controller busy"))) == []
    wake = h.wakeup()
    assert t0 < wake <= t0 + 2.0
    assert h.tick_at(wake) == [act.FetchProfileArtifacts(r)]
    # A ready after a retry runs it as usual.
    assert profiled(h, r) == [act.Send(profile_report(r))]


def test_a_permanent_fetch_failure_is_reported_and_the_next_profile_starts() -> None:
    h = Harness()
    h.ready()
    r, following = profile_request("prof-1", "m1"), profile_request("prof-2", "m2")
    h.recv(r)
    h.recv(following)
    out = h.step(ev.ProfileArtifactsFailed(r.request_id, NotFound("artifact bbbb not found")))
    (report,) = sent(out, ProfileReport)
    assert report.request_id == r.request_id and report.timings == ()
    assert "artifact bbbb not found" in report.error
    assert of_type(out, act.FetchProfileArtifacts) == [act.FetchProfileArtifacts(following)]


def test_outcomes_of_other_requests_are_ignored() -> None:
    h = Harness()
    h.ready()
    r = profile_request()
    h.recv(r)
    before = state_of(h.core)
    other = profile_request("prof-other")
    assert h.step(ev.ProfileArtifactsReady("prof-other")) == []
    assert h.step(ev.ProfileArtifactsFailed("prof-other", NotFound("x"))) == []
    assert h.step(ev.ProfileDone(profile_report(other))) == []
    assert h.step(ev.ProfileDone(profile_report(r))) == []  # not running yet: a stray report
    assert state_of(h.core) == before


def test_profile_request_before_the_welcome_is_ignored() -> None:
    h = Harness()
    h.start()
    h.step(ev.StreamOpened())
    assert h.recv(profile_request()) == []
    assert h.core.profile is None


def test_finished_reports_kept_are_bounded() -> None:
    h = Harness(max_kept_reports=2)
    h.ready()
    requests = [profile_request(f"prof-{i}", f"m{i}") for i in range(3)]
    for r in requests:
        h.recv(r)
        profiled(h, r)
    # The oldest report is forgotten: its request would be profiled again (the newest two answered).
    assert h.recv(requests[2]) == [act.Send(profile_report(requests[2]))]
    assert h.recv(requests[0]) == [act.FetchProfileArtifacts(requests[0])]


def test_a_profile_step_that_fails_leaves_the_state_unchanged() -> None:
    h = Harness()
    h.ready()
    r = profile_request()
    h.recv(r)
    before = state_of(h.core)
    h.clock.broken = True  # the transient failure reads the clock to schedule its retry
    assert h.step(ev.ProfileArtifactsFailed(r.request_id, TransientError("busy"))) == []
    h.clock.broken = False
    # Everything but the RNG (its draw for the jitter came before the clock failed) is as before.
    assert {k: v for k, v in state_of(h.core).items() if k != "_rng"} == {
        k: v for k, v in before.items() if k != "_rng"
    }
    bad = ProfileReport(request_id=None, model_name="m")  # type: ignore[arg-type]
    assert isinstance(h.core.step(ev.ProfileDone(bad)), list)
    assert h.step(ev.ProfileArtifactsReady(r.request_id)) == [act.RunProfile(r)]


def test_hello_carries_the_links_the_device_was_given() -> None:
    links = (LinkMeasurement("eu-edge", 50.0, 8.0, 12.0),)
    h = Harness(links=links)
    h.start()
    (hello,) = sent(h.step(ev.StreamOpened()), Hello)
    assert hello.links == links  # the planner's input, on every (re)connect


# --- partitioned plans: segments ------------------------------------------------------------------


def _partitioned(
    version: int, *, own: str = SHA_B, edge: str = SHA_C, addr: str = "127.0.0.1:7001"
) -> Assignment:
    from common.types import AssignmentPlan, PlannedSegment, SegmentEndpoint

    plan = AssignmentPlan(
        deployment="digits",
        pattern="device+edge",
        segments=(
            PlannedSegment("device", 0, 2, "fp32", "dev-1", artifact_sha256=own, artifact_size_bytes=10),
            PlannedSegment(
                "edge",
                2,
                4,
                "int8",
                "edge-1",
                artifact_sha256=edge,
                artifact_size_bytes=20,
                endpoints=(SegmentEndpoint("edge-1", addr),),
            ),
        ),
        edge_pool="edge",
        edge_node="edge-1",
    )
    return replace(asg(version, SHA_A), plan=plan)


def test_partitioned_assignment_prepares_segments_before_it_is_acked() -> None:
    h = Harness()
    h.ready()
    v1 = _partitioned(1)
    assert h.recv(v1) == [act.FetchArtifact(v1)]
    assert h.step(ev.ArtifactReady(v1)) == [act.LoadModel(v1)]
    # The model serves (it is the fallback) but the version is not acked until its segments are ready.
    out = h.step(ev.ModelLoaded(v1))
    assert of_type(out, act.PrepareSegments) == [act.PrepareSegments(v1)]
    assert not sent(out, AssignmentAck)
    assert h.core.target == v1
    out = h.step(ev.SegmentsReady(v1))
    assert [a.version for a in sent(out, AssignmentAck)] == [1]
    assert h.core.target is None
    snap = of_type(out, act.PersistSnapshot)[-1].snapshot
    assert snap.segments == v1


def test_same_segments_in_a_newer_version_are_not_prepared_again() -> None:
    h = Harness()
    h.ready()
    v1 = _partitioned(1)
    h.apply(v1)
    h.step(ev.SegmentsReady(v1))
    v2 = replace(v1, version=2)
    out = h.recv(v2)
    # Same model, same segments, same route: acked at once, nothing re-downloaded or reloaded.
    assert not of_type(out, act.PrepareSegments)
    assert not of_type(out, act.FetchArtifact)
    assert [a.version for a in sent(out, AssignmentAck)] == [2]


def test_a_moved_edge_endpoint_is_new_segment_work() -> None:
    h = Harness()
    h.ready()
    v1 = _partitioned(1)
    h.apply(v1)
    h.step(ev.SegmentsReady(v1))
    v2 = replace(_partitioned(2, addr="127.0.0.1:7002"))
    out = h.recv(v2)
    assert of_type(out, act.PrepareSegments) == [act.PrepareSegments(v2)]
    assert not sent(out, AssignmentAck)


def test_transient_segment_failure_retries_after_backoff_not_before() -> None:
    h = Harness()
    h.ready()
    v1 = _partitioned(1)
    h.apply(v1)
    assert h.step(ev.SegmentsFailed(v1, "controller unreachable", transient=True)) == []
    wake = h.wakeup()
    assert wake > h.clock.now
    assert not of_type(h.tick_at((h.clock.now + wake) / 2), act.PrepareSegments)
    assert of_type(h.tick_at(wake), act.PrepareSegments) == [act.PrepareSegments(v1)]
    assert [a.version for a in sent(h.step(ev.SegmentsReady(v1)), AssignmentAck)] == [1]


def test_permanent_segment_failure_acks_the_failure_and_keeps_the_model() -> None:
    h = Harness()
    h.ready()
    v1 = _partitioned(1)
    h.apply(v1)
    out = h.step(ev.SegmentsFailed(v1, "segment artifact corrupt"))
    acks = sent(out, AssignmentAck)
    assert len(acks) == 1
    assert acks[0].version == 1
    assert acks[0].failure is AssignmentFailure.LOAD_FAILED
    assert "segments: segment artifact corrupt" in acks[0].message
    # Its model still serves on its own; no retry is scheduled.
    assert h.core.active == v1
    assert not of_type(h.tick(3600.0), act.PrepareSegments)


def test_late_segments_of_a_superseded_version_change_nothing() -> None:
    h = Harness()
    h.ready()
    v1 = _partitioned(1)
    h.apply(v1)
    v2 = _partitioned(2, own=SHA_C, edge=SHA_B)
    h.recv(v2)
    before = state_of(h.core)
    assert h.step(ev.SegmentsReady(v1)) == []
    assert h.step(ev.SegmentsFailed(v1, "late")) == []
    assert state_of(h.core) == before


def test_restart_prepares_the_acknowledged_segments_from_the_cache_before_connecting() -> None:
    h1 = Harness()
    h1.ready()
    v1 = _partitioned(1)
    h1.apply(v1)
    h1.step(ev.SegmentsReady(v1))
    snap = of_type(h1.log, act.PersistSnapshot)[-1].snapshot

    h2 = Harness()
    out = h2.start(IDENT, snap)
    assert out == [
        act.LoadModel(v1, restore=True),
        act.PrepareSegments(v1, restore=True),
        act.OpenStream(IDENT),
    ]
    # The restore's answer acks nothing (there is no target) and sends nothing while offline.
    assert not sent(h2.step(ev.SegmentsReady(v1)))
    h2.connect()
    out = h2.recv(v1)
    assert not of_type(out, act.PrepareSegments)
    assert [a.version for a in sent(out, AssignmentAck)] == [1]


def test_path_changes_are_recorded_as_device_events_while_offline_too() -> None:
    h = Harness()
    h.start()  # never connected: the outage's cost is still counted
    v1 = _partitioned(1)
    h.core._segments = v1  # as a restore from the snapshot would set it
    h.step(ev.PathChanged(degraded=True, reason="edge hop edge-1 is unreachable"))
    h.step(ev.PathChanged(degraded=False, reason="the partitioned path answers again"))
    events = [r.body for r in pending_records(h.core) if isinstance(r.body, DeviceEvent)]
    assert [(e.kind, e.assignment_version) for e in events] == [("path_degraded", 1), ("path_restored", 1)]
    assert "edge-1" in events[0].message


def test_measured_links_replace_the_configured_ones_and_are_sent_at_once() -> None:
    told = (LinkMeasurement("edge", 50.0, 8.0), LinkMeasurement("gpu", 20.0, 60.0))
    h = Harness(links=told)
    h.ready()
    measured = LinkMeasurement("edge", 50.0, 3.2, 5.1)
    out = h.step(ev.LinksMeasured((measured,)))
    (beat,) = sent(out, Heartbeat)
    assert beat.links == (measured, told[1])
    assert h.step(ev.LinksMeasured((measured,))) == []  # nothing new: nothing sent
    h.step(ev.StreamClosed())
    assert of_type(h.tick_at(h.wakeup()), act.OpenStream)
    hello = sent(h.step(ev.StreamOpened()), Hello)[0]
    assert hello.links == (measured, told[1])


def test_a_controller_that_goes_silent_is_left_and_reconnected_to() -> None:
    # A black-holed link: the transport sees nothing wrong, but the controller answers nothing.
    h = Harness()
    h.ready(heartbeat_ms=1000)
    for _ in range(5):  # answered heartbeats keep the stream
        beats = sent(h.tick(1.0), Heartbeat)
        assert beats
        h.recv(TelemetryAck(0))
    assert h.core.link is Link.READY
    silent_from = h.clock.now
    h.tick(2.9)
    assert h.core.link is Link.READY  # not yet three intervals
    out = h.tick_at(silent_from + 3.0)
    assert h.core.link is Link.BACKOFF
    (close,) = of_type(out, act.CloseStream)
    assert "answered nothing for 3s (3 heartbeat intervals" in close.reason
    # And it reconnects after its backoff, as after any lost stream.
    assert of_type(h.tick_at(h.wakeup()), act.OpenStream)


def test_silence_is_never_judged_faster_than_the_floor() -> None:
    # A 10 ms heartbeat must not turn a normal round trip into a "lost" stream.
    h = Harness()
    h.ready(heartbeat_ms=10)
    silent_from = h.clock.now
    h.tick_at(silent_from + 0.5)
    assert h.core.link is Link.READY
    out = h.tick_at(silent_from + 1.0)
    assert h.core.link is Link.BACKOFF
    assert "at least 1s" in of_type(out, act.CloseStream)[0].reason
