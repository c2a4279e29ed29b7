"""A TCP proxy that injects link faults between two real processes: cut, delay, black-hole.

``FaultProxy(target)`` listens on a free loopback port and forwards every connection to ``target``.
Its mode can be changed at any time, for connections already open and new ones alike:

- ``forward``: bytes pass both ways;
- ``delay``: each chunk is held ``delay_s`` before it is passed on (both directions);
- ``cut``: open connections are reset and new ones are closed as soon as they are accepted (what a
  peer sees when a link or a process goes away: the socket closes);
- ``blackhole``: connections stay open and new ones are accepted, but nothing passes in either
  direction and nothing is answered — packets dropped on the floor, no RST, no FIN. Only keepalives
  and deadlines can tell this from a quiet link, which is what it is for. What was sent meanwhile is
  delivered if the path returns before the peers give up (as TCP's retransmissions would).

The proxy runs its own asyncio loop on a daemon thread, so tests driving processes synchronously can
use it; ``close`` stops it and every connection it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import threading
from collections.abc import Iterator
from types import TracebackType

CHUNK = 64 * 1024
#: What a black-holed connection holds for when the path returns, per direction.
MAX_HELD_BYTES = 16 * 2**20


class Mode(enum.Enum):
    FORWARD = "forward"
    DELAY = "delay"
    CUT = "cut"
    BLACKHOLE = "blackhole"


class FaultProxy:
    def __init__(self, target: str, *, host: str = "127.0.0.1") -> None:
        target_host, _, port = target.rpartition(":")
        self._target = (target_host, int(port))
        self._host = host
        self.mode = Mode.FORWARD
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self.address = ""
        #: Connections accepted so far (a reconnecting client shows up here).
        self.accepted = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self.address

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, 0))
        self._server = await asyncio.start_server(self._accept, sock=sock)
        self.address = f"{self._host}:{sock.getsockname()[1]}"

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- faults ---------------------------------------------------------------------------------

    def set_mode(self, mode: Mode, *, delay_s: float = 0.0) -> None:
        """Change the fault now, for open connections and new ones."""
        asyncio.run_coroutine_threadsafe(self._set(mode, delay_s), self._loop).result(timeout=10)

    async def _set(self, mode: Mode, delay_s: float) -> None:
        self.mode, self.delay_s = mode, delay_s
        if mode is Mode.CUT:
            self._reset_all()
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def fault(self, mode: Mode, *, delay_s: float = 0.0) -> Iterator[None]:
        """``mode`` for the duration of the block, then forwarding again."""
        self.set_mode(mode, delay_s=delay_s)
        try:
            yield
        finally:
            self.set_mode(Mode.FORWARD)

    def _reset_all(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                sock = w.get_extra_info("socket")
                if sock is not None:  # RST rather than FIN: the peer sees the link go
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                w.close()
        self._writers.clear()

    # --- forwarding -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode is Mode.CUT:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    def _current(self) -> Mode:
        return self.mode

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held = bytearray()
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                if self.mode is Mode.BLACKHOLE:
                    # Take what arrives (the sender's writes succeed, as on a path that drops
                    # packets) and pass nothing on; TCP would retransmit it once the path is back, so
                    # it is held (bounded: a sender that outlasts the buffer is cut).
                    assert self._changed is not None
                    changed = asyncio.ensure_future(self._changed.wait())
                    more = asyncio.ensure_future(reader.read(CHUNK))
                    done, _ = await asyncio.wait({changed, more}, return_when=asyncio.FIRST_COMPLETED)
                    if more not in done:
                        more.cancel()
                        # Let the read finish cancelling (the reader allows one waiter); keep what it
                        # may have read meanwhile.
                        late = (await asyncio.gather(more, return_exceptions=True))[0]
                        if isinstance(late, bytes):
                            if not late:
                                return
                            held += late
                        continue
                    changed.cancel()
                    data = more.result()
                    if not data:
                        return
                    held += data
                    if len(held) > MAX_HELD_BYTES:
                        return
                    continue
                if self.mode is Mode.CUT:
                    return
                if held:
                    writer.write(bytes(held))
                    held.clear()
                    await writer.drain()
                data = await reader.read(CHUNK)
                if not data:
                    return
                if self.mode is Mode.DELAY and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)  # the injected fault itself, not synchronisation
                if self._current() is Mode.BLACKHOLE:  # it changed while the chunk was read
                    held += data
                    continue
                writer.write(data)
                await writer.drain()
