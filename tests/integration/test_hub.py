"""The hub without gRPC: races between stream teardown and the store thread, made deterministic."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.types import ArtifactManifest, BlockProfile, Hello, ProfileRequest, ReportedState, Welcome
from controller.hub import Db, Hub
from controller.service import profiles
from controller.store.memory import InMemoryStore
from tests.integration.harness import HW, POLICY, READ_TIMEOUT_S, FakeClock, run
from tests.store.helpers import hello, variant

pytestmark = pytest.mark.timeout(60)


def test_disconnect_is_recorded_even_if_the_stream_handler_is_cancelled() -> None:
    """A client that goes away makes gRPC cancel its Connect handler, often while the handler's finally
    is recording the disconnect; the record is a queued store call, which must not be dropped with it."""

    async def scenario() -> None:
        store = InMemoryStore()
        store.create_token("tok", "hash", expires_at_ms=2**60, uses=1, description="", now_ms=0)
        store.enroll_device("phone-1", HW, credential_hash="cred", token_hash="hash", now_ms=0)
        hello(store, "phone-1")  # connected
        db = Db(store)
        hub = Hub(db, FakeClock(), POLICY)
        session = hub.open("phone-1")

        busy, release = threading.Event(), threading.Event()

        def occupy_store_thread() -> None:
            busy.set()
            release.wait(READ_TIMEOUT_S)

        occupied = asyncio.ensure_future(db.run(occupy_store_thread))
        assert await asyncio.to_thread(busy.wait, READ_TIMEOUT_S)
        handler = asyncio.create_task(hub.close(session))  # what Connect's finally does
        await asyncio.sleep(0)  # it has queued the disconnect behind the busy store thread
        handler.cancel()  # ... and now gRPC cancels the handler
        with pytest.raises(asyncio.CancelledError):
            await handler
        release.set()
        await occupied
        await hub.drain()
        assert not store.get_device("phone-1").connected
        assert hub.connected_count == 0
        await db.aclose()

    run(scenario())


def test_a_profile_request_made_while_the_hello_is_handled_is_sent_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request is stored (and its kick arrives) after on_hello read the pending requests but before
    the hello was answered: the kick finds no hello yet and leaves it to the hello, which sends it."""

    async def scenario() -> None:
        store = InMemoryStore()
        store.create_token("tok", "hash", expires_at_ms=2**60, uses=1, description="", now_ms=0)
        store.enroll_device("phone-1", HW, credential_hash="cred", token_hash="hash", now_ms=0)
        store.add_model_variant("m", variant(), now_ms=0)
        blocks = (BlockProfile(0, 0, "fp32", 1, 0.5, "", "b" * 64, 10),)
        store.add_built_variants(
            "m", [], [], now_ms=0, block_profiles=blocks, profile_inputs=ArtifactManifest("c" * 64, 5)
        )
        db = Db(store)
        hub = Hub(db, FakeClock(), POLICY)
        session = hub.open("phone-1")
        loop = asyncio.get_running_loop()
        real = profiles.pending_requests
        calls: list[int] = []

        def racing(s: object, device_ids: object) -> object:
            found = real(s, device_ids)  # type: ignore[arg-type]
            if not calls:  # on_hello's read: the request lands right after it, and its kick too
                store.request_profiles("m", [("phone-1", "prof-1")], batch_sizes=(1,), runs=3, now_ms=1)
                loop.call_soon_threadsafe(asyncio.ensure_future, hub.kick_profiles("phone-1"))
            calls.append(1)
            return found

        monkeypatch.setattr(profiles, "pending_requests", racing)
        await hub.handle(session, Hello(hardware=HW, reported=ReportedState()))
        await hub.drain()
        sent = []
        while not session._queue.empty():
            sent.append(session._queue.get_nowait())
        assert [type(m) for m in sent] == [Welcome, ProfileRequest]
        assert isinstance(sent[1], ProfileRequest) and sent[1].request_id == "prof-1"
        await db.aclose()

    run(scenario())
