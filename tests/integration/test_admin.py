"""AdminService through fleetctl's AdminClient (and the raw stub): bad input is refused cleanly."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from common import limits, serde
from common.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from common.grpc_errors import ERROR_CODE_KEY
from common.types import Heartbeat, TelemetryAck
from controller.api import admin_api
from controller.toolchain.digits import DigitsArtifacts
from tests.integration.harness import (
    READ_TIMEOUT_S,
    Fleet,
    rpc_error,
    run,
    running_controller,
    write_add_model,
)

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
#: A call that does not wait behind a model import is answered well within this.
SERVED_WITHIN_S = 3.0


async def _import(fleet: Fleet, path: Path, name: str = "digits", variant: str = "fp32") -> str:
    model = await fleet.call_admin(fleet.admin.import_model, path, name=name, variant=variant)
    found = model.variant(variant)
    assert found is not None
    return found.sha256


async def _events(call: Any) -> list[Any]:
    """Every event of a server-streaming call (ImportModel streams progress, then the model)."""
    return [event async for event in call]


def test_assign_names_what_is_missing(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            await _import(fleet, digits_model.model_path)
            await fleet.enroll("phone-1")
            before = await fleet.devices()

            error = await fleet.admin_error(fleet.admin.assign, "ghost-device", "digits")
            assert isinstance(error, NotFound)
            assert "ghost-device" in error.message

            error = await fleet.admin_error(fleet.admin.assign, "phone-1", "no-such-model")
            assert isinstance(error, NotFound)
            assert "no-such-model" in error.message

            error = await fleet.admin_error(fleet.admin.assign, "phone-1", "digits", "int4")
            assert isinstance(error, NotFound)
            assert "int4" in error.message
            assert "fp32" in error.message  # lists what there is

            error = await fleet.admin_error(fleet.admin.assign, "phone-1", "Bad Name")
            assert isinstance(error, InvalidArgument)

            assert await fleet.devices() == before
            assert (await fleet.device("phone-1")).desired_version == 0

    run(scenario())


def test_get_unknown_device_is_not_found(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            error = await fleet.admin_error(fleet.admin.get_device, "ghost-device")
            assert isinstance(error, NotFound)
            assert "ghost-device" in error.message

    run(scenario())


@pytest.mark.parametrize("kind", ["random bytes", "truncated onnx", "empty file"])
def test_import_of_a_broken_model_leaves_no_trace(
    tmp_path: Path, digits_model: DigitsArtifacts, kind: str
) -> None:
    good = digits_model.model_path.read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(
        {"random bytes": os.urandom(50_000), "truncated onnx": good[: len(good) // 2], "empty file": b""}[
            kind
        ]
    )

    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            await _import(fleet, digits_model.model_path)
            models, files = await fleet.call_admin(fleet.admin.list_models), fleet.artifact_files()
            assert len(files) == 1

            for name in ("digits", "other"):
                error = await fleet.admin_error(fleet.admin.import_model, broken, name=name)
                assert isinstance(error, InvalidArgument)
                assert "not a valid ONNX model" in error.message
            assert fleet.artifact_files() == files
            assert await fleet.call_admin(fleet.admin.list_models) == models

    run(scenario())


def test_import_is_idempotent(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            sha = await _import(fleet, digits_model.model_path)
            models, files = await fleet.call_admin(fleet.admin.list_models), fleet.artifact_files()
            fleet.clock.advance(60)
            assert await _import(fleet, digits_model.model_path) == sha
            assert await fleet.call_admin(fleet.admin.list_models) == models  # created_at unchanged too
            assert fleet.artifact_files() == files == [f"sha256/{sha}"]

            # The same bytes as another variant share one artifact.
            assert await _import(fleet, digits_model.model_path, variant="copy") == sha
            (model,) = await fleet.call_admin(fleet.admin.list_models)
            assert sorted(v.variant for v in model.variants) == ["copy", "fp32"]
            assert fleet.artifact_files() == files

    run(scenario())


def test_import_of_different_bytes_under_a_taken_name_is_refused(tmp_path: Path) -> None:
    first = write_add_model(tmp_path / "first.onnx", 100)
    second = write_add_model(tmp_path / "second.onnx", 100, offset=1.0)

    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            sha = await _import(fleet, first, name="adder")
            models, files = await fleet.call_admin(fleet.admin.list_models), fleet.artifact_files()
            error = await fleet.admin_error(fleet.admin.import_model, second, name="adder")
            assert isinstance(error, AlreadyExists)
            assert sha in error.message
            # The refused bytes were not kept.
            assert fleet.artifact_files() == files
            assert await fleet.call_admin(fleet.admin.list_models) == models

    run(scenario())


def test_import_over_the_size_limit_is_refused(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    size = digits_model.model_path.stat().st_size

    async def scenario() -> None:
        async with running_controller(tmp_path / "small", max_model_bytes=size - 1) as fleet:
            files = fleet.artifact_files()
            error = await fleet.admin_error(fleet.admin.import_model, digits_model.model_path, name="digits")
            assert isinstance(error, InvalidArgument)
            assert str(size - 1) in error.message
            assert fleet.artifact_files() == files == []
            assert await fleet.call_admin(fleet.admin.list_models) == []
        # Exactly at the limit is accepted.
        async with running_controller(tmp_path / "exact", max_model_bytes=size) as fleet:
            await _import(fleet, digits_model.model_path)

    run(scenario())


def test_import_must_start_with_a_header(tmp_path: Path, digits_model: DigitsArtifacts) -> None:
    data = digits_model.model_path.read_bytes()

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            stub = serde.AdminServiceStub(fleet.channel())

            async def no_header():  # type: ignore[no-untyped-def]
                yield serde.import_model_request_to_pb(data)

            error = await rpc_error(
                _events(stub.ImportModel(no_header(), timeout=READ_TIMEOUT_S)),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "header" in error.message
            assert fleet.artifact_files() == []
            assert await fleet.call_admin(fleet.admin.list_models) == []

    run(scenario())


def test_oversized_grpc_message_is_refused_and_the_server_carries_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            await fleet.enroll("phone-1")
            # A client that would send anything: the limit must be enforced by the server.
            stub = serde.AdminServiceStub(fleet.channel(options=[("grpc.max_send_message_length", -1)]))
            huge = serde.admin_pb.GetDeviceRequest(device_id="x" * (limits.MAX_GRPC_MESSAGE_BYTES + 1))
            error = await rpc_error(
                stub.GetDevice(huge, timeout=READ_TIMEOUT_S), grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            assert isinstance(error, ResourceExhausted)
            # The server still answers, on the same channel and on fleetctl's.
            pb = await stub.GetDevice(serde.get_device_request_to_pb("phone-1"), timeout=READ_TIMEOUT_S)
            assert serde.device_from_pb(pb).id == "phone-1"
            assert list(await fleet.devices()) == ["phone-1"]

    run(scenario())


@pytest.mark.parametrize(("ttl_s", "uses"), [(0, 1), (60, 0), (366 * 24 * 3600, 1)])
def test_create_token_refuses_bad_bounds(tmp_path: Path, ttl_s: int, uses: int) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            error = await fleet.admin_error(fleet.admin.create_token, ttl_s=ttl_s, uses=uses)
            assert isinstance(error, InvalidArgument)
            assert await fleet.enroll("phone-1")  # the service is fine afterwards

    run(scenario())


@pytest.mark.parametrize("stage", ["onnx check", "storing"])
def test_import_does_not_stall_the_control_plane(
    tmp_path: Path, digits_model: DigitsArtifacts, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """While an import is checked or stored (seconds for a 1 GiB model), devices and fleetctl are served:
    that work must not sit on the store thread every hello, ack and heartbeat queues behind."""
    entered, release = threading.Event(), threading.Event()

    def held(real: Callable[..., T]) -> Callable[..., T]:
        def wrapper(*args: Any, **kwargs: Any) -> T:
            entered.set()
            release.wait(READ_TIMEOUT_S)
            return real(*args, **kwargs)

        return wrapper

    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            agent = await fleet.enroll("phone-1")
            if stage == "onnx check":
                monkeypatch.setattr(admin_api, "inspect_onnx", held(admin_api.inspect_onnx))
            else:
                artifacts = fleet.controller.artifacts
                monkeypatch.setattr(artifacts, "adopt", held(artifacts.adopt))
            importing = asyncio.create_task(_import(fleet, digits_model.model_path))
            try:
                assert await asyncio.to_thread(entered.wait, READ_TIMEOUT_S), (
                    f"the import never reached {stage}"
                )
                # The import is parked inside that stage: the rest of the controller carries on.
                stream, _ = await asyncio.wait_for(agent.online(), SERVED_WITHIN_S)
                await asyncio.wait_for(stream.send(Heartbeat(sent_at_ms=1)), SERVED_WITHIN_S)
                await asyncio.wait_for(stream.expect(TelemetryAck), SERVED_WITHIN_S)  # answered: alive
                await asyncio.wait_for(stream.expect_nothing_else(), SERVED_WITHIN_S)
                device = await asyncio.wait_for(fleet.device("phone-1"), SERVED_WITHIN_S)
                assert device.connected
                assert not importing.done()
            finally:
                release.set()
            sha = await importing
            assert fleet.artifact_files() == [f"sha256/{sha}"]

    run(scenario())


def test_concurrent_imports_of_the_same_bytes_both_succeed(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            path = digits_model.model_path
            same = await asyncio.gather(*(_import(fleet, path) for _ in range(3)))
            other_names = await asyncio.gather(*(_import(fleet, path, name=f"copy-{i}") for i in range(3)))
            assert len(set(same + other_names)) == 1
            sha = same[0]
            assert fleet.artifact_files() == [f"sha256/{sha}"]
            models = await fleet.call_admin(fleet.admin.list_models)
            assert sorted(m.name for m in models) == ["copy-0", "copy-1", "copy-2", "digits"]

    run(scenario())


def test_failed_import_never_discards_bytes_a_concurrent_import_registers(tmp_path: Path) -> None:
    """Import A of some bytes is refused (its name is taken by other bytes) and discards what it stored,
    while import B of the same bytes under a free name succeeds: B's artifact must survive."""
    taken = write_add_model(tmp_path / "taken.onnx", 100)
    rounds = [write_add_model(tmp_path / f"new-{i}.onnx", 30_000, offset=float(i + 1)) for i in range(6)]

    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            await _import(fleet, taken, name="adder")
            agent = await fleet.enroll("phone-1")
            for i, path in enumerate(rounds):
                refused, registered = await asyncio.gather(
                    fleet.admin_error(fleet.admin.import_model, path, name="adder"),
                    _import(fleet, path, name=f"fresh-{i}"),
                )
                assert isinstance(refused, AlreadyExists)
                chunks = await agent.fetch(registered)
                assert b"".join(c.data for c in chunks) == path.read_bytes(), f"round {i}: bytes gone"
            assert len(fleet.artifact_files()) == 1 + len(rounds)

    run(scenario())


def test_unexpected_error_is_internal_with_the_error_code_trailer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            await fleet.enroll("phone-1")
            monkeypatch.setattr(admin_api.fleet, "assign", broken)
            stub = serde.AdminServiceStub(fleet.channel())
            call = stub.Assign(
                serde.assign_request_to_pb("phone-1", "digits", "fp32"), timeout=READ_TIMEOUT_S
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in (err.value.details() or "")
            trailers = dict(err.value.trailing_metadata() or ())
            assert trailers.get(ERROR_CODE_KEY) == "internal"
            # The server answers on; the traceback went to the log, not to the client.
            assert (await fleet.device("phone-1")).id == "phone-1"

    run(scenario())
    logged = [r.exc_info[1] for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
    assert any(isinstance(e, RuntimeError) and "secret internals" in str(e) for e in logged), caplog.records
