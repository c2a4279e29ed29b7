"""Agents profile a model's blocks on their own hardware: real in-process agent daemons against an
in-process controller over real loopback gRPC.

digits is imported with every precision (block artifacts, profile inputs and eval data are kept), two
agents of one hardware class are asked to profile it, both report, and the controller's per-class
profile is the median of what the store holds for each device. Requests the controller cannot honour,
and reports it did not ask for, are refused with errors that say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from agent.core import Link
from agent.daemon import AgentConfig, AgentDaemon
from common.errors import EdgefleetError, InvalidArgument, NotFound, PermanentError
from common.types import PHONE_CPU, BlockTiming, CallOverhead, Model, ProfileReport, ProfileRequest
from controller.client import AdminClient
from controller.server import Controller
from controller.service import sync
from controller.toolchain.digits import DigitsArtifacts
from simulator.processes import free_port
from tests.agent.test_daemon import FAST, admin, controller_on, eventually
from tests.integration.harness import POLICY, run, running_controller

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
PRECISIONS = ("fp32", "fp16", "int8", "int4")


@contextlib.asynccontextmanager
async def agent(data_dir: Path, controller: str, token: str, device_id: str) -> AsyncIterator[AgentDaemon]:
    daemon = AgentDaemon(
        AgentConfig(
            controller=controller,
            data_dir=data_dir,
            hardware_class=PHONE_CPU,
            token=token,
            device_id=device_id,
            backoff=FAST,
            fetch_backoff=FAST,
        )
    )
    await daemon.start()
    runner = asyncio.create_task(daemon.run_until_stopped())
    try:
        yield daemon
    finally:
        await daemon.close()
        await runner


async def refused(address: str, call: Callable[[AdminClient], object]) -> EdgefleetError:
    try:
        result = await admin(address, call)
    except EdgefleetError as exc:
        return exc
    raise AssertionError(f"expected the controller to refuse, it answered {result!r}")


def test_two_agents_of_a_class_profile_and_the_class_profile_is_their_median(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    async def scenario() -> None:
        port = free_port()
        address = f"127.0.0.1:{port}"
        async with controller_on(tmp_path / "controller", port) as controller:
            model: Model = await admin(
                address,
                lambda c: c.import_model(
                    digits_model.model_path, name="digits", eval_data=eval_npz, precisions=PRECISIONS
                ),
            )
            assert model.profile_inputs_sha256 and model.eval_data_sha256
            assert all(b.artifact_sha256 for b in model.block_profiles)
            token = (await admin(address, lambda c: c.create_token(ttl_s=600, uses=2))).token
            async with (
                agent(tmp_path / "a", address, token, "phone-a") as a,
                agent(tmp_path / "b", address, token, "phone-b") as b,
            ):
                await eventually(lambda: a.connected and b.connected, "both agents to connect")
                records = await admin(
                    address, lambda c: c.request_profile("digits", hardware_class=PHONE_CPU)
                )
                assert sorted(r.device_id for r in records) == ["phone-a", "phone-b"]
                asked = {r.device_id: r.request_id for r in records}

                store = controller.db.store
                reports = await eventually(
                    lambda: _answered(controller, asked), "both agents to report", within=60
                )
                assert store.list_pending_profile_requests() == []
                _check_reports(model, reports)
                # The class profile is the median of the two devices' latest reports, cell by cell.
                described: Model = await admin(address, lambda c: c.get_model("digits"))
                _check_median(described, reports)
                # Profile artifacts were pruned once each profile was done; the agents serve nothing.
                shas = {bp.artifact_sha256 for bp in model.block_profiles} | {model.profile_inputs_sha256}
                for daemon in (a, b):
                    assert daemon.core.profile is None
                    assert not daemon.cache.complete_artifacts() & shas
                    assert daemon.core.link is Link.READY

                # Asked again, an agent profiles again (a new request id), and the class profile follows
                # the newest reports; the superseded request's report is stale and refused.
                again = await admin(address, lambda c: c.request_profile("digits", device_ids=["phone-a"]))
                assert [r.device_id for r in again] == ["phone-a"]
                await eventually(
                    lambda: _answered(
                        controller, {"phone-a": again[0].request_id, "phone-b": asked["phone-b"]}
                    ),
                    "phone-a to report again",
                    within=60,
                )
                stale = ProfileReport(request_id=asked["phone-a"], model_name="digits")
                with pytest.raises(NotFound, match="stale"):
                    store.record_profile_report("phone-a", stale, now_ms=0)
                latest = {r.device_id: r for r in store.list_profile_reports("digits")}
                assert latest["phone-a"].report.request_id == again[0].request_id
                _check_median(await admin(address, lambda c: c.get_model("digits")), list(latest.values()))

            # Requests the controller cannot honour are refused, naming what is wrong.
            plain = tmp_path / "plain.onnx"
            plain.write_bytes(digits_model.model_path.read_bytes())
            await admin(address, lambda c: c.import_model(plain, name="plain"))
            error = await refused(address, lambda c: c.request_profile("plain", hardware_class=PHONE_CPU))
            assert isinstance(error, PermanentError) and error.code == "no_block_artifacts"
            assert "--precisions" in str(error)
            error = await refused(address, lambda c: c.request_profile("ghost", hardware_class=PHONE_CPU))
            assert isinstance(error, NotFound) and "ghost" in str(error)
            error = await refused(address, lambda c: c.request_profile("digits", device_ids=["phone-z"]))
            assert isinstance(error, NotFound) and "phone-z" in str(error)
            error = await refused(address, lambda c: c.request_profile("digits", hardware_class="edge-npu"))
            assert isinstance(error, NotFound) and "edge-npu" in str(error) and PHONE_CPU in str(error)
            error = await refused(address, lambda c: c.request_profile("digits"))
            assert isinstance(error, InvalidArgument) and "hardware class" in str(error)
            assert store.list_pending_profile_requests() == []

    asyncio.run(scenario())


def _answered(controller: Controller, asked: dict[str, str]) -> list[object] | None:
    """The stored reports once every device in ``asked`` reported for exactly that request."""
    reports = controller.db.store.list_profile_reports("digits")
    got = {r.device_id: r.report.request_id for r in reports}
    return list(reports) if all(got.get(d) == rid for d, rid in asked.items()) else None


def _check_reports(model: Model, reports: list[object]) -> None:
    cells = {(b.start_cut, b.end_cut, b.precision, b.batch_size) for b in model.block_profiles}
    for stored in reports:
        report = stored.report  # type: ignore[attr-defined]
        assert stored.hardware_class == PHONE_CPU  # type: ignore[attr-defined]
        assert report.error == ""
        timed = {(t.start_cut, t.end_cut, t.precision, t.batch_size): t for t in report.timings}
        assert set(timed) == cells  # every block at every precision and batch size, none dropped
        assert all(t.latency_ms > 0 and not t.error for t in timed.values())
        assert {c.batch_size for c in report.call_overhead} == {1, 32}
        assert all(c.latency_ms > 0 for c in report.call_overhead)


def _check_median(model: Model, reports: list[object]) -> None:
    per_cell: dict[tuple[int, int, str, int], list[float]] = {}
    for stored in reports:
        for t in stored.report.timings:  # type: ignore[attr-defined]
            per_cell.setdefault((t.start_cut, t.end_cut, t.precision, t.batch_size), []).append(t.latency_ms)
    grid = {(c.start_cut, c.end_cut, c.precision, c.batch_size): c for c in model.class_profiles}
    assert {c.hardware_class for c in model.class_profiles} == {PHONE_CPU}
    assert set(grid) == set(per_cell)
    for cell, values in per_cell.items():
        assert len(values) == 2
        assert grid[cell].devices == 2
        assert grid[cell].latency_ms == pytest.approx(statistics.median(values))
        assert grid[cell].error == ""


@pytest.mark.parametrize("scan_above", [sync.SCAN_WHOLE_FLEET_ABOVE, 0], ids=["by-ids", "whole-fleet-scan"])
def test_a_request_is_resent_until_its_report_arrives_and_a_stale_report_keeps_the_stream(
    tmp_path: Path,
    digits_model: DigitsArtifacts,
    eval_npz: Path,
    monkeypatch: pytest.MonkeyPatch,
    scan_above: int,
) -> None:
    """Over the real protocol with a scripted agent and the controller's fake clock: a request goes out
    when made, again after resend_after_s, again with a reconnecting device's hello, and never once
    its report is stored; a report nobody asked for is logged and refused, not a stream error. The
    reconcile pass finds it the same way whether it reads by device ids or scans the whole fleet."""
    monkeypatch.setattr(sync, "SCAN_WHOLE_FLEET_ABOVE", scan_above)

    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            model = await fleet.call_admin(
                fleet.admin.import_model,
                digits_model.model_path,
                name="digits",
                eval_data=eval_npz,
                precisions=("fp32", "int8"),
            )
            agent_ = await fleet.enroll("phone-1")
            stream, _ = await agent_.online()
            (record,) = await fleet.call_admin(fleet.admin.request_profile, "digits", device_ids=["phone-1"])
            request = await stream.expect(ProfileRequest)
            assert request.request_id == record.request_id and request.model_name == "digits"
            assert {(b.start_cut, b.end_cut, b.precision, b.artifact_sha256) for b in request.blocks} == {
                (b.start_cut, b.end_cut, b.precision, b.artifact_sha256) for b in model.block_profiles
            }
            assert (request.inputs_sha256, request.batch_sizes) == (model.profile_inputs_sha256, (1, 32))
            fp32 = model.variant("fp32")
            assert fp32 is not None and request.source_sha256 == fp32.sha256
            await fleet.controller.hub.reconcile()  # too soon to resend
            await stream.expect_nothing_else()
            fleet.clock.advance(POLICY.resend_after_s + 1)
            await fleet.controller.hub.reconcile()
            assert await stream.expect(ProfileRequest) == request

            await stream.close()  # the device comes back: its hello's replies carry the request
            stream, _ = await agent_.online()
            assert await stream.expect(ProfileRequest) == request

            await stream.send(ProfileReport(request_id="prof-nobody-asked", model_name="digits"))
            timings = tuple(
                BlockTiming(b.start_cut, b.end_cut, b.precision, n, 0.5)
                for b in request.blocks
                for n in (1, 32)
            )
            await stream.send(
                ProfileReport(
                    request.request_id, "digits", timings, (CallOverhead(1, 0.01), CallOverhead(32, 0.02))
                )
            )
            await stream.expect_nothing_else()  # the stream is alive and answered nothing else
            store = fleet.controller.db.store
            assert store.list_pending_profile_requests() == []
            (stored,) = store.list_profile_reports("digits")
            assert stored.report.request_id == request.request_id and stored.hardware_class == PHONE_CPU
            described = await fleet.call_admin(fleet.admin.get_model, "digits")
            assert {c.devices for c in described.class_profiles} == {1}
            assert {c.latency_ms for c in described.class_profiles} == {0.5}
            fleet.clock.advance(POLICY.resend_after_s + 1)
            await fleet.controller.hub.reconcile()
            await stream.expect_nothing_else()  # answered: never sent again

    run(scenario(), timeout=100)
