"""The ``Store`` conformance suite: every implementation subclasses ``StoreConformance``.

Each test pins one rule from ``controller/store/base.py``; a store that passes here can replace any
other. Tokens, enrollment, devices and assignments are tested here; acks (``conformance_acks.py``) and
telemetry/models (``conformance_data.py``) are mixed in. Input builders live in ``helpers.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from common.errors import AlreadyExists, NotFound, PermanentError, Unauthenticated
from common.types import AssignmentAck, AssignmentFailure, BootstrapToken, Device, ReportedState
from controller.store.base import TOKEN_EXHAUSTED, TOKEN_EXPIRED, TOKEN_UNKNOWN, Store
from tests.store.conformance_acks import AckRules
from tests.store.conformance_data import DataRules
from tests.store.conformance_policies import PolicyRules
from tests.store.helpers import (
    EXPIRES,
    HW,
    T0,
    ack,
    add_token,
    assign,
    enroll,
    enroll_result,
    enrolled,
    hello,
    inference,
    run_concurrently,
)


class StoreConformance(AckRules, DataRules, PolicyRules, ABC):
    @abstractmethod
    def store_factory(self, tmp_path: Path) -> Store:
        """A new, empty store."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = self.store_factory(tmp_path)
        yield store
        store.close()

    # --- tokens ---------------------------------------------------------------------------------

    def test_create_token_returns_stored_token(self, store: Store) -> None:
        token = store.create_token(
            "tok-1", "hash-1", expires_at_ms=EXPIRES, uses=3, description="rack 3", now_ms=T0
        )
        assert token == BootstrapToken(
            "tok-1", expires_at_ms=EXPIRES, uses_total=3, uses_left=3, created_at_ms=T0, description="rack 3"
        )
        assert store.list_tokens() == [token]

    def test_list_tokens_newest_first(self, store: Store) -> None:
        assert store.list_tokens() == []
        add_token(store, "old", "h-old", now_ms=T0)
        add_token(store, "new", "h-new", now_ms=T0 + 2)
        add_token(store, "mid-1", "h-mid-1", now_ms=T0 + 1)
        add_token(store, "mid-2", "h-mid-2", now_ms=T0 + 1)
        assert [t.token_id for t in store.list_tokens()] == ["new", "mid-2", "mid-1", "old"]

    @pytest.mark.parametrize(("token_id", "token_hash"), [("tok-1", "other-hash"), ("other-id", "hash-1")])
    def test_duplicate_token_id_or_hash_is_refused(
        self, store: Store, token_id: str, token_hash: str
    ) -> None:
        first = add_token(store, "tok-1", "hash-1", uses=1)
        with pytest.raises(AlreadyExists):
            add_token(store, token_id, token_hash, uses=9)
        assert store.list_tokens() == [first]

    # --- enrollment -----------------------------------------------------------------------------

    def test_enroll_registers_device_and_spends_one_use(self, store: Store) -> None:
        add_token(store, uses=2)
        device, created = enroll_result(store, "dev-1", credential_hash="cred-1", now_ms=T0 + 5)
        assert created
        assert device.id == "dev-1"
        assert device.hardware == HW
        assert device.enrolled_at_ms == T0 + 5
        assert (device.connected, device.desired_version, device.acked_version) == (False, 0, 0)
        assert device.assignment is None
        assert device.reported == ReportedState()
        assert device.last_failure is None
        assert (device.records_received, device.last_sequence, device.records_dropped) == (0, 0, 0)
        assert store.get_device("dev-1") == device
        assert store.get_credential_hash("dev-1") == "cred-1"
        assert store.list_tokens()[0].uses_left == 1

    def test_enrolled_device_keeps_its_own_copy_of_the_hardware(self, store: Store) -> None:
        add_token(store)
        labels = {"site": "lab"}
        enroll(store, "dev-1", hardware=replace(HW, labels=labels))
        labels["site"] = "changed"
        assert store.get_device("dev-1").hardware.labels == {"site": "lab"}

    def test_token_works_until_one_ms_before_expiry(self, store: Store) -> None:
        add_token(store, expires_at_ms=EXPIRES)
        assert enroll(store, "dev-1", now_ms=EXPIRES - 1).id == "dev-1"

    def test_token_is_expired_at_its_expiry_time(self, store: Store) -> None:
        add_token(store, expires_at_ms=EXPIRES)
        with pytest.raises(Unauthenticated) as err:
            enroll(store, "dev-1", now_ms=EXPIRES)
        assert err.value.code == TOKEN_EXPIRED
        assert "expired at 2026-11-23T10:00:00Z" in str(err.value)

    def test_token_is_exhausted_after_its_uses(self, store: Store) -> None:
        add_token(store, uses=3)
        for i in range(3):
            enroll(store, f"dev-{i}")
        with pytest.raises(Unauthenticated) as err:
            enroll(store, "dev-3")
        assert err.value.code == TOKEN_EXHAUSTED
        assert [d.id for d in store.list_devices()] == ["dev-0", "dev-1", "dev-2"]
        assert store.list_tokens()[0].uses_left == 0

    def test_unknown_token_is_refused(self, store: Store) -> None:
        add_token(store, token_hash="hash-1")
        with pytest.raises(Unauthenticated) as err:
            enroll(store, "dev-1", token_hash="no-such-hash")
        assert err.value.code == TOKEN_UNKNOWN
        assert "no-such-hash" not in str(err.value)
        assert store.list_devices() == []

    @pytest.mark.parametrize("cause", ["expired", "unknown", "duplicate-id"])
    def test_refused_enrollment_changes_nothing(self, store: Store, cause: str) -> None:
        add_token(store, uses=5)
        existing = enroll(store, "dev-1", credential_hash="cred-1", now_ms=T0 + 1)
        tokens_before = store.list_tokens()
        other_hw = replace(HW, hardware_class="cloud-gpu")
        attempts: dict[str, Callable[[], Device]] = {
            "expired": lambda: enroll(store, "dev-2", now_ms=EXPIRES),
            "unknown": lambda: enroll(store, "dev-2", token_hash="nope"),
            "duplicate-id": lambda: enroll(store, "dev-1", hardware=other_hw, credential_hash="cred-2"),
        }
        with pytest.raises(Unauthenticated if cause != "duplicate-id" else AlreadyExists):
            attempts[cause]()
        assert store.list_tokens() == tokens_before
        assert store.list_devices() == [existing]
        assert store.get_credential_hash("dev-1") == "cred-1"

    # --- repeated enrollment (an agent retrying with the credential it chose) ---------------------

    def test_repeated_enrollment_returns_the_device_and_spends_nothing(self, store: Store) -> None:
        add_token(store, uses=3)
        first = enroll(store, "dev-1", credential_hash="cred-1", now_ms=T0 + 1)
        tokens = store.list_tokens()
        assert tokens[0].uses_left == 2
        other_hw = replace(HW, cpu_cores=64)
        again, created = enroll_result(
            store, "dev-1", credential_hash="cred-1", hardware=other_hw, now_ms=T0 + 9
        )
        assert not created
        # The stored device, unchanged: a retry is not news about the device (its hello will be).
        assert again == first
        assert store.list_devices() == [first]
        assert store.list_tokens() == tokens
        assert store.get_credential_hash("dev-1") == "cred-1"

    @pytest.mark.parametrize("token_state", ["exhausted", "expired", "unknown"])
    def test_repeated_enrollment_needs_no_valid_token(self, store: Store, token_state: str) -> None:
        # The first call may have spent the last use (and its reply was lost); the token may expire since.
        add_token(store, uses=1)
        first = enroll(store, "dev-1", credential_hash="cred-1")
        token_hash, now_ms = {
            "exhausted": ("hash-1", T0 + 2),
            "expired": ("hash-1", EXPIRES),
            "unknown": ("no-such-hash", T0 + 2),
        }[token_state]
        assert enroll_result(
            store, "dev-1", credential_hash="cred-1", token_hash=token_hash, now_ms=now_ms
        ) == (
            first,
            False,
        )
        assert store.list_tokens()[0].uses_left == 0

    def test_same_id_with_another_credential_is_refused_without_spending(self, store: Store) -> None:
        add_token(store, uses=2)
        first = enroll(store, "dev-1", credential_hash="cred-1")
        with pytest.raises(AlreadyExists, match="dev-1"):
            enroll(store, "dev-1", credential_hash="cred-2")
        assert store.list_tokens()[0].uses_left == 1
        assert store.list_devices() == [first]
        assert store.get_credential_hash("dev-1") == "cred-1"

    def test_taken_id_is_not_revealed_without_a_valid_token(self, store: Store) -> None:
        add_token(store, uses=1)
        enroll(store, "dev-1", credential_hash="cred-1")
        with pytest.raises(Unauthenticated) as err:
            enroll(store, "dev-1", credential_hash="cred-2")  # the token's only use is spent
        assert err.value.code == TOKEN_EXHAUSTED
        with pytest.raises(Unauthenticated) as err:
            enroll(store, "dev-1", credential_hash="cred-2", token_hash="no-such-hash")
        assert err.value.code == TOKEN_UNKNOWN

    def test_concurrent_repeats_of_one_enrollment_create_it_once(self, store: Store) -> None:
        add_token(store, uses=1)
        outcomes = run_concurrently(8, lambda i: enroll_result(store, "dev-1", credential_hash="cred-1"))
        results = [o for o in outcomes if isinstance(o, tuple)]
        assert len(results) == 8, outcomes
        device = store.get_device("dev-1")
        assert all(d == device for d, _ in results)
        assert sorted(created for _, created in results) == [False] * 7 + [True]
        assert store.list_tokens()[0].uses_left == 0

    def test_concurrent_enrollment_spends_each_use_once(self, store: Store) -> None:
        add_token(store, uses=3)
        outcomes = run_concurrently(8, lambda i: enroll(store, f"dev-{i}").id)
        enrolled_ids = sorted(o for o in outcomes if isinstance(o, str))
        refused = [o for o in outcomes if isinstance(o, Unauthenticated)]
        assert len(enrolled_ids) == 3
        assert len(refused) == 5
        assert all(e.code == TOKEN_EXHAUSTED for e in refused)
        assert [d.id for d in store.list_devices()] == enrolled_ids
        assert store.list_tokens()[0].uses_left == 0

    # --- devices --------------------------------------------------------------------------------

    def test_list_devices_ordered_by_id(self, store: Store) -> None:
        enrolled(store, "b", "c", "a")
        assert [d.id for d in store.list_devices()] == ["a", "b", "c"]

    @pytest.mark.parametrize(
        "call",
        [
            lambda s: s.get_device("ghost"),
            lambda s: s.get_credential_hash("ghost"),
            lambda s: s.device_connected(
                "ghost", hardware=HW, reported=ReportedState(), records_dropped=0, now_ms=T0
            ),
            lambda s: s.device_disconnected("ghost", now_ms=T0),
            lambda s: s.touch_device("ghost", now_ms=T0),
            lambda s: assign(s, "ghost", "aa"),
            lambda s: s.record_ack("ghost", AssignmentAck(version=0, reported=ReportedState()), now_ms=T0),
            lambda s: s.append_telemetry("ghost", [inference(1)], now_ms=T0),
            lambda s: s.list_telemetry("ghost"),
        ],
        ids=["get", "credential", "connected", "disconnected", "touch", "assign", "ack", "append", "list"],
    )
    def test_unknown_device_is_not_found(self, store: Store, call: Callable[[Store], object]) -> None:
        enrolled(store, "dev-1")
        before = store.list_devices()
        with pytest.raises(NotFound, match="ghost"):
            call(store)
        assert store.list_devices() == before

    def test_hello_records_hardware_reported_state_and_presence(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa")
        new_hw = replace(HW, cpu_cores=16, agent_version="0.2.0")
        reported = ReportedState(acked_version=1, active_sha256="aa", active_model_name="mnist")
        device = store.device_connected(
            "dev-1", hardware=new_hw, reported=reported, records_dropped=4, now_ms=T0 + 9
        )
        assert (device.connected, device.last_seen_ms, device.hardware) == (True, T0 + 9, new_hw)
        assert (device.reported, device.acked_version, device.records_dropped) == (reported, 1, 4)
        assert store.get_device("dev-1") == device

    def test_hello_cannot_ack_a_version_never_desired(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa")
        device = hello(store, "dev-1", acked_version=5)
        assert (device.acked_version, device.desired_version) == (0, 1)

    def test_hello_may_report_a_lower_acked_version(self, store: Store) -> None:
        # A device that lost its state must look unconverged, so the assignment is sent again.
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa")
        store.record_ack(
            "dev-1", AssignmentAck(version=1, reported=ReportedState(acked_version=1)), now_ms=T0
        )
        device = hello(store, "dev-1", acked_version=0)
        assert device.acked_version == 0
        assert not device.converged

    def test_records_dropped_never_decreases(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assert hello(store, "dev-1", records_dropped=5).records_dropped == 5
        assert hello(store, "dev-1", records_dropped=3).records_dropped == 5
        assert hello(store, "dev-1", records_dropped=8).records_dropped == 8
        assert store.get_device("dev-1").records_dropped == 8

    def test_disconnect_clears_presence_and_updates_last_seen(self, store: Store) -> None:
        enrolled(store, "dev-1")
        hello(store, "dev-1", now_ms=T0 + 1)
        device = store.device_disconnected("dev-1", now_ms=T0 + 7)
        assert (device.connected, device.last_seen_ms) == (False, T0 + 7)
        assert store.get_device("dev-1") == device

    def test_mark_all_disconnected_counts_what_it_cleared(self, store: Store) -> None:
        enrolled(store, "a", "b", "c")
        hello(store, "a")
        hello(store, "c")
        assert store.mark_all_disconnected() == 2
        assert [d.connected for d in store.list_devices()] == [False, False, False]
        assert store.mark_all_disconnected() == 0

    def test_touch_updates_only_last_seen(self, store: Store) -> None:
        enrolled(store, "dev-1")
        before = hello(store, "dev-1", now_ms=T0 + 1)
        store.touch_device("dev-1", now_ms=T0 + 50)
        assert store.get_device("dev-1") == replace(before, last_seen_ms=T0 + 50)

    # --- assignments ----------------------------------------------------------------------------

    def test_new_assignment_bumps_desired_version(self, store: Store) -> None:
        enrolled(store, "dev-1")
        device, changed = assign(store, "dev-1", "aa", model="mnist", variant="int8", size=123)
        assert changed
        assert device.desired_version == 1
        assert device.assignment is not None
        assert device.assignment.version == 1
        assert (device.assignment.model_name, device.assignment.variant) == ("mnist", "int8")
        assert (device.assignment.artifact_sha256, device.assignment.artifact_size_bytes) == ("aa", 123)
        assert not device.converged
        assert store.get_device("dev-1") == device

    def test_repeating_an_assignment_changes_nothing(self, store: Store) -> None:
        enrolled(store, "dev-1")
        first, _ = assign(store, "dev-1", "aa", size=100)
        again, changed = assign(store, "dev-1", "aa", size=999)
        assert not changed
        assert again == first
        assert store.get_device("dev-1") == first

    @pytest.mark.parametrize("field", ["sha", "variant", "model"])
    def test_any_change_of_target_bumps_version(self, store: Store, field: str) -> None:
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa", model="mnist", variant="fp32")
        target = {"sha": "aa", "model": "mnist", "variant": "fp32"}
        target[field] = "bb" if field == "sha" else "other"
        device, changed = assign(
            store, "dev-1", target["sha"], model=target["model"], variant=target["variant"]
        )
        assert changed
        assert device.desired_version == 2
        assert device.assignment is not None and device.assignment.version == 2

    def test_empty_assignment_on_never_assigned_device_is_no_change(self, store: Store) -> None:
        enrolled(store, "dev-1")
        device, changed = assign(store, "dev-1", "", model="", variant="")
        assert not changed
        assert (device.desired_version, device.assignment) == (0, None)

    def test_unassigning_is_a_new_empty_version(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa")
        device, changed = assign(store, "dev-1", "", model="", variant="", size=0)
        assert changed
        assert device.assignment is not None
        assert device.assignment.is_empty
        assert device.assignment.version == device.desired_version == 2
        assert store.get_device("dev-1") == device

    def test_reassigning_the_failed_version_is_a_retry(self, store: Store) -> None:
        enrolled(store, "dev-1")
        first, _ = assign(store, "dev-1", "aa", variant="int8", size=123)
        store.record_ack("dev-1", ack(1, AssignmentFailure.LOAD_FAILED, "oom"), now_ms=T0 + 1)
        retry, changed = assign(store, "dev-1", "aa", variant="int8", size=123)
        assert changed
        assert (retry.desired_version, retry.acked_version) == (2, 1)
        assert first.assignment is not None
        assert retry.assignment == replace(first.assignment, version=2)
        # The failure stays on record until the retry is answered.
        assert (retry.last_failure, retry.failed_version) == (AssignmentFailure.LOAD_FAILED, 1)
        assert store.get_device("dev-1") == retry
        # Until the device answers for v2, asking again is the same retry: no new version.
        assert assign(store, "dev-1", "aa", variant="int8", size=123) == (retry, False)

    def test_reassigning_after_the_retry_succeeded_changes_nothing(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa")
        store.record_ack("dev-1", ack(1, AssignmentFailure.SMOKE_TEST_FAILED, "nan"), now_ms=T0 + 1)
        assign(store, "dev-1", "aa")
        done = store.record_ack("dev-1", ack(2), now_ms=T0 + 2)
        assert done.last_failure is None
        assert assign(store, "dev-1", "aa") == (done, False)

    def test_failure_of_an_older_version_does_not_make_a_repeat_a_retry(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assign(store, "dev-1", "aa")
        store.record_ack("dev-1", ack(1, AssignmentFailure.LOAD_FAILED, "oom"), now_ms=T0 + 1)
        current, _ = assign(store, "dev-1", "bb")
        assert assign(store, "dev-1", "bb") == (current, False)
        assert current.desired_version == 2

    # --- lifecycle ------------------------------------------------------------------------------

    def test_close_is_idempotent_and_final(self, tmp_path: Path) -> None:
        store = self.store_factory(tmp_path)
        store.close()
        store.close()
        with pytest.raises(PermanentError):
            store.list_devices()
