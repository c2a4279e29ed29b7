"""Controller.stop: nothing touches the store after it closes, nothing is left running, nothing logs errors."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from common import serde
from common.types import AssignmentAck, ReportedState
from controller.hub import Db, Hub, ShuttingDown
from controller.store.memory import InMemoryStore
from controller.store.sqlite import SqliteStore
from tests.integration.harness import (
    HW,
    POLICY,
    READ_TIMEOUT_S,
    SHA_X,
    FakeClock,
    Stream,
    run,
    running_controller,
)

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
#: How long the test keeps a reconcile pass parked in the store while stop() runs.
HOLD_S = 0.5


class OneShotHold:
    """Wraps store methods so that the first call after ``arm`` waits (on the store thread) until released."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, real: Callable[..., T]) -> Callable[..., T]:
        def wrapper(*args: Any, **kwargs: Any) -> T:
            with self._lock:
                hold, self.armed = self.armed, False
            if hold:
                self.entered.set()
                self.release.wait(READ_TIMEOUT_S)
            return real(*args, **kwargs)

        return wrapper


def test_stop_during_a_reconcile_with_streams_open_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hold = OneShotHold()

    async def scenario() -> None:
        async with running_controller(tmp_path, reconcile_interval_s=0.05) as fleet:
            controller = fleet.controller
            streams: list[Stream] = []
            for device_id in ("phone-1", "phone-2"):
                agent = await fleet.enroll(device_id)
                stream, _ = await agent.online()
                streams.append(stream)
            store = controller.db.store
            # Whichever store call the next reconcile pass makes first is parked there.
            for name in ("list_unacked", "get_device"):
                monkeypatch.setattr(store, name, hold.wrap(getattr(store, name)))
            hold.armed = True
            assert await asyncio.to_thread(hold.entered.wait, READ_TIMEOUT_S), "no reconcile pass ran"

            timer = threading.Timer(HOLD_S, hold.release.set)
            timer.start()
            try:
                await controller.stop()
                # stop() did not return before the parked pass could finish (the store was still open).
                assert hold.release.is_set()
            finally:
                hold.release.set()
                timer.join()
            for stream in streams:
                end = await stream.expect_end()
                assert end.status == grpc.StatusCode.UNAVAILABLE, end
                assert end.error is not None and end.error.code == "shutting_down", end
            assert controller.hub.connected_count == 0

    run(scenario())
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == [], [f"{r.name}: {r.getMessage()}" for r in problems]
    # The streams' ends were recorded before the store closed.
    reopened = SqliteStore(tmp_path / "controller.db")
    try:
        assert [d.connected for d in reopened.list_devices()] == [False, False]
    finally:
        reopened.close()


def test_store_calls_after_close_are_refused_as_shutting_down(caplog: pytest.LogCaptureFixture) -> None:
    """A stream handler's finally block can run after the controller closed the store; it must get a typed,
    transient error (and the hub must take it in its stride), not the thread pool's RuntimeError."""

    async def scenario() -> None:
        store = InMemoryStore()
        store.create_token("tok", "hash", expires_at_ms=2**60, uses=1, description="", now_ms=0)
        store.enroll_device("phone-1", HW, credential_hash="cred", token_hash="hash", now_ms=0)
        db = Db(store)
        hub = Hub(db, FakeClock(), POLICY)
        session = hub.open("phone-1")
        await db.aclose()
        await db.aclose()  # idempotent

        with pytest.raises(ShuttingDown) as err:
            await db.run(store.list_devices)
        assert serde.error_to_status(err.value) == grpc.StatusCode.UNAVAILABLE
        assert err.value.retry_after is not None

        await hub.close(session)  # what DeviceApi.Connect's finally does
        assert session.closed
        assert hub.connected_count == 0

    run(scenario())
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_stopped_hub_starts_no_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            hub = fleet.controller.hub
            hub.stop()
            db = fleet.controller.db
            await db.run(
                db.store.set_assignment,
                "phone-1",
                model_name="m",
                variant="fp32",
                artifact_sha256=SHA_X,
                artifact_size_bytes=1,
            )
            fleet.clock.advance(POLICY.heartbeat_interval_ms / 1000 * 10)  # silent for long: would be closed
            await hub.kick("phone-1")
            await hub.reconcile()
            # Neither pushed the assignment nor closed the silent stream: both are off once stopping.
            session = hub.session("phone-1")
            assert session is not None and not session.closed and session.sent_version == 0
            with pytest.raises(ShuttingDown):
                hub.open("phone-2")
            await stream.send(
                AssignmentAck(version=0, reported=ReportedState())
            )  # the stream itself works on
            await fleet.controller.stop()
            end = await stream.expect_end()  # the next thing on the stream: no assignment came before it
            assert end.status == grpc.StatusCode.UNAVAILABLE

    run(scenario())
