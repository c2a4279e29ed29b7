"""ImportModel with precisions: the controller builds, measures and registers variants, streaming progress."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest

from common.errors import AlreadyExists, InvalidArgument, NotFound
from common.types import Assignment, ImportProgress, Model, ModelVariant
from controller.toolchain.digits import DigitsArtifacts
from tests.integration.harness import Fleet, run, running_controller

pytestmark = pytest.mark.timeout(120)


async def _import(
    fleet: Fleet, model: Path, eval_data: Path | None, precisions: tuple[str, ...]
) -> tuple[Model, list[ImportProgress]]:
    events: list[ImportProgress] = []
    imported = await fleet.call_admin(
        fleet.admin.import_model,
        model,
        name="digits",
        eval_data=eval_data,
        precisions=precisions,
        on_event=events.append,
    )
    return imported, events


def _no_temp_files(fleet: Fleet) -> None:
    assert list((fleet.artifacts_root / "tmp").iterdir()) == []


async def _manifest(fleet: Fleet, sha256: str) -> dict[str, Any]:
    return await fleet.call_admin(fleet.admin.get_artifact_manifest, sha256)


def _check_manifest(fleet: Fleet, manifest: dict[str, Any], v: ModelVariant) -> None:
    """The manifest describes exactly the stored artifact of ``v``."""
    data = (fleet.artifacts_root / "sha256" / v.sha256).read_bytes()
    on_disk = json.loads((fleet.artifacts_root / "manifests" / f"{v.sha256}.json").read_bytes())
    assert manifest == on_disk
    assert manifest["schema"] == 1
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() == v.sha256
    assert manifest["size_bytes"] == len(data) == v.size_bytes
    specs = [{"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)} for s in v.inputs]
    assert manifest["inputs"] == specs
    specs = [{"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)} for s in v.outputs]
    assert manifest["outputs"] == specs
    assert manifest["segment"] is None
    assert manifest["opset_imports"]["ai.onnx"] > 0
    assert manifest["ir_version"] > 0
    assert {"onnx", "onnxruntime", "edgefleet", "python"} <= set(manifest["toolchain"])
    assert all(manifest["toolchain"].values())
    assert manifest["created_at"]


def test_import_builds_measures_and_registers_variants(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            requested = ("fp32", "fp16", "int8", "int4")
            model, events = await _import(fleet, digits_model.model_path, eval_npz, requested)

            # Progress arrived in order (one event per built candidate, one for the cut points, one per
            # requested precision's block profiles), ending at the total.
            assert events, "no progress was streamed"
            assert [e.step for e in events] == list(range(1, len(events) + 1))
            assert {e.total for e in events} == {len(events)}
            assert events[0].message.startswith("fp32")

            variants = {v.variant: v for v in model.variants}
            assert {"fp32", "fp16", "int8"} <= set(variants)
            shas = [variants[p].sha256 for p in ("fp32", "fp16", "int8")]
            assert len(set(shas)) == 3
            assert variants["fp32"].sha256 == hashlib.sha256(digits_model.model_path.read_bytes()).hexdigest()
            for name in ("fp32", "fp16", "int8"):
                v = variants[name]
                assert v.precision == name
                assert v.method
                assert v.latency_b1_ms > 0
                assert v.latency_b32_ms > 0
                assert v.accuracy is not None
                assert v.accuracy > 0.8  # the digits model scores about 0.95 on held-out rows
                assert v.cosine is not None
                assert v.cosine > 0.9
                assert [s.name for s in v.inputs] == ["input"]
                assert v.sha256 in {Path(f).name for f in fleet.artifact_files()}
            assert variants["fp16"].size_bytes < variants["fp32"].size_bytes
            # Every requested precision is a variant or a rejection with a reason.
            rejected = {r.precision for r in model.rejected}
            assert set(requested) <= set(variants) | rejected
            assert all(r.reason and r.method for r in model.rejected)
            _no_temp_files(fleet)

            # Every cut point with what crosses it, and block profiles between the selected ones for
            # every accepted precision at batch 1 and 32.
            assert model.cut_points
            assert all(c.bytes_per_sample > 0 and c.tensors for c in model.cut_points)
            assert [c.index for c in model.cut_points] == sorted({c.index for c in model.cut_points})
            assert any(e.message.endswith("cut points; profiling blocks between 8") for e in events)
            cut_indices = {c.index for c in model.cut_points}
            starts = sorted({b.start_cut for b in model.block_profiles})
            assert starts[0] == 0 and set(starts[1:]) <= cut_indices
            assert 2 <= len(starts) <= 9  # at most 8 selected cut points
            blocks = [(s, e) for s, e in zip(starts, [*starts[1:], 0], strict=True)]
            grid = {(b.start_cut, b.end_cut, b.precision, b.batch_size): b for b in model.block_profiles}
            assert len(grid) == len(model.block_profiles)
            expected = {(s, e, p, n) for s, e in blocks for p in variants for n in (1, 32)}
            assert set(grid) == expected
            assert all(b.latency_ms > 0 and not b.error for b in model.block_profiles)

            # describe (GetModel) returns the same model, rejections included.
            assert await fleet.call_admin(fleet.admin.get_model, "digits") == model

            # Every variant's artifact has its manifest: the bytes, the signature, how it was built.
            for v in model.variants:
                _check_manifest(fleet, await _manifest(fleet, v.sha256), v)
                assert (await _manifest(fleet, v.sha256))["registrations"] == [
                    {
                        "model": "digits",
                        "variant": v.variant,
                        "precision": v.precision,
                        "method": v.method,
                        "registered_at": ANY,
                    }
                ]

            # A built variant is assignable like any other, and the device fetches exactly its bytes.
            agent = await fleet.enroll("phone-1")
            stream, _ = await agent.online()
            result = await fleet.call_admin(fleet.admin.assign, "phone-1", "digits", "int8")
            assert result.changed
            assignment = await stream.expect(Assignment)
            assert (assignment.variant, assignment.artifact_sha256) == ("int8", variants["int8"].sha256)
            chunks = await agent.fetch(assignment.artifact_sha256)
            data = b"".join(c.data for c in chunks)
            assert hashlib.sha256(data).hexdigest() == variants["int8"].sha256

            # Building again yields the same bytes: only the measurements are refreshed.
            again, _ = await _import(fleet, digits_model.model_path, eval_npz, ("fp16",))
            fp16 = again.variant("fp16")
            assert fp16 is not None
            assert (fp16.sha256, fp16.created_at_ms) == (
                variants["fp16"].sha256,
                variants["fp16"].created_at_ms,
            )
            assert again.rejected == ()  # the latest build's rejections
            _no_temp_files(fleet)

    run(scenario(), timeout=100)


def test_precisions_without_eval_data_are_refused_before_anything_is_written(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            error = await fleet.admin_error(
                fleet.admin.import_model, digits_model.model_path, name="digits", precisions=("fp32", "int8")
            )
            assert isinstance(error, InvalidArgument)
            assert "eval data" in error.message
            assert "int8" in error.message
            assert fleet.artifact_files() == []
            assert await fleet.call_admin(fleet.admin.list_models) == []

    run(scenario())


def test_eval_data_that_does_not_fit_the_model_is_refused_by_name(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    with np.load(digits_model.test_path) as test:
        x = test["x"].astype(np.float32)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=x)

    async def scenario() -> None:
        async with running_controller(tmp_path / "controller") as fleet:
            error = await fleet.admin_error(
                fleet.admin.import_model,
                digits_model.model_path,
                name="digits",
                eval_data=wrong,
                precisions=("int8",),
            )
            assert isinstance(error, InvalidArgument)
            assert "'input'" in error.message  # the model input with no array
            assert "pixels" in error.message  # and what the file had
            assert "upload-" not in error.message  # no temp file names
            assert fleet.artifact_files() == []
            assert await fleet.call_admin(fleet.admin.list_models) == []

            # Eval data without precisions to build is a mistake too.
            error = await fleet.admin_error(
                fleet.admin.import_model, digits_model.model_path, name="digits", eval_data=wrong
            )
            assert isinstance(error, InvalidArgument)
            assert fleet.artifact_files() == []

    run(scenario())


def test_unknown_precision_is_refused(tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            error = await fleet.admin_error(
                fleet.admin.import_model,
                digits_model.model_path,
                name="digits",
                eval_data=eval_npz,
                precisions=("int3",),
            )
            assert isinstance(error, InvalidArgument)
            assert "int3" in error.message
            assert fleet.artifact_files() == []

    run(scenario())


def test_a_failed_build_keeps_the_valid_upload_and_nothing_else(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            store = fleet.controller.db.store

            def refuse(*args: object, **kwargs: object) -> Model:
                raise AlreadyExists("registering the built variants failed")

            monkeypatch.setattr(store, "add_built_variants", refuse)
            error = await fleet.admin_error(
                fleet.admin.import_model,
                digits_model.model_path,
                name="digits",
                eval_data=eval_npz,
                precisions=("fp16", "int8"),
            )
            assert isinstance(error, AlreadyExists)
            # The fp32 upload was valid and stays registered; no built artifact or temp file is left.
            model = await fleet.call_admin(fleet.admin.get_model, "digits")
            assert [v.variant for v in model.variants] == ["fp32"]
            assert fleet.artifact_files() == [f"sha256/{model.variants[0].sha256}"]
            _no_temp_files(fleet)
            # The fp32 manifest is back to the plain upload's (the failed build's update was undone).
            manifest = await _manifest(fleet, model.variants[0].sha256)
            _check_manifest(fleet, manifest, model.variants[0])
            assert (manifest["precision"], manifest["method"]) == (None, None)
            assert [r["precision"] for r in manifest["registrations"]] == [None]

    run(scenario())


def test_fleetctl_imports_with_precisions_and_describes(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    from typer.testing import CliRunner

    from controller.cli.main import app

    runner = CliRunner()

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            ctl = ["--controller", fleet.address]
            args = ["models", "import", str(digits_model.model_path), "--name", "digits", *ctl]
            args += ["--eval-data", str(eval_npz), "--precisions", "fp32,int8"]
            result = await asyncio.to_thread(runner.invoke, app, args)
            assert result.exit_code == 0, result.output
            for column in ("VARIANT", "METHOD", "B1 MS", "B32 MS", "ACCURACY", "COSINE", "STATUS"):
                assert column in result.output
            assert "int8" in result.output

            described = await asyncio.to_thread(
                runner.invoke, app, ["models", "describe", "digits", "-o", "json", *ctl]
            )
            assert described.exit_code == 0, described.output
            doc = json.loads(described.output)
            assert [v["variant"] for v in doc["variants"]] == ["fp32", "int8"]
            assert doc["variants"][1]["precision"] == "int8"
            assert doc["variants"][1]["latency_ms"]["1"] > 0
            assert [v["manifest"]["sha256"] for v in doc["variants"]] == [
                v["sha256"] for v in doc["variants"]
            ]
            assert doc["variants"][1]["manifest"]["precision"] == "int8"
            assert all(r["precision"] == "int8" and r["reason"] for r in doc["rejected"])
            assert doc["cut_points"]
            assert all(c["bytes_per_sample"] > 0 and c["tensors"] for c in doc["cut_points"])
            assert {(b["precision"], b["batch_size"]) for b in doc["block_profiles"]} == {
                (p, n) for p in ("fp32", "int8") for n in (1, 32)
            }
            assert all(b["latency_ms"] > 0 for b in doc["block_profiles"])

            table = await asyncio.to_thread(runner.invoke, app, ["models", "describe", "digits", *ctl])
            assert table.exit_code == 0, table.output
            for heading in (
                "cut points",
                "CROSSING TENSORS",
                "BYTES/SAMPLE",
                "block profiles",
                "FP32 B1",
                "INT8 B32",
            ):
                assert heading in table.output

            missing = await asyncio.to_thread(runner.invoke, app, ["models", "describe", "ghost", *ctl])
            assert missing.exit_code != 0
            assert "ghost" in missing.output

    run(scenario())


def test_a_plain_upload_gets_a_manifest_and_each_name_of_its_bytes_a_registration(
    tmp_path: Path, digits_model: DigitsArtifacts
) -> None:
    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            first = await fleet.call_admin(fleet.admin.import_model, digits_model.model_path, name="digits")
            (v,) = first.variants
            manifest = await _manifest(fleet, v.sha256)
            _check_manifest(fleet, manifest, v)
            assert (manifest["model"], manifest["variant"], manifest["precision"]) == ("digits", "fp32", None)
            assert [(r["model"], r["variant"]) for r in manifest["registrations"]] == [("digits", "fp32")]

            # The same bytes under a second name: one manifest (content-addressed), two registrations.
            await fleet.call_admin(
                fleet.admin.import_model, digits_model.model_path, name="digits-copy", variant="base"
            )
            again = await _manifest(fleet, v.sha256)
            assert (again["model"], again["variant"]) == ("digits", "fp32")  # the first stays first
            assert [(r["model"], r["variant"]) for r in again["registrations"]] == [
                ("digits", "fp32"),
                ("digits-copy", "base"),
            ]
            assert fleet.artifact_files() == [f"sha256/{v.sha256}"]
            assert len(list((fleet.artifacts_root / "manifests").iterdir())) == 1

            # Importing it again under a name it already has adds nothing.
            await fleet.call_admin(fleet.admin.import_model, digits_model.model_path, name="digits")
            assert len((await _manifest(fleet, v.sha256))["registrations"]) == 2

            # An artifact without a manifest is NotFound, and a malformed sha256 is refused.
            error = await fleet.admin_error(fleet.admin.get_artifact_manifest, "0" * 64)
            assert isinstance(error, NotFound)
            error = await fleet.admin_error(fleet.admin.get_artifact_manifest, "not-a-sha")
            assert isinstance(error, InvalidArgument)

    run(scenario())


def test_a_long_build_does_not_hold_up_other_imports(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building variants takes minutes for a real model; a plain upload meanwhile must not wait for it."""
    import threading

    from controller.api import admin_api

    entered, release = threading.Event(), threading.Event()
    real = admin_api._build_and_profile

    def parked(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(admin_api, "_build_and_profile", parked)

    async def scenario() -> None:
        async with running_controller(tmp_path) as fleet:
            building = asyncio.create_task(_import(fleet, digits_model.model_path, eval_npz, ("fp16",)))
            try:
                assert await asyncio.to_thread(entered.wait, 60), "the build never started"
                other = tmp_path / "other.onnx"
                other.write_bytes(digits_model.model_path.read_bytes())
                plain = await asyncio.wait_for(
                    fleet.call_admin(fleet.admin.import_model, other, name="other"), 30
                )
                assert [v.variant for v in plain.variants] == ["fp32"]
                assert not building.done()
            finally:
                release.set()
            built, _ = await building
            assert sorted(v.variant for v in built.variants) == ["fp16", "fp32"]

    run(scenario())
