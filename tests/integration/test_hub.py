"""The hub without gRPC: races between stream teardown and the store thread, made deterministic."""

from __future__ import annotations

import asyncio
import threading

import pytest

from controller.hub import Db, Hub
from controller.store.memory import InMemoryStore
from tests.integration.harness import HW, POLICY, READ_TIMEOUT_S, FakeClock, run
from tests.store.helpers import hello

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
