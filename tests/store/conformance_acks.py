"""Assignment-ack rules of the conformance suite (mixed into ``StoreConformance``), and what is still
unacknowledged (``list_unacked``)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.types import AssignmentFailure
from controller.store.base import Store
from tests.store.helpers import T0, ack, assign, enrolled, hello

_device_ids = itertools.count()


def _device_at_version(store: Store, versions: int, device_id: str = "dev-1") -> None:
    enrolled(store, device_id)
    for v in range(1, versions + 1):
        assign(store, device_id, f"sha-{v}")


class AckRules:
    def test_successful_ack_converges(self, store: Store) -> None:
        _device_at_version(store, 1)
        device = store.record_ack("dev-1", ack(1), now_ms=T0 + 10)
        assert (device.acked_version, device.converged, device.last_seen_ms) == (1, True, T0 + 10)
        assert device.reported == ack(1).reported
        assert device.last_failure is None
        assert store.get_device("dev-1") == device

    def test_ack_above_desired_is_ignored(self, store: Store) -> None:
        _device_at_version(store, 1)
        before = store.get_device("dev-1")
        after = store.record_ack("dev-1", ack(2, AssignmentFailure.LOAD_FAILED, "forged"), now_ms=T0 + 10)
        assert after == before
        assert store.get_device("dev-1") == before

    def test_late_ack_never_lowers_acked_version(self, store: Store) -> None:
        _device_at_version(store, 3)
        store.record_ack("dev-1", ack(3), now_ms=T0 + 10)
        device = store.record_ack("dev-1", ack(2), now_ms=T0 + 11)
        assert device.acked_version == 3
        assert device.reported == ack(3).reported
        assert store.get_device("dev-1").acked_version == 3

    def test_repeated_ack_is_harmless(self, store: Store) -> None:
        _device_at_version(store, 2)
        first = store.record_ack("dev-1", ack(2), now_ms=T0 + 10)
        assert store.record_ack("dev-1", ack(2), now_ms=T0 + 10) == first

    def test_failed_ack_is_recorded(self, store: Store) -> None:
        _device_at_version(store, 2)
        device = store.record_ack(
            "dev-1", ack(2, AssignmentFailure.CHECKSUM_MISMATCH, "bad bytes"), now_ms=T0
        )
        assert device.last_failure is AssignmentFailure.CHECKSUM_MISMATCH
        assert (device.last_failure_message, device.failed_version) == ("bad bytes", 2)
        # The device has answered for version 2 (permanently): it counts as acked.
        assert device.acked_version == 2
        assert store.get_device("dev-1") == device

    def test_failure_is_cleared_by_success_of_a_later_version(self, store: Store) -> None:
        _device_at_version(store, 1)
        store.record_ack("dev-1", ack(1, AssignmentFailure.SMOKE_TEST_FAILED, "nan"), now_ms=T0)
        assign(store, "dev-1", "sha-2")
        device = store.record_ack("dev-1", ack(2), now_ms=T0 + 1)
        assert (device.last_failure, device.last_failure_message) == (None, "")
        assert device.failed_version == 1
        assert device.acked_version == 2
        assert store.get_device("dev-1") == device

    def test_success_of_an_older_version_keeps_the_failure(self, store: Store) -> None:
        _device_at_version(store, 2)
        store.record_ack("dev-1", ack(2, AssignmentFailure.LOAD_FAILED, "oom"), now_ms=T0)
        device = store.record_ack("dev-1", ack(1), now_ms=T0 + 1)
        assert device.last_failure is AssignmentFailure.LOAD_FAILED
        assert (device.failed_version, device.acked_version) == (2, 2)
        assert device.reported == ack(2).reported

    def test_late_failure_does_not_mark_a_newer_success_failed(self, store: Store) -> None:
        _device_at_version(store, 2)
        store.record_ack("dev-1", ack(2), now_ms=T0)
        device = store.record_ack("dev-1", ack(1, AssignmentFailure.LOAD_FAILED, "old news"), now_ms=T0 + 1)
        assert device.last_failure is None
        assert device.acked_version == 2
        assert device.reported == ack(2).reported

    # Each subclass runs this against its own store, which is what the differing-executors check warns
    # about; the examples share nothing across subclasses, and with no example database none is replayed
    # into the wrong one. The store fixture is reused on purpose: every example enrolls a fresh device.
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(data=st.data())
    def test_acks_in_any_order_end_in_the_same_state(self, store: Store, data: st.DataObject) -> None:
        desired = data.draw(st.integers(1, 5), label="desired")
        failures = st.one_of(st.none(), st.sampled_from(AssignmentFailure))
        outcome = {v: data.draw(failures, label=f"failure of v{v}") for v in range(1, desired + 1)}
        acks = [ack(v, f, f"failed v{v}" if f else "") for v, f in outcome.items()]
        acks += [ack(desired + 1, AssignmentFailure.LOAD_FAILED, "forged")]
        order = data.draw(st.permutations(acks), label="arrival order")

        device_id = f"prop-{next(_device_ids)}"
        _device_at_version(store, desired, device_id)
        acked_seen = []
        for a in order:
            acked_seen.append(store.record_ack(device_id, a, now_ms=T0).acked_version)
        device = store.get_device(device_id)

        assert acked_seen == sorted(acked_seen), "acked_version went down"
        newest = acks[desired - 1]
        expected = replace(
            device,
            acked_version=desired,
            reported=newest.reported,
            last_failure=newest.failure,
            last_failure_message=newest.message,
            failed_version=max((v for v, f in outcome.items() if f), default=0),
        )
        assert device == expected

    # --- list_unacked ---------------------------------------------------------------------------

    def _fleet_in_every_state(self, store: Store) -> None:
        """pending: assigned, not acked; done: acked; failed: failed ack (answered); idle: never assigned;
        wiped: acked, then said hello having lost it; behind: acked v1 of v2."""
        enrolled(store, "pending", "done", "failed", "idle", "wiped", "behind")
        for device_id in ("pending", "done", "failed", "wiped", "behind"):
            assign(store, device_id, "sha-1")
        store.record_ack("done", ack(1), now_ms=T0)
        store.record_ack("failed", ack(1, AssignmentFailure.LOAD_FAILED, "oom"), now_ms=T0)
        store.record_ack("wiped", ack(1), now_ms=T0)
        hello(store, "wiped", acked_version=0)
        store.record_ack("behind", ack(1), now_ms=T0)
        assign(store, "behind", "sha-2")

    def test_list_unacked_lists_devices_behind_their_desired_version(self, store: Store) -> None:
        assert store.list_unacked() == []
        self._fleet_in_every_state(store)
        unacked = store.list_unacked()
        assert [d.id for d in unacked] == ["behind", "pending", "wiped"]
        assert unacked == [store.get_device(d.id) for d in unacked]
        assert all(d.assignment is not None and d.desired_version > d.acked_version for d in unacked)

    def test_list_unacked_of_given_ids(self, store: Store) -> None:
        self._fleet_in_every_state(store)
        assert [d.id for d in store.list_unacked(["wiped", "done", "ghost", "pending"])] == [
            "pending",
            "wiped",
        ]
        assert [d.id for d in store.list_unacked({"failed", "idle"})] == []
        assert store.list_unacked([]) == []
        assert [d.id for d in store.list_unacked(("pending", "pending"))] == ["pending"]

    def test_list_unacked_connected_only(self, store: Store) -> None:
        # The reconcile pass of a large fleet: only the connected devices can be sent anything.
        self._fleet_in_every_state(store)
        assert [d.id for d in store.list_unacked(connected_only=True)] == ["wiped"]  # said hello
        hello(store, "pending", acked_version=0)
        assert [d.id for d in store.list_unacked(connected_only=True)] == ["pending", "wiped"]
        store.device_disconnected("wiped", now_ms=T0 + 5)
        assert [d.id for d in store.list_unacked(connected_only=True)] == ["pending"]
        assert [d.id for d in store.list_unacked()] == ["behind", "pending", "wiped"]

    def test_list_unacked_of_many_ids_is_one_call(self, store: Store) -> None:
        # A controller with thousands of connected devices asks about all of them at once.
        self._fleet_in_every_state(store)
        ids = [f"ghost-{i:05d}" for i in range(5_000)] + ["wiped", "done", "pending"]
        assert [d.id for d in store.list_unacked(ids[::-1])] == ["pending", "wiped"]

    def test_acking_takes_a_device_off_the_unacked_list(self, store: Store) -> None:
        self._fleet_in_every_state(store)
        store.record_ack("pending", ack(1), now_ms=T0 + 1)
        store.record_ack("behind", ack(2, AssignmentFailure.CHECKSUM_MISMATCH, "bad"), now_ms=T0 + 1)
        assert [d.id for d in store.list_unacked()] == ["wiped"]
