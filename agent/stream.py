"""The control connection as a driver of the agent core keeps it: opened when the core says
``OpenStream``, what arrives fed back as ``MessageReceived``, its end as one ``StreamClosed``, torn
down on ``CloseStream``. One implementation for the daemon and the simulator's virtual devices.

Connecting runs in a task (MQTT: TCP, CONNACK, SUBACK take a while); the core is told
``StreamOpened`` once it has, outside the ``step`` that asked. Nothing here raises or blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from agent.core import events as ev
from agent.transport.base import ChannelClosed, Connection, Transport
from common.errors import EdgefleetError, TransientError
from common.types import AgentMessage, DeviceIdentity

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class ControlStream:
    def __init__(
        self, *, dispatch: Callable[[ev.Event], None], spawn: Spawn, device_id: Callable[[], str]
    ) -> None:
        self._dispatch = dispatch
        self._spawn = spawn
        self._device_id = device_id
        #: Set by the driver before the core first asks for a stream.
        self.transport: Transport | None = None
        self._connection: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        #: Messages sent and received, for the simulator's report (and anyone curious).
        self.messages = 0

    def open(self, identity: DeviceIdentity) -> None:
        self.close()
        self._task = self._spawn(self._run(identity))

    async def _run(self, identity: DeviceIdentity) -> None:
        assert self.transport is not None
        task = asyncio.current_task()
        error: EdgefleetError
        try:
            connection = await self.transport.connect(identity)
        except EdgefleetError as exc:
            error = exc
        except Exception as exc:
            log.exception("device=%s control stream failed to open", self._device_id())
            error = TransientError(f"control stream failed to open: {exc!r}")
        else:
            if self._task is not task:  # closed (or replaced) while connecting
                connection.close()
                return
            self._connection = connection
            self._dispatch(ev.StreamOpened())
            try:
                while True:
                    message = await connection.receive()
                    self.messages += 1
                    self._dispatch(ev.MessageReceived(message))
            except EdgefleetError as exc:
                error = exc
            except Exception as exc:
                log.exception("device=%s control stream failed", self._device_id())
                error = TransientError(f"control stream failed: {exc!r}")
            if self._connection is not connection:
                return  # we closed (or replaced) it ourselves; the core knows
        if self._task is not task:
            return
        self.close()
        self._dispatch(ev.StreamClosed(error))

    def close(self) -> None:
        """Tear down the connection, if any (a transport's goodbye finishes in the background)."""
        task, self._task = self._task, None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # its reader sees the connection is no longer ours and stops
        elif task is not None and task is not asyncio.current_task():
            task.cancel()  # still connecting

    def send(self, message: AgentMessage) -> None:
        connection = self._connection
        if connection is None:
            return  # not connected: the core re-sends what matters after reconnecting
        try:
            connection.send(message)
            self.messages += 1
        except ChannelClosed:
            return  # it has ended: its reader tells the core why
        except TransientError as exc:  # e.g. full: the other end is not taking messages
            log.warning("device=%s %s; resetting the stream", self._device_id(), exc)
            self.close()
            self._dispatch(ev.StreamClosed(exc))
        except EdgefleetError as exc:  # this message can never go (e.g. too large); the link is fine
            log.error("device=%s cannot send a %s: %s", self._device_id(), type(message).__name__, exc)
