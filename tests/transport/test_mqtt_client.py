"""``common.mqtt.client.AsyncClient`` against a real Mosquitto: asyncio-driven (no thread per client),
bounded outbound, the packet-id wrap, inbound back-pressure with in-order acks, keepalive on a
broker that stops answering, and typed connect errors."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from common.errors import PermanentError, TransientError
from common.mqtt.client import MAX_UNACKED_LIMIT, AsyncClient, Incoming, QueueFull, Settings, subscription
from simulator.broker import Mosquitto
from tests.transport.conformance import eventually, run_clean

pytestmark = pytest.mark.timeout(60)


def settings(broker: Mosquitto, client_id: str, **kw: object) -> Settings:
    return Settings(broker.host, broker.port, client_id, clean_start=True, **kw)  # type: ignore[arg-type]


class Collector:
    """A subscriber that records what arrives and acknowledges it (unless told to hold)."""

    def __init__(self, broker: Mosquitto, *, hold: bool = False, **kw: object) -> None:
        self.hold = hold
        self.messages: list[Incoming] = []
        self.client = AsyncClient(settings(broker, "collector", **kw), self._on)

    def _on(self, message: Incoming) -> None:
        self.messages.append(message)
        if not self.hold:
            self.client.done(message)

    async def start(self, filter_: str) -> Collector:
        await self.client.connect()
        await self.client.subscribe([subscription(filter_)])
        return self


def test_many_clients_share_one_loop_and_no_threads(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        collector = await Collector(mosquitto, receive_maximum=1000).start("t/#")
        threads = threading.active_count()
        started = time.monotonic()
        clients = [AsyncClient(settings(mosquitto, f"c{i}"), lambda m: None) for i in range(300)]
        await asyncio.gather(*(c.connect() for c in clients))
        connected_s = time.monotonic() - started
        assert threading.active_count() == threads, "a thread per client"
        for i, client in enumerate(clients):
            client.publish(f"t/{i}", b"hi")
        await eventually(lambda: len(collector.messages) == 300, "a message from every client")
        assert sorted(m.topic for m in collector.messages) == sorted(f"t/{i}" for i in range(300))
        print(f"300 clients connected from one loop in {connected_s:.2f}s")
        await asyncio.gather(*(c.disconnect() for c in clients))
        await collector.client.disconnect()

    run_clean(scenario())


def test_publishing_is_bounded_and_never_blocks(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        client = AsyncClient(settings(mosquitto, "pub", max_unacked=5), lambda m: None)
        await client.connect()
        for i in range(5):
            client.publish("b/x", str(i).encode())
        with pytest.raises(QueueFull) as full:
            client.publish("b/x", b"5")
        assert isinstance(full.value, TransientError)
        await asyncio.wait_for(client.wait_capacity(), 5)  # the broker's acks make room again
        await asyncio.wait_for(client.drain(), 5)
        assert client.unacked == 0
        client.publish("b/x", b"6")
        await client.disconnect()
        with pytest.raises(ValueError, match="65,535 packet ids"):
            AsyncClient(settings(mosquitto, "x", max_unacked=MAX_UNACKED_LIMIT + 1), lambda m: None)

    run_clean(scenario())


def test_packet_ids_wrap_without_losing_a_message(mosquitto: Mosquitto) -> None:
    """MQTT has 65,535 packet ids; a client whose ids wrap while messages are in flight must not reuse
    one still in flight. The cap (max_unacked) keeps far fewer outstanding; here the ids start just
    before the wrap, so a few thousand publishes cross it with hundreds in flight."""

    async def scenario() -> None:
        collector = await Collector(mosquitto, receive_maximum=1000).start("w/#")
        client = AsyncClient(settings(mosquitto, "pub", max_unacked=500), lambda m: None)
        await client.connect()
        assert client._paho is not None
        client._paho._last_mid = 65_535 - 700  # test-only: the next ids run up to the wrap and past it
        sent = 0
        while sent < 3000:
            await client.wait_capacity()
            while sent < 3000 and client.unacked < 500:
                client.publish("w/x", str(sent).encode())
                sent += 1
        await asyncio.wait_for(client.drain(), 10)
        await eventually(lambda: len(collector.messages) >= 3000, "every message")
        assert [int(m.payload) for m in collector.messages] == list(range(3000)), (
            "lost, duplicated or reordered"
        )
        assert client._paho._last_mid < 65_535 - 700, "the packet ids did not wrap"
        await client.disconnect()
        await collector.client.disconnect()

    run_clean(scenario())


def test_unacknowledged_messages_hold_the_broker_back_and_acks_go_in_order(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        collector = await Collector(mosquitto, hold=True, receive_maximum=3).start("r/#")
        publisher = AsyncClient(settings(mosquitto, "pub"), lambda m: None)
        await publisher.connect()
        for i in range(10):
            publisher.publish("r/x", str(i).encode())
        await asyncio.wait_for(publisher.drain(), 5)  # all at the broker
        await eventually(lambda: len(collector.messages) == 3, "the receive maximum's worth")
        # Dealt with out of order: the second alone frees nothing (acks go in arrival order) ...
        collector.client.done(collector.messages[1])
        # ... a barrier: a round trip to the broker (a publish and its ack) after the done() above.
        publisher.publish("other", b"")
        await asyncio.wait_for(publisher.drain(), 5)
        assert len(collector.messages) == 3
        collector.client.done(collector.messages[0])  # now both go, and more arrive
        await eventually(lambda: len(collector.messages) > 3, "more after the acks")
        collector.hold = False
        for message in collector.messages:
            collector.client.done(message)
        await eventually(lambda: len(collector.messages) == 10, "the rest")
        assert [int(m.payload) for m in collector.messages] == list(range(10))
        await publisher.disconnect()
        await collector.client.disconnect()

    run_clean(scenario())


def test_keepalive_notices_a_broker_that_stops_answering(mosquitto: Mosquitto) -> None:
    """A black-holed link: the socket stays open, nothing comes back. Detected by the keepalive."""

    async def scenario() -> None:
        client = AsyncClient(settings(mosquitto, "k", keepalive_s=1), lambda m: None)
        await client.connect()
        assert mosquitto.process is not None
        os.kill(mosquitto.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            error = await asyncio.wait_for(asyncio.shield(client.closed), 10)
            took = time.monotonic() - started
        finally:
            os.kill(mosquitto.process.pid, signal.SIGCONT)
        assert isinstance(error, TransientError), error
        assert took < 5, f"took {took:.1f}s to notice"

    run_clean(scenario())


def test_connect_errors_are_typed_and_do_not_block_the_loop(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        running = asyncio.create_task(ticker())
        unreachable = AsyncClient(
            Settings("127.0.0.1", _dead_port(), "u", connect_timeout_s=2), lambda m: None
        )
        with pytest.raises(TransientError, match="cannot reach the MQTT broker"):
            await unreachable.connect()
        # A peer that accepts TCP but never answers CONNECT: a timeout, while the loop runs on.
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        before = ticks
        mute = AsyncClient(Settings("127.0.0.1", port, "m", connect_timeout_s=0.5), lambda m: None)
        with pytest.raises(TransientError, match="did not answer"):
            await mute.connect()
        assert ticks - before > 10, "the loop was blocked while connecting"
        silent.close()
        await silent.wait_closed()
        # Refused by the broker (it takes no anonymous clients): permanent, with the reason code.
        strict = Mosquitto(tmp_path / "strict", anonymous=False)
        strict.start()
        try:
            refused = AsyncClient(settings(strict, "r"), lambda m: None)
            with pytest.raises(
                PermanentError, match=r"refused the connection: Not authorized \(reason code 0x87\)"
            ):
                await refused.connect()
        finally:
            strict.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    run_clean(scenario())


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
