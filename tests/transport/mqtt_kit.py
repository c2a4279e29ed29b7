"""Helpers for the MQTT tests: a controller with its bridge on a test broker, and an observer that
sees what crosses the broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agent.transport import Transport
from agent.transport.mqtt import MqttConfig, MqttTransport
from common.mqtt.client import AsyncClient, Incoming, Settings, subscription
from controller.api.mqtt_bridge import MqttBridge, MqttBridgeConfig
from simulator.broker import Mosquitto
from tests.integration.harness import running_controller
from tests.transport.conformance import WAIT_S, Harness


@contextlib.asynccontextmanager
async def mqtt_harness(
    tmp_path: Path, broker: Mosquitto, *, agent: dict[str, Any] | None = None, **bridge: Any
) -> AsyncIterator[Harness]:
    """A controller bridging ``broker`` (connected before this yields) and MQTT transports for agents."""
    bridge.setdefault("notice_interval_s", 0.0)
    config = MqttBridgeConfig(broker.host, broker.port, **bridge)
    async with running_controller(tmp_path / "controller", mqtt=config) as fleet:
        assert fleet.controller.bridge is not None
        await fleet.controller.bridge.wait_connected()

        def make(max_queued: int) -> Transport:
            return MqttTransport(MqttConfig(broker.host, broker.port, max_queued=max_queued, **(agent or {})))

        h = Harness(fleet, make)
        try:
            yield h
        finally:
            await h.aclose()


def bridge_of(h: Harness) -> MqttBridge:
    bridge = h.controller.bridge
    assert bridge is not None
    return bridge


class Observer:
    """A plain MQTT client subscribed to some topics: what a dashboard (or an eavesdropper) sees."""

    def __init__(self, broker: Mosquitto, client_id: str = "observer") -> None:
        self.messages: asyncio.Queue[Incoming] = asyncio.Queue()
        self.client = AsyncClient(Settings(broker.host, broker.port, client_id, clean_start=True), self._on)

    def _on(self, message: Incoming) -> None:
        self.messages.put_nowait(message)
        self.client.done(message)

    async def start(self, *filters: str, retain_as_published: bool = False) -> Observer:
        """Subscribe to ``filters``. ``retain_as_published``: a message published after we subscribed
        keeps the publisher's retain flag (by default the broker clears it on live delivery), so
        "published retained" can be checked whichever of the two reaches the broker first."""
        await self.client.connect()
        subscriptions = [subscription(f) for f in filters]
        for _, options in subscriptions:
            options.retainAsPublished = retain_as_published
        await self.client.subscribe(subscriptions)
        return self

    async def expect(
        self, predicate: Callable[[Incoming], bool], what: str, wait_s: float = WAIT_S
    ) -> Incoming:
        """The first message matching ``predicate`` (others are skipped)."""
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    message = await self.messages.get()
                    if predicate(message):
                        return message
        except TimeoutError:
            raise AssertionError(f"timed out after {wait_s}s waiting for {what}") from None

    async def aclose(self) -> None:
        await self.client.disconnect()
