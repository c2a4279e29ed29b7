"""What an import keeps besides its variants, and exact evaluation of segment mixes on it.

A build stores every profiled block as a content-addressed artifact with a segment manifest, the
profile inputs (an .npz of model-input rows) and the uploaded eval data, and records each block's
accuracy when lowered alone; nothing of it is left when the build's registration fails.
``EvaluateSegments`` (``fleetctl models evaluate``) measures a mix on the kept eval data, names every
problem of a bad plan, and runs off the store thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import AlreadyExists, InvalidArgument, PermanentError
from common.types import Model, SegmentSpec
from controller.artifacts import ArtifactStore
from controller.toolchain.digits import DigitsArtifacts
from tests.integration.harness import Fleet, run, running_controller

pytestmark = pytest.mark.timeout(120)
PRECISIONS = ("fp32", "fp16", "int8", "int4")


async def _import(fleet: Fleet, model: Path, eval_npz: Path, name: str = "digits") -> Model:
    return await fleet.call_admin(
        fleet.admin.import_model, model, name=name, eval_data=eval_npz, precisions=PRECISIONS
    )


def _stored(fleet: Fleet, sha256: str) -> bytes:
    return (fleet.artifacts_root / "sha256" / sha256).read_bytes()


async def _manifest(fleet: Fleet, sha256: str) -> dict[str, Any]:
    return await fleet.call_admin(fleet.admin.get_artifact_manifest, sha256)


def test_a_build_keeps_block_artifacts_profile_inputs_and_eval_data(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    uploaded_bytes = eval_npz.read_bytes()

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            model = await _import(fleet, digits_model.model_path, eval_npz)
            fp32 = model.variant("fp32")
            assert fp32 is not None
            accepted = {v.precision for v in model.variants}

            # Every profiled block at every accepted precision has its artifact and a segment manifest.
            assert model.block_profiles and all(b.artifact_sha256 for b in model.block_profiles)
            for b in model.block_profiles:
                data = _stored(fleet, b.artifact_sha256)
                assert len(data) == b.artifact_size_bytes
                manifest = await _manifest(fleet, b.artifact_sha256)
                assert manifest["kind"] == "segment" and manifest["source_sha256"] == fp32.sha256
                assert manifest["inputs"] and manifest["outputs"] and manifest["opset_imports"]
                assert {"onnx", "onnxruntime", "edgefleet"} <= set(manifest["toolchain"])
                assert {
                    "model": "digits",
                    "precision": b.precision,
                    "start_cut": b.start_cut,
                    "end_cut": b.end_cut,
                } in [
                    {k: r[k] for k in ("model", "precision", "start_cut", "end_cut")}
                    for r in manifest["registrations"]
                ]
            # The profile inputs: the model inputs only (no labels), the first 32 eval rows.
            with np.load(io.BytesIO(_stored(fleet, model.profile_inputs_sha256)), allow_pickle=False) as rows:
                assert rows.files == ["input"] and rows["input"].shape == (32, 64)
                with np.load(eval_npz) as uploaded:
                    assert np.array_equal(rows["input"], uploaded["input"][:32])
            inputs_manifest = await _manifest(fleet, model.profile_inputs_sha256)
            assert inputs_manifest["kind"] == "profile_inputs" and inputs_manifest["rows"] == 32
            # The eval data is the uploaded file, byte for byte.
            assert _stored(fleet, model.eval_data_sha256) == uploaded_bytes
            assert model.eval_data_size_bytes == len(uploaded_bytes)
            eval_manifest = await _manifest(fleet, model.eval_data_sha256)
            assert eval_manifest["kind"] == "eval_data"
            assert [a["name"] for a in eval_manifest["arrays"]] == ["input", "labels"]

            # Accuracy of every block lowered alone at each accepted precision below fp32, and the
            # fp32 reference on the same rows (0..0 at fp32).
            blocks = {(b.start_cut, b.end_cut) for b in model.block_profiles}
            reference = [
                a for a in model.block_accuracy if (a.start_cut, a.end_cut, a.precision) == (0, 0, "fp32")
            ]
            assert len(reference) == 1 and reference[0].accuracy is not None and reference[0].accuracy > 0.8
            lowered = {(a.start_cut, a.end_cut, a.precision) for a in model.block_accuracy} - {(0, 0, "fp32")}
            assert lowered == {(s, e, p) for s, e in blocks for p in accepted - {"fp32"}}
            assert all(a.accuracy is not None and not a.error for a in model.block_accuracy)

            # Nothing else was stored, and every stored artifact has its manifest.
            expected = {v.sha256 for v in model.variants} | {b.artifact_sha256 for b in model.block_profiles}
            expected |= {model.profile_inputs_sha256, model.eval_data_sha256}
            assert set(fleet.artifact_files()) == {f"sha256/{s}" for s in expected}
            manifests = {p.name.removesuffix(".json") for p in (fleet.artifacts_root / "manifests").iterdir()}
            assert manifests == expected
            assert list((fleet.artifacts_root / "tmp").iterdir()) == []

    run(scenario(), timeout=100)


def test_a_build_that_fails_while_storing_blocks_leaves_only_the_upload(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ArtifactStore.put_stream
    calls: list[int] = []

    def flaky(self: ArtifactStore, chunks: Any, *, max_bytes: int) -> tuple[str, int]:
        calls.append(1)
        if len(calls) == 6:  # past the variants, a few blocks in
            raise AlreadyExists("disk said no")
        return real(self, chunks, max_bytes=max_bytes)

    monkeypatch.setattr(ArtifactStore, "put_stream", flaky)

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            error = await fleet.admin_error(
                fleet.admin.import_model,
                digits_model.model_path,
                name="digits",
                eval_data=eval_npz,
                precisions=PRECISIONS,
            )
            assert isinstance(error, AlreadyExists)
            model = await fleet.call_admin(fleet.admin.get_model, "digits")
            assert [v.variant for v in model.variants] == ["fp32"]
            assert (model.block_profiles, model.block_accuracy, model.eval_data_sha256) == ((), (), "")
            assert fleet.artifact_files() == [f"sha256/{model.variants[0].sha256}"]
            assert list((fleet.artifacts_root / "tmp").iterdir()) == []

    run(scenario(), timeout=100)


def test_segment_mixes_are_evaluated_exactly_and_bad_plans_are_refused_by_name(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            model = await _import(fleet, digits_model.model_path, eval_npz)
            fp32 = model.variant("fp32")
            int8 = model.variant("int8")
            assert fp32 is not None and int8 is not None
            cut = sorted({b.start_cut for b in model.block_profiles if b.start_cut})[1]
            whole = await fleet.call_admin(
                fleet.admin.evaluate_segments, "digits", [SegmentSpec(0, 0, "fp32")]
            )
            # The whole model at fp32 on the kept eval data is the fp32 variant, measured on the same rows.
            assert whole.rows == 450
            assert whole.accuracy == fp32.accuracy
            assert whole.cosine == pytest.approx(1.0) and whole.agreement == 1.0
            reference = next(a for a in model.block_accuracy if (a.start_cut, a.end_cut) == (0, 0))
            assert whole.predicted_accuracy == reference.accuracy

            mixed = [SegmentSpec(0, cut, "int8"), SegmentSpec(cut, 0, "fp32")]
            result = await fleet.call_admin(fleet.admin.evaluate_segments, "digits", mixed)
            assert result.segments == tuple(mixed)
            assert result.accuracy is not None and result.cosine is not None
            assert result.predicted_accuracy is not None and result.predicted_cosine is not None

            bad = [SegmentSpec(0, 7777, "int3"), SegmentSpec(cut, 0, "fp32"), SegmentSpec(cut, 0, "fp16")]
            error = await fleet.admin_error(fleet.admin.evaluate_segments, "digits", bad)
            assert isinstance(error, InvalidArgument)
            for expected in (
                "segments[0].end_cut: 7777 is not a profiled cut point",
                "segments[0].precision: 'int3' is not an accepted precision",
                f"segments[1].start_cut: {cut} does not continue where segments[0] ended (7777)",
                "segments[1].end_cut: 0 (the model outputs) but 1 segment(s) follow",
                f"segments[2].start_cut: {cut} does not continue where segments[1] ended (0)",
            ):
                assert expected in error.message, error.message

            await fleet.call_admin(fleet.admin.import_model, digits_model.model_path, name="plain")
            error = await fleet.admin_error(
                fleet.admin.evaluate_segments, "plain", [SegmentSpec(0, 0, "fp32")]
            )
            assert isinstance(error, PermanentError) and error.code == "no_eval_data"

    run(scenario(), timeout=100)


def test_an_evaluation_runs_off_the_store_thread(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.service.evaluation import SegmentEvaluator

    entered, release = threading.Event(), threading.Event()
    real = SegmentEvaluator.evaluate

    def parked(self: SegmentEvaluator, *args: Any) -> Any:
        entered.set()
        release.wait(60)
        return real(self, *args)

    monkeypatch.setattr(SegmentEvaluator, "evaluate", parked)

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            await _import(fleet, digits_model.model_path, eval_npz)
            evaluating = asyncio.create_task(
                fleet.call_admin(fleet.admin.evaluate_segments, "digits", [SegmentSpec(0, 0, "int8")])
            )
            try:
                assert await asyncio.to_thread(entered.wait, 60), "the evaluation never started"
                # The store thread (every device's hello and ack) is free meanwhile.
                models = await asyncio.wait_for(fleet.call_admin(fleet.admin.list_models), 10)
                assert [m.name for m in models] == ["digits"]
                assert not evaluating.done()
            finally:
                release.set()
            assert (await evaluating).accuracy is not None

    run(scenario(), timeout=100)


def test_fleetctl_evaluates_profiles_and_describes(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    from typer.testing import CliRunner

    from controller.cli.main import app

    runner = CliRunner()

    eval_size = eval_npz.stat().st_size

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, app, list(args))

    def said(result: Any) -> str:
        return " ".join(result.output.split())  # rich wraps long lines at the runner's width

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            ctl = ("--controller", fleet.address)
            model = await _import(fleet, digits_model.model_path, eval_npz)
            cut = sorted({b.start_cut for b in model.block_profiles if b.start_cut})[0]
            plan = f"0:{cut}@int8,{cut}:0@fp32"

            table = await cli("models", "evaluate", "digits", "--segments", plan, *ctl)
            assert table.exit_code == 0, table.output
            for text in ("measured", "predicted (additive)", "ACCURACY", "COSINE", "450", "eval rows"):
                assert text in table.output
            doc = json.loads(
                (await cli("models", "evaluate", "digits", "--segments", plan, "-o", "json", *ctl)).output
            )
            assert doc["segments"] == [
                {"start_cut": None, "end_cut": cut, "precision": "int8"},
                {"start_cut": cut, "end_cut": None, "precision": "fp32"},
            ]
            assert doc["rows"] == 450 and doc["measured"]["accuracy"] > 0.8
            assert doc["predicted"]["accuracy"] > 0.8

            bad = await cli("models", "evaluate", "digits", "--segments", "0-5@int8,x:0", *ctl)
            assert bad.exit_code == 2
            assert "item 1 '0-5@int8'" in said(bad) and "item 2 'x:0'" in said(bad)
            refused = await cli("models", "evaluate", "digits", "--segments", "0:9999@fp32", *ctl)
            assert refused.exit_code == 2 and "9999 is not a profiled cut point" in said(refused)

            neither = await cli("models", "profile", "digits", *ctl)
            assert neither.exit_code == 2 and "--hardware-class" in said(neither)
            nobody = await cli("models", "profile", "digits", "--hardware-class", "edge-npu", *ctl)
            assert nobody.exit_code != 0 and "edge-npu" in said(nobody)

            described = await cli("models", "describe", "digits", *ctl)
            assert described.exit_code == 0, described.output
            assert "block accuracy (only this block lowered, accuracy; fp32" in said(described)
            doc = json.loads((await cli("models", "describe", "digits", "-o", "json", *ctl)).output)
            assert doc["profile_inputs"]["sha256"] == model.profile_inputs_sha256
            assert doc["eval_data"]["size_bytes"] == eval_size
            assert all(b["artifact_sha256"] for b in doc["block_profiles"])
            assert {(b["start_cut"], b["end_cut"], b["precision"]) for b in doc["block_accuracy"]} >= {
                (None, None, "fp32")
            }
            assert doc["class_profiles"] == []

    run(scenario(), timeout=100)
