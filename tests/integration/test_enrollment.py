"""Enrollment and device authentication over real gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from common.errors import Unauthenticated
from common.types import DeviceIdentity
from controller.api.device_api import AUTHORIZATION_KEY, DEVICE_ID_KEY
from tests.integration.harness import FakeAgent, Fleet, rpc_error, run, running_controller

pytestmark = pytest.mark.timeout(60)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def _refused(fleet: Fleet, token: str, device_id: str = "") -> str:
    """Enroll must be refused as UNAUTHENTICATED without touching the registry; returns the error code."""
    before = await fleet.devices()
    error = await rpc_error(fleet.enroll_call(token, device_id), UNAUTHENTICATED)
    assert isinstance(error, Unauthenticated)
    assert await fleet.devices() == before
    return error.code


def test_token_gives_an_identity_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            token = await fleet.token(uses=1)
            identity = await fleet.enroll_call(token, "phone-1")
            assert identity.device_id == "phone-1"
            assert identity.credential
            devices = await fleet.devices()
            assert list(devices) == ["phone-1"]
            assert devices["phone-1"].hardware.hardware_class == "phone-cpu"
            assert devices["phone-1"].connected is False

            assert await _refused(fleet, token, "phone-2") == "token_exhausted"
            assert await _refused(fleet, token) == "token_exhausted"

    run(scenario())


def test_generated_device_ids_are_distinct(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            token = await fleet.token(uses=2)
            first = await fleet.enroll_call(token)
            second = await fleet.enroll_call(token)
            assert first.device_id != second.device_id
            assert first.credential != second.credential
            assert sorted(await fleet.devices()) == sorted([first.device_id, second.device_id])

    run(scenario())


def test_expired_token_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            token = await fleet.token(ttl_s=60, uses=5)
            fleet.clock.advance(59.9)
            await fleet.enroll_call(token, "phone-1")  # still valid just before expiry
            fleet.clock.advance(0.1)
            assert await _refused(fleet, token, "phone-2") == "token_expired"
            fleet.clock.advance(3600)
            assert await _refused(fleet, token, "phone-2") == "token_expired"

    run(scenario())


@pytest.mark.parametrize("token", ["efb_garbage", "not-a-token-at-all", "x" * 500])
def test_unknown_token_is_refused(tmp_path: Path, token: str) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            await fleet.token()  # a real token exists, but it is not this one
            assert await _refused(fleet, token, "phone-1") == "token_unknown"

    run(scenario())


def test_taken_device_id_spends_no_token_use(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            await fleet.enroll("phone-1")
            token = await fleet.token(uses=1)
            before = await fleet.devices()
            error = await rpc_error(fleet.enroll_call(token, "phone-1"), grpc.StatusCode.ALREADY_EXISTS)
            assert "phone-1" in error.message
            assert await fleet.devices() == before
            # The refused attempt did not spend the only use.
            assert (await fleet.enroll_call(token, "phone-2")).device_id == "phone-2"

    run(scenario())


def test_enroll_with_bad_request_is_invalid_argument(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            token = await fleet.token(uses=1)
            error = await rpc_error(
                fleet.enroll_call(token, "Not A Valid Id"), grpc.StatusCode.INVALID_ARGUMENT
            )
            assert "requested_device_id" in error.message
            assert await fleet.devices() == {}
            # ... and the token was not spent on it.
            await fleet.enroll_call(token, "phone-1")

    run(scenario())


@pytest.mark.parametrize(
    "case",
    [
        "no metadata",
        "no credential",
        "wrong credential",
        "unknown device",
        "other device's credential",
        "no bearer",
    ],
)
def test_connect_needs_the_device_credential(tmp_path: Path, case: str) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            agent = await fleet.enroll("phone-1")
            other = await fleet.enroll("phone-2")
            own = agent.identity
            metadata = {
                "no metadata": (),
                "no credential": ((DEVICE_ID_KEY, own.device_id),),
                "wrong credential": ((DEVICE_ID_KEY, own.device_id), (AUTHORIZATION_KEY, "Bearer efd_wrong")),
                "unknown device": (
                    (DEVICE_ID_KEY, "phone-9"),
                    (AUTHORIZATION_KEY, f"Bearer {own.credential}"),
                ),
                "other device's credential": (
                    (DEVICE_ID_KEY, own.device_id),
                    (AUTHORIZATION_KEY, f"Bearer {other.identity.credential}"),
                ),
                "no bearer": ((DEVICE_ID_KEY, own.device_id), (AUTHORIZATION_KEY, own.credential)),
            }[case]
            stream = agent.connect(metadata)
            end = await stream.expect_end()
            assert end.status == UNAUTHENTICATED, end
            assert isinstance(end.error, Unauthenticated)
            assert end.error.code == "bad_credential"
            assert not (await fleet.device("phone-1")).connected
            # The right credential still works on the same channel.
            _, welcome = await agent.online()
            assert welcome.heartbeat_interval_ms > 0

    run(scenario())


def test_enrollment_is_safe_to_repeat_with_the_same_credential(tmp_path: Path) -> None:
    """An agent whose Enroll reply was lost asks again with the credential it chose: same identity."""

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            token = await fleet.token(uses=1)
            credential = "efd_" + "k" * 40
            first = await fleet.enroll_call(token, "phone-1", credential)
            assert first == DeviceIdentity(device_id="phone-1", credential=credential)
            devices = await fleet.devices()
            # The only use is spent, yet the repeat succeeds, and spends nothing.
            assert await fleet.enroll_call(token, "phone-1", credential) == first
            assert await fleet.devices() == devices
            store = fleet.controller.db.store
            (stored,) = await fleet.controller.db.run(store.list_tokens)
            assert stored.uses_left == 0

            # The identity works.
            _, welcome = await FakeAgent(fleet, first).online()
            assert welcome.heartbeat_interval_ms > 0

            # The same id with another credential is someone else: refused, as before.
            other = "efd_" + "x" * 40
            fresh = await fleet.token(uses=1)
            error = await rpc_error(
                fleet.enroll_call(fresh, "phone-1", other), grpc.StatusCode.ALREADY_EXISTS
            )
            assert "phone-1" in error.message
            assert list(await fleet.devices()) == ["phone-1"]
            assert (await fleet.enroll_call(fresh, "phone-2", other)).device_id == "phone-2"  # fresh unspent

            # A token is still required, even for a repeat.
            error = await rpc_error(
                fleet.enroll_call("", "phone-1", credential), grpc.StatusCode.INVALID_ARGUMENT
            )
            assert "bootstrap_token" in error.message

    run(scenario())
