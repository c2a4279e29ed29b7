"""The agent daemon in-process against an in-process controller, over real loopback gRPC.

Faster than the process tests, and able to reach inside: resuming a download, restarting the agent
while the controller is down, and a model cache that rotted on disk while the agent was off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from agent.client import AgentClient
from agent.core import Link
from agent.core.backoff import BackoffPolicy
from agent.daemon import AgentConfig, AgentDaemon
from controller.client import AdminClient
from controller.server import Controller, ControllerConfig
from controller.service.sync import SyncPolicy
from controller.toolchain.digits import DigitsArtifacts
from simulator.processes import free_port

pytestmark = pytest.mark.timeout(90)
T = TypeVar("T")
FAST = BackoffPolicy(base_s=0.05, cap_s=0.5)


async def eventually(check: Callable[[], Awaitable[T] | T], what: str, within: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy (bounded; names what it waited for)."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = check()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return result  # type: ignore[return-value]
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


@contextlib.asynccontextmanager
async def controller_on(data_dir: Path, port: int) -> AsyncIterator[Controller]:
    controller = Controller(
        ControllerConfig(
            data_dir=data_dir,
            listen=f"127.0.0.1:{port}",
            policy=SyncPolicy(heartbeat_interval_ms=500),
            reconcile_interval_s=0.2,
            grace_s=0.5,
        )
    )
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()


@contextlib.asynccontextmanager
async def agent_on(data_dir: Path, controller: str, token: str = "") -> AsyncIterator[AgentDaemon]:
    daemon = AgentDaemon(
        AgentConfig(
            controller=controller,
            data_dir=data_dir,
            hardware_class="phone-cpu",
            token=token,
            device_id="phone-1",
            backoff=FAST,
        )
    )
    await daemon.start()
    runner = asyncio.create_task(daemon.run_until_stopped())
    try:
        yield daemon
    finally:
        await daemon.close()
        await runner


async def admin(address: str, fn: Callable[[AdminClient], T]) -> T:
    def call() -> T:
        with AdminClient(address) as client:
            return fn(client)

    return await asyncio.to_thread(call)


async def enrolled_and_serving(
    tmp_path: Path,
    digits: DigitsArtifacts,
    port: int,
    *,
    before_assign: Callable[[AgentDaemon, str], None] | None = None,
) -> str:
    """Start controller + agent, assign digits, wait until served; return the model sha."""
    address = f"127.0.0.1:{port}"
    async with controller_on(tmp_path / "controller", port):
        token = (await admin(address, lambda c: c.create_token(ttl_s=600, uses=1))).token
        model = await admin(address, lambda c: c.import_model(digits.model_path, name="digits"))
        sha = model.variants[0].sha256
        async with agent_on(tmp_path / "agent", address, token) as daemon:
            await eventually(lambda: daemon.core.link is Link.READY, "the agent to connect")
            if before_assign is not None:
                before_assign(daemon, sha)
            await admin(address, lambda c: c.assign("phone-1", "digits"))
            await eventually(lambda: daemon.core.reported.active_sha256 == sha, "the model to be served")
            await eventually(
                lambda: admin(address, lambda c: c.get_device("phone-1").converged),
                "the controller to see the ack",
            )
    return sha


def test_interrupted_download_resumes_from_the_partial_bytes(
    tmp_path: Path, digits_model: DigitsArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.artifacts import ArtifactStore

    offsets: list[int] = []
    original = ArtifactStore.read_chunks

    def spy(self: ArtifactStore, sha256: str, offset: int = 0, chunk_size: int = 1 << 20):  # type: ignore[no-untyped-def]
        offsets.append(offset)
        return original(self, sha256, offset, chunk_size)

    monkeypatch.setattr(ArtifactStore, "read_chunks", spy)
    data = digits_model.model_path.read_bytes()
    half = len(data) // 2

    def seed_partial(daemon: AgentDaemon, sha: str) -> None:
        # As if an earlier attempt died half-way: the first half is already on disk.
        daemon.cache.append(sha, 0, data[:half])

    asyncio.run(enrolled_and_serving(tmp_path, digits_model, free_port(), before_assign=seed_partial))
    assert offsets == [half], "the agent should have asked only for the missing tail"


def test_restart_while_controller_is_down_serves_the_last_model_at_once(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    port = free_port()
    sha = asyncio.run(enrolled_and_serving(tmp_path, digits_model, port))
    x = np.load(digits_model.sample_path).astype(np.float32)

    async def restart_offline() -> None:
        # Nothing listens on the controller's port now.
        async with agent_on(tmp_path / "agent", f"127.0.0.1:{port}") as daemon:
            await eventually(lambda: daemon.slot.active is not None, "the restored model", within=10)
            assert daemon.core.link is not Link.READY
            outputs, answered_by, _ = await asyncio.to_thread(_infer, daemon.address, x)
            assert answered_by == sha
            assert outputs["label"].shape == (8,)
            # Requests answered offline are kept for the controller.
            await eventually(lambda: daemon.core.pending_telemetry >= 1, "offline telemetry to be kept")

    asyncio.run(restart_offline())


def test_model_cache_rotted_on_disk_is_not_served_after_restart(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    port = free_port()
    sha = asyncio.run(enrolled_and_serving(tmp_path, digits_model, port))
    cached = tmp_path / "agent" / "artifacts" / "sha256" / sha
    assert cached.exists()
    rotted = bytearray(cached.read_bytes())
    rotted[100] ^= 0x01
    cached.write_bytes(bytes(rotted))

    async def restart_and_heal() -> None:
        async with (
            controller_on(tmp_path / "controller", port),
            agent_on(tmp_path / "agent", f"127.0.0.1:{port}") as daemon,
        ):
            # The agent finds its cached copy corrupt, does not serve it, and downloads it again by
            # itself (it acknowledged that model, so the controller would not resend it).
            await eventually(
                lambda: daemon.slot.active is not None and daemon.core.reported.active_sha256 == sha,
                "the model to be fetched again and served",
            )
            assert cached.read_bytes() == digits_model.model_path.read_bytes()

    asyncio.run(restart_and_heal())


def test_every_agent_log_line_names_the_device(
    tmp_path: Path, digits_model: DigitsArtifacts, caplog: pytest.LogCaptureFixture
) -> None:
    # Enrollment, download, verification, load and swap: the whole path of a first assignment.
    with caplog.at_level(logging.DEBUG, logger="agent"):
        asyncio.run(enrolled_and_serving(tmp_path, digits_model, free_port()))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("agent")]
    assert any("downloaded artifact" in line for line in lines)
    assert any("loaded in" in line for line in lines)
    unnamed = [line for line in lines if "device=phone-1" not in line]
    assert not unnamed


def _infer(address: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], str, float]:
    with AgentClient(address) as client:
        return client.infer({"input": x})
