"""Telemetry and model-registry rules of the conformance suite (mixed into ``StoreConformance``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.errors import AlreadyExists, InvalidArgument, NotFound
from common.types import (
    EDGE_NPU,
    PHONE_CPU,
    ArtifactManifest,
    BlockAccuracy,
    BlockProfile,
    BlockTiming,
    CallOverhead,
    ClassBlockProfile,
    ClassCallOverhead,
    CutPoint,
    DataType,
    DeviceEvent,
    HopTiming,
    InferenceRecord,
    ModelVariant,
    Outcome,
    ProfileReport,
    ProfileRequestRecord,
    RejectedVariant,
    TelemetryRecord,
    TensorSpec,
)
from controller.store.base import Store
from tests.store.helpers import HW, T0, add_token, enroll, enrolled, event, inference, variant


def _append(store: Store, sequences: list[int], *, device_id: str = "dev-1", now_ms: int = T0 + 100) -> int:
    return store.append_telemetry(device_id, [inference(s) for s in sequences], now_ms=now_ms)


class DataRules:
    # --- telemetry ------------------------------------------------------------------------------

    def test_append_counts_new_records_and_updates_device(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assert _append(store, [1, 2, 3], now_ms=T0 + 50) == 3
        device = store.get_device("dev-1")
        assert (device.records_received, device.last_sequence, device.last_seen_ms) == (3, 3, T0 + 50)

    def test_resending_a_batch_stores_nothing_new(self, store: Store) -> None:
        enrolled(store, "dev-1")
        original = [inference(1), event(2)]
        store.append_telemetry("dev-1", original, now_ms=T0)
        resent = [inference(1, latency_ms=99.0), event(2, message="changed")]
        assert store.append_telemetry("dev-1", resent, now_ms=T0 + 1) == 0
        device = store.get_device("dev-1")
        assert (device.records_received, device.last_sequence) == (2, 2)
        # The first copy stays: a resend is the same record, never an update.
        assert store.list_telemetry("dev-1") == original

    def test_resending_a_single_record_stores_nothing_new(self, store: Store) -> None:
        # The commonest resend: one record the agent never saw acked, sent again after a reconnect.
        enrolled(store, "dev-1")
        assert _append(store, [1], now_ms=T0 + 1) == 1
        assert _append(store, [1], now_ms=T0 + 2) == 0
        assert _append(store, [2], now_ms=T0 + 3) == 1
        assert _append(store, [2], now_ms=T0 + 4) == 0
        device = store.get_device("dev-1")
        assert (device.records_received, device.last_sequence, device.last_seen_ms) == (2, 2, T0 + 4)
        assert [r.sequence for r in store.list_telemetry("dev-1")] == [1, 2]

    def test_mixed_batch_counts_only_new_records(self, store: Store) -> None:
        enrolled(store, "dev-1")
        _append(store, [1, 2, 3])
        assert _append(store, [2, 3, 4, 5]) == 2
        device = store.get_device("dev-1")
        assert (device.records_received, device.last_sequence) == (5, 5)

    def test_duplicates_within_one_batch_count_once(self, store: Store) -> None:
        enrolled(store, "dev-1")
        assert _append(store, [4, 4, 5]) == 2
        assert [r.sequence for r in store.list_telemetry("dev-1")] == [4, 5]

    def test_last_sequence_is_the_highest_stored(self, store: Store) -> None:
        enrolled(store, "dev-1")
        _append(store, [7])
        _append(store, [3])
        device = store.get_device("dev-1")
        assert (device.records_received, device.last_sequence) == (2, 7)

    def test_empty_batch_only_updates_last_seen(self, store: Store) -> None:
        enrolled(store, "dev-1")
        _append(store, [1])
        before = store.get_device("dev-1")
        assert store.append_telemetry("dev-1", [], now_ms=T0 + 500) == 0
        assert store.get_device("dev-1") == replace(before, last_seen_ms=T0 + 500)

    def test_telemetry_round_trips_every_body_kind(self, store: Store) -> None:
        enrolled(store, "dev-1")
        records = [
            inference(1, latency_ms=0.1 + 0.2, outcome=Outcome.INVALID_INPUT),
            TelemetryRecord(2, T0, InferenceRecord("bb", 3.5, Outcome.ERROR, error="shape mismatch")),
            TelemetryRecord(
                3,
                T0,
                InferenceRecord(
                    "cc",
                    9.5,
                    Outcome.OK,
                    path="partitioned",
                    hops=(
                        HopTiming("dev-1", "device", compute_ms=2.5),
                        HopTiming("edge-1", "edge", 1.0, 5.0, 1.5, 3),
                    ),
                    assignment_version=7,
                ),
            ),
            TelemetryRecord(
                4, T0, DeviceEvent(kind="rollback", message="smoke test failed", assignment_version=4)
            ),
        ]
        store.append_telemetry("dev-1", records, now_ms=T0)
        assert store.list_telemetry("dev-1") == records

    def test_list_telemetry_is_ascending_and_paged(self, store: Store) -> None:
        enrolled(store, "dev-1")
        _append(store, [5, 1, 3, 2, 4])

        def seqs(after: int = 0, limit: int = 1000) -> list[int]:
            return [r.sequence for r in store.list_telemetry("dev-1", after_sequence=after, limit=limit)]

        assert seqs() == [1, 2, 3, 4, 5]
        assert seqs(after=2) == [3, 4, 5]
        assert seqs(limit=2) == [1, 2]
        assert seqs(after=2, limit=2) == [3, 4]
        assert seqs(after=5) == []
        assert seqs(limit=0) == []

    def test_latest_telemetry_is_the_last_records_whatever_the_gaps(self, store: Store) -> None:
        enrolled(store, "dev-1", "dev-2")
        _append(store, [1, 2, 3, 1001, 1002, 5000])  # restarts number above a reserved block
        _append(store, [7, 8], device_id="dev-2")

        def seqs(limit: int) -> list[int]:
            return [r.sequence for r in store.latest_telemetry("dev-1", limit=limit)]

        assert seqs(4) == [3, 1001, 1002, 5000]
        assert seqs(100) == [1, 2, 3, 1001, 1002, 5000]
        assert seqs(0) == []
        with pytest.raises(InvalidArgument):
            store.latest_telemetry("dev-1", limit=-1)
        with pytest.raises(NotFound):
            store.latest_telemetry("ghost", limit=1)

    def test_negative_limit_is_invalid(self, store: Store) -> None:
        enrolled(store, "dev-1")
        _append(store, [1])
        with pytest.raises(InvalidArgument):
            store.list_telemetry("dev-1", limit=-1)

    def test_telemetry_is_kept_per_device(self, store: Store) -> None:
        enrolled(store, "a", "b")
        assert _append(store, [1, 2], device_id="a") == 2
        assert _append(store, [1, 2, 3], device_id="b") == 3
        assert [r.sequence for r in store.list_telemetry("a")] == [1, 2]
        assert (store.get_device("a").records_received, store.get_device("b").records_received) == (2, 3)

    # --- models ---------------------------------------------------------------------------------

    def test_add_variant_creates_the_model(self, store: Store) -> None:
        model, created = store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        assert created
        assert (model.name, model.created_at_ms) == ("mnist", T0)
        assert model.variants == (replace(variant("fp32", "aa"), created_at_ms=T0),)
        assert store.get_model("mnist") == model

    def test_same_bytes_again_is_a_no_op(self, store: Store) -> None:
        first, _ = store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        again, created = store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0 + 99)
        assert not created
        assert again == first
        assert store.list_models() == [first]

    def test_different_bytes_for_a_variant_are_refused(self, store: Store) -> None:
        first, _ = store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        with pytest.raises(AlreadyExists) as err:
            store.add_model_variant("mnist", variant("fp32", "bb"), now_ms=T0 + 1)
        assert "aa" in str(err.value)
        assert "bb" in str(err.value)
        assert store.get_model("mnist") == first

    def test_a_model_has_several_variants(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        model, created = store.add_model_variant("mnist", variant("int8", "bb", size=250), now_ms=T0 + 5)
        assert created
        assert model.created_at_ms == T0
        assert [(v.variant, v.sha256, v.size_bytes) for v in model.variants] == [
            ("fp32", "aa", 1_000),
            ("int8", "bb", 250),
        ]
        assert model.variant("int8") == replace(variant("int8", "bb", size=250), created_at_ms=T0 + 5)
        assert store.get_model("mnist") == model

    def test_models_are_listed_by_name(self, store: Store) -> None:
        assert store.list_models() == []
        store.add_model_variant("resnet", variant(), now_ms=T0)
        store.add_model_variant("minilm", variant(), now_ms=T0)
        store.add_model_variant("mnist", variant("int8", "cc"), now_ms=T0)
        models = store.list_models()
        assert [m.name for m in models] == ["minilm", "mnist", "resnet"]
        assert models == [store.get_model(m.name) for m in models]

    def test_unknown_model_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match="ghost"):
            store.get_model("ghost")

    # --- toolchain builds -----------------------------------------------------------------------

    def test_built_variants_keep_their_measurements_and_rejections(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        int8 = built("int8", "bb", accuracy=0.97, agreement=None)
        rejected = (
            RejectedVariant("int4", "matmulnbits", "not applicable: no MatMul"),
            RejectedVariant("fp16", "float16", "cosine 0.5 below 0.99"),
        )
        model = store.add_built_variants("mnist", [int8], rejected, now_ms=T0 + 7)
        assert model.variant("int8") == replace(int8, created_at_ms=T0 + 7)
        assert model.rejected == rejected  # in the order given
        assert store.get_model("mnist") == model
        assert store.list_models() == [model]

    def test_a_new_build_replaces_the_rejections(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        store.add_built_variants("mnist", [], [RejectedVariant("int4", "m", "why")], now_ms=T0)
        model = store.add_built_variants("mnist", [built("int8", "bb")], [], now_ms=T0 + 1)
        assert model.rejected == ()
        assert [v.variant for v in model.variants] == ["fp32", "int8"]
        again = store.add_built_variants("mnist", [built("int8", "bb")], [], now_ms=T0 + 2)
        assert again == model  # the same bytes again change nothing

    def test_a_conflicting_build_stores_nothing(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        store.add_model_variant("mnist", variant("int8", "bb"), now_ms=T0)
        before = store.get_model("mnist")
        with pytest.raises(AlreadyExists, match="int8"):
            store.add_built_variants(
                "mnist",
                [built("fp16", "cc"), built("int8", "dd")],
                [RejectedVariant("int4", "m", "why")],
                now_ms=T0 + 1,
            )
        assert store.get_model("mnist") == before

    def test_a_build_measures_an_uploaded_variant(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        model = store.add_built_variants("mnist", [built("fp32", "aa")], [], now_ms=T0 + 9)
        assert model.variants == (replace(built("fp32", "aa"), size_bytes=1_000, created_at_ms=T0),)
        assert store.get_model("mnist") == model

    def test_a_build_keeps_cut_points_and_block_profiles(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        cuts = (
            CutPoint(3, (TensorSpec("h", DataType.FLOAT32, (-1, 64)),), 256),
            CutPoint(
                7, (TensorSpec("a", DataType.INT64, (-1,)), TensorSpec("b", DataType.FLOAT16, (-1, -1))), -1
            ),
        )
        blocks = (
            BlockProfile(0, 3, "fp32", 1, 0.25),
            BlockProfile(3, 0, "fp32", 32, 1.5),
            BlockProfile(0, 3, "int8", 1, 0.0, "failed to run: boom"),
        )
        model = store.add_built_variants(
            "mnist", [built("int8", "bb")], [], now_ms=T0 + 1, cut_points=cuts, block_profiles=blocks
        )
        assert (model.cut_points, model.block_profiles) == (cuts, blocks)  # in the order given
        assert store.get_model("mnist") == model
        assert store.list_models() == [model]
        # A build that says nothing about them keeps them; a new profile replaces them whole.
        kept = store.add_built_variants("mnist", [], [], now_ms=T0 + 2)
        assert (kept.cut_points, kept.block_profiles) == (cuts, blocks)
        replaced = store.add_built_variants(
            "mnist", [], [], now_ms=T0 + 3, cut_points=cuts[:1], block_profiles=()
        )
        assert (replaced.cut_points, replaced.block_profiles) == (cuts[:1], ())
        assert store.get_model("mnist") == replaced
        # Other models have none.
        store.add_model_variant("other", variant("fp32", "cc"), now_ms=T0)
        assert (store.get_model("other").cut_points, store.get_model("other").block_profiles) == ((), ())

    def test_a_conflicting_build_keeps_the_old_profiles(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        store.add_model_variant("mnist", variant("int8", "bb"), now_ms=T0)
        cuts = (CutPoint(3, (TensorSpec("h", DataType.FLOAT32, (-1, 8)),), 32),)
        store.add_built_variants("mnist", [], [], now_ms=T0, cut_points=cuts, block_profiles=())
        before = store.get_model("mnist")
        with pytest.raises(AlreadyExists, match="int8"):
            store.add_built_variants(
                "mnist",
                [built("int8", "dd")],
                [],
                now_ms=T0 + 1,
                cut_points=(),
                block_profiles=(BlockProfile(0, 0, "fp32", 1, 1.0),),
            )
        assert store.get_model("mnist") == before

    def test_a_build_needs_the_model(self, store: Store) -> None:
        with pytest.raises(NotFound, match="ghost"):
            store.add_built_variants("ghost", [built("int8", "bb")], [], now_ms=T0)
        assert store.list_models() == []

    def test_a_build_keeps_block_artifacts_accuracy_and_its_data(self, store: Store) -> None:
        store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
        blocks = (
            BlockProfile(0, 3, "int8", 1, 0.25, artifact_sha256="b1", artifact_size_bytes=40),
            BlockProfile(0, 3, "int8", 32, 1.5, artifact_sha256="b1", artifact_size_bytes=40),
            BlockProfile(3, 0, "int8", 1, 0.0, "failed to build: x"),
        )
        accuracy = (
            BlockAccuracy(0, 0, "fp32", 0.97, 1.0, 1.0),
            BlockAccuracy(0, 3, "int8", 0.95, 0.999, None),
            BlockAccuracy(3, 0, "int8", error="not built"),
        )
        model = store.add_built_variants(
            "mnist",
            [],
            [],
            now_ms=T0 + 1,
            block_profiles=blocks,
            block_accuracy=accuracy,
            profile_inputs=ArtifactManifest("pi", 77),
            eval_data=ArtifactManifest("ev", 88),
        )
        assert (model.block_profiles, model.block_accuracy) == (blocks, accuracy)
        assert (model.profile_inputs_sha256, model.profile_inputs_size_bytes) == ("pi", 77)
        assert (model.eval_data_sha256, model.eval_data_size_bytes) == ("ev", 88)
        assert store.get_model("mnist") == model
        assert store.list_models() == [model]
        # Not given: kept; given: replaced (the latest build's).
        kept = store.add_built_variants("mnist", [], [], now_ms=T0 + 2, cut_points=())
        assert (kept.block_accuracy, kept.profile_inputs_sha256, kept.eval_data_sha256) == (
            accuracy,
            "pi",
            "ev",
        )
        replaced = store.add_built_variants(
            "mnist", [], [], now_ms=T0 + 3, block_accuracy=(), eval_data=ArtifactManifest("ev2", 9)
        )
        assert (replaced.block_accuracy, replaced.eval_data_sha256, replaced.profile_inputs_sha256) == (
            (),
            "ev2",
            "pi",
        )
        assert replaced.block_profiles == blocks

    # --- device profiles ------------------------------------------------------------------------

    def test_profile_requests_are_pending_until_their_report_arrives(self, store: Store) -> None:
        profiled_model(store)
        enrolled(store, "dev-1", "dev-2")
        records = store.request_profiles(
            "mnist", [("dev-2", "prof-b"), ("dev-1", "prof-a")], batch_sizes=(1, 32), runs=10, now_ms=T0 + 5
        )
        assert records == [
            ProfileRequestRecord("dev-2", "mnist", "prof-b", (1, 32), 10, T0 + 5),
            ProfileRequestRecord("dev-1", "mnist", "prof-a", (1, 32), 10, T0 + 5),
        ]
        assert store.list_pending_profile_requests() == sorted(records, key=lambda r: r.device_id)
        assert store.list_pending_profile_requests(["dev-2", "ghost"]) == [records[0]]
        assert store.list_pending_profile_requests([]) == []
        done = store.record_profile_report("dev-1", report("prof-a", 0.5), now_ms=T0 + 9)
        assert done == ProfileRequestRecord(
            "dev-1", "mnist", "prof-a", (1, 32), 10, T0 + 5, completed_at_ms=T0 + 9
        )
        assert store.list_pending_profile_requests() == [records[0]]
        # The same report again (the agent answered a resent request) is fine and changes no times.
        assert store.record_profile_report("dev-1", report("prof-a", 0.5), now_ms=T0 + 20) == done
        (stored,) = store.list_profile_reports("mnist")
        assert (stored.device_id, stored.hardware_class, stored.report) == (
            "dev-1",
            EDGE_NPU,
            report("prof-a", 0.5),
        )

    def test_a_stale_or_unknown_report_is_refused_and_changes_nothing(self, store: Store) -> None:
        profiled_model(store)
        enrolled(store, "dev-1")
        store.request_profiles("mnist", [("dev-1", "prof-old")], batch_sizes=(1,), runs=3, now_ms=T0)
        store.record_profile_report("dev-1", report("prof-old", 0.5), now_ms=T0 + 1)
        store.request_profiles("mnist", [("dev-1", "prof-new")], batch_sizes=(1,), runs=3, now_ms=T0 + 2)
        before = (
            store.get_model("mnist"),
            store.list_profile_reports("mnist"),
            store.list_pending_profile_requests(),
        )
        with pytest.raises(NotFound, match=r"prof-old.*stale"):
            store.record_profile_report("dev-1", report("prof-old", 9.0), now_ms=T0 + 3)
        with pytest.raises(NotFound, match="prof-never"):
            store.record_profile_report("dev-1", report("prof-never", 9.0), now_ms=T0 + 3)
        with pytest.raises(NotFound, match="ghost"):
            store.record_profile_report("ghost", report("prof-new", 9.0), now_ms=T0 + 3)
        with pytest.raises(NotFound, match="other"):
            store.record_profile_report(
                "dev-1", replace(report("prof-new", 9.0), model_name="other"), now_ms=T0 + 3
            )
        assert (
            store.get_model("mnist"),
            store.list_profile_reports("mnist"),
            store.list_pending_profile_requests(),
        ) == before
        # The superseded request's report stays the latest until the new one arrives.
        assert [r.report.request_id for r in store.list_profile_reports("mnist")] == ["prof-old"]

    def test_profile_requests_are_all_or_nothing(self, store: Store) -> None:
        profiled_model(store)
        enrolled(store, "dev-1")
        with pytest.raises(NotFound, match="ghost"):
            store.request_profiles(
                "mnist", [("dev-1", "p1"), ("ghost", "p2")], batch_sizes=(1,), runs=3, now_ms=T0
            )
        with pytest.raises(NotFound, match="nomodel"):
            store.request_profiles("nomodel", [("dev-1", "p1")], batch_sizes=(1,), runs=3, now_ms=T0)
        assert store.list_pending_profile_requests() == []
        store.request_profiles("mnist", [("dev-1", "p1")], batch_sizes=(1,), runs=3, now_ms=T0)
        with pytest.raises(AlreadyExists, match="p1"):
            store.request_profiles("mnist", [("dev-1", "p1")], batch_sizes=(1,), runs=3, now_ms=T0)
        assert [r.request_id for r in store.list_pending_profile_requests()] == ["p1"]
        with pytest.raises(NotFound, match="nomodel"):
            store.list_profile_reports("nomodel")

    def test_class_profiles_are_the_median_of_each_devices_latest_report(self, store: Store) -> None:
        profiled_model(store)
        add_token(store, "tok-x", "hash-x", uses=4)
        for device_id, hardware_class in (
            ("p1", PHONE_CPU),
            ("p2", PHONE_CPU),
            ("p3", PHONE_CPU),
            ("e1", EDGE_NPU),
        ):
            enroll(store, device_id, token_hash="hash-x", hardware=replace(HW, hardware_class=hardware_class))
        ids = [("p1", "r1"), ("p2", "r2"), ("p3", "r3"), ("e1", "r4")]
        store.request_profiles("mnist", ids, batch_sizes=(1,), runs=3, now_ms=T0)
        store.record_profile_report("p1", report("r1", 1.0), now_ms=T0)
        store.record_profile_report("p2", report("r2", 3.0, failed="oom"), now_ms=T0)
        store.record_profile_report("p3", report("r3", 2.0), now_ms=T0)
        store.record_profile_report("e1", report("r4", 0.25, failed="no EP"), now_ms=T0)
        model = store.get_model("mnist")
        assert model.class_profiles == (
            ClassBlockProfile(EDGE_NPU, 0, 3, "int8", 1, 0.0, 0, "failed on 1 device(s): e1: no EP"),
            ClassBlockProfile(EDGE_NPU, 3, 0, "int8", 1, 0.5, 1),
            ClassBlockProfile(PHONE_CPU, 0, 3, "int8", 1, 1.5, 2),  # p2 failed it: the median of p1, p3
            ClassBlockProfile(PHONE_CPU, 3, 0, "int8", 1, 4.0, 3),  # of 2, 6 and 4
        )
        assert store.list_models() == [model]
        # A newer report replaces the device's previous one in the median.
        store.request_profiles("mnist", [("p1", "r5")], batch_sizes=(1,), runs=3, now_ms=T0 + 1)
        store.record_profile_report("p1", report("r5", 7.0), now_ms=T0 + 2)
        phone = [c for c in store.get_model("mnist").class_profiles if c.hardware_class == PHONE_CPU]
        assert [(c.latency_ms, c.devices) for c in phone] == [(4.5, 2), (6.0, 3)]
        # Timings of blocks the model no longer profiles (an earlier build's cuts) do not count.
        store.add_built_variants(
            "mnist", [], [], now_ms=T0 + 3, block_profiles=(BlockProfile(3, 0, "int8", 1, 0.1),)
        )
        assert {(c.start_cut, c.end_cut) for c in store.get_model("mnist").class_profiles} == {(3, 0)}

    def test_call_overheads_are_kept_per_build_and_the_median_per_class(self, store: Store) -> None:
        profiled_model(store)
        host = (CallOverhead(1, 0.02), CallOverhead(32, 0.05))
        store.add_built_variants("mnist", [], [], now_ms=T0 + 1, call_overhead=host)
        assert store.get_model("mnist").call_overhead == host
        # A build that says nothing of it keeps what is stored; one that measured it replaces it.
        store.add_built_variants("mnist", [], [], now_ms=T0 + 2, cut_points=())
        assert store.get_model("mnist").call_overhead == host
        store.add_built_variants("mnist", [], [], now_ms=T0 + 3, call_overhead=(CallOverhead(1, 0.03),))
        assert store.get_model("mnist").call_overhead == (CallOverhead(1, 0.03),)
        add_token(store, "tok-x", "hash-x", uses=3)
        for device_id, hardware_class in (("p1", PHONE_CPU), ("p2", PHONE_CPU), ("e1", EDGE_NPU)):
            enroll(store, device_id, token_hash="hash-x", hardware=replace(HW, hardware_class=hardware_class))
        store.request_profiles(
            "mnist", [("p1", "r1"), ("p2", "r2"), ("e1", "r3")], batch_sizes=(1,), runs=3, now_ms=T0
        )
        store.record_profile_report("p1", report("r1", 1.0), now_ms=T0 + 4)
        store.record_profile_report("p2", report("r2", 3.0), now_ms=T0 + 4)
        store.record_profile_report("e1", report("r3", 0.5), now_ms=T0 + 4)
        model = store.get_model("mnist")
        assert model.class_call_overhead == (
            ClassCallOverhead(EDGE_NPU, 1, 0.005, 1, dispatch_ms=0.05),
            # The medians of 0.01 and 0.03 (call overhead) and of 0.1 and 0.3 (dispatch).
            ClassCallOverhead(PHONE_CPU, 1, 0.02, 2, dispatch_ms=0.2),
        )
        assert store.list_models() == [model]
        # An agent that did not measure its dispatch cost (0) does not pull the median down.
        store.request_profiles("mnist", [("p2", "r4")], batch_sizes=(1,), runs=3, now_ms=T0 + 5)
        store.record_profile_report("p2", report("r4", 3.0, dispatch=False), now_ms=T0 + 6)
        phone = [c for c in store.get_model("mnist").class_call_overhead if c.hardware_class == PHONE_CPU]
        assert [(c.latency_ms, c.devices, c.dispatch_ms) for c in phone] == [(0.02, 2, 0.1)]


def profiled_model(store: Store) -> None:
    """A model with two int8 blocks profiled at batch 1 (0..3 and 3..output)."""
    store.add_model_variant("mnist", variant("fp32", "aa"), now_ms=T0)
    blocks = (
        BlockProfile(0, 3, "int8", 1, 0.2, "", "b1", 4),
        BlockProfile(3, 0, "int8", 1, 0.3, "", "b2", 4),
    )
    store.add_built_variants("mnist", [], [], now_ms=T0, block_profiles=blocks)


def report(request_id: str, ms: float, *, failed: str = "", dispatch: bool = True) -> ProfileReport:
    """A report timing both blocks of ``profiled_model``: the first at ``ms`` (or failed), the second at
    2 x ms; its call overhead is ms / 100, its dispatch cost ms / 10 (0 without ``dispatch``: an
    agent that did not measure it)."""
    return ProfileReport(
        request_id=request_id,
        model_name="mnist",
        timings=(
            BlockTiming(0, 3, "int8", 1, 0.0 if failed else ms, failed),
            BlockTiming(3, 0, "int8", 1, 2 * ms),
        ),
        call_overhead=(CallOverhead(1, ms / 100, dispatch_ms=ms / 10 if dispatch else 0.0),),
    )


def built(
    name: str, sha: str, *, accuracy: float | None = 0.9, agreement: float | None = 0.95
) -> ModelVariant:
    return replace(
        variant(name, sha, size=300),
        precision=name,
        method=f"{name}-method",
        latency_b1_ms=0.25,
        latency_b32_ms=1.5,
        accuracy=accuracy,
        agreement=agreement,
        cosine=0.999,
    )
