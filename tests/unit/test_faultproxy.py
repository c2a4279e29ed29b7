"""The test kit's fault-injecting TCP proxy (simulator.faultproxy) against a real echo server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from simulator.faultproxy import FaultProxy, Mode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def echo() -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        conns: list[socket.socket] = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()
        for c in conns:
            c.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    server.close()


def _echo(conn: socket.socket) -> None:
    try:
        while data := conn.recv(65536):
            conn.sendall(data)
    except OSError:
        pass


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def roundtrip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(echo: str) -> None:
    with FaultProxy(echo) as proxy:
        s = connect(proxy.address)
        assert roundtrip(s, b"hello" * 1000) == b"hello" * 1000
        s.close()


def test_cut_resets_open_connections_and_refuses_new_ones(echo: str) -> None:
    with FaultProxy(echo) as proxy:
        s = connect(proxy.address)
        assert roundtrip(s, b"x") == b"x"
        proxy.set_mode(Mode.CUT)
        with pytest.raises(OSError):
            s.sendall(b"y")
            if not s.recv(10):
                raise ConnectionResetError("closed")
        fresh = connect(proxy.address)
        assert fresh.recv(10) == b""  # accepted, then closed at once
        proxy.set_mode(Mode.FORWARD)
        again = connect(proxy.address)
        assert roundtrip(again, b"z") == b"z"
        for c in (s, fresh, again):
            c.close()


def test_blackhole_keeps_the_connection_open_answers_nothing_then_delivers(echo: str) -> None:
    with FaultProxy(echo) as proxy:
        s = connect(proxy.address)
        assert roundtrip(s, b"a") == b"a"
        proxy.set_mode(Mode.BLACKHOLE)
        s.sendall(b"lost?")  # the write succeeds: nothing tells the sender
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):  # no answer, no reset, no close
            s.recv(10)
        proxy.set_mode(Mode.FORWARD)  # the path returns: what was sent arrives, like retransmission
        s.settimeout(5)
        got = b""
        while len(got) < 5:
            got += s.recv(10)
        assert got == b"lost?"
        s.close()
