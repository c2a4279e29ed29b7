"""agent.profiler on the digits model's real block artifacts: every block timed at every precision and
batch size (timings are never asserted, only structure), inputs made by the fp32 chain, failures kept."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest

from agent.profiler import measure_dispatch, profile_blocks, with_dispatch
from common.types import ProfileBlock, ProfileReport, ProfileRequest
from controller.onnx_check import inspect_onnx
from controller.toolchain import quantize
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import load_eval_data
from controller.toolchain.model_profile import ModelProfile, profile_model

METHODS = {"fp32": quantize.METHOD_FP32, "int8": quantize.METHOD_INT8_STATIC}


@pytest.fixture(scope="module")
def built(
    digits_model: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelProfile, Path]:
    """The digits blocks as an import builds them, written out as an agent's cache would hold them."""
    work = tmp_path_factory.mktemp("profile")
    with np.load(digits_model.test_path) as test:
        np.savez(work / "eval.npz", input=test["x"], labels=test["y"])
    inputs, outputs = inspect_onnx(digits_model.model_path)
    data = load_eval_data(work / "eval.npz", inputs, outputs)
    profile = profile_model(digits_model.model_path.read_bytes(), data, METHODS, max_cuts=3)
    for a in profile.block_artifacts:
        (work / a.sha256).write_bytes(a.onnx_bytes)
    (work / "inputs.npz").write_bytes(profile.profile_inputs)
    return profile, work


def _request(profile: ModelProfile, *, batch_sizes: tuple[int, ...] = (1, 32)) -> ProfileRequest:
    blocks = tuple(
        ProfileBlock(a.start_cut, a.end_cut, a.precision, a.sha256, len(a.onnx_bytes))
        for a in profile.block_artifacts
    )
    return ProfileRequest("prof-1", "digits", profile.source_sha256, blocks, "e" * 64, 1, batch_sizes, 5)


def _paths(profile: ModelProfile, work: Path) -> dict[str, Path]:
    return {a.sha256: work / a.sha256 for a in profile.block_artifacts}


def test_every_block_is_timed_at_every_precision_and_batch(built: tuple[ModelProfile, Path]) -> None:
    profile, work = built
    request = _request(profile)
    report = profile_blocks(request, _paths(profile, work), work / "inputs.npz")
    assert report.error == ""
    assert (report.request_id, report.model_name) == ("prof-1", "digits")
    cells = {(b.start_cut, b.end_cut, b.precision, n) for b in request.blocks for n in (1, 32)}
    assert {(t.start_cut, t.end_cut, t.precision, t.batch_size) for t in report.timings} == cells
    assert len(report.timings) == len(cells)
    assert all(t.latency_ms > 0 and t.error == "" for t in report.timings)
    assert {c.batch_size for c in report.call_overhead} == {1, 32}
    assert all(c.latency_ms > 0 for c in report.call_overhead)


def test_fewer_rows_than_the_batch_are_tiled(built: tuple[ModelProfile, Path]) -> None:
    profile, work = built
    buffer = io.BytesIO()
    with np.load(work / "inputs.npz") as rows:
        np.savez(buffer, input=rows["input"][:3])  # three rows for a batch of 32
    (work / "three.npz").write_bytes(buffer.getvalue())
    report = profile_blocks(_request(profile, batch_sizes=(32,)), _paths(profile, work), work / "three.npz")
    assert report.error == "" and report.timings
    assert all(t.latency_ms > 0 and not t.error for t in report.timings)


def test_a_block_that_does_not_load_is_reported_with_its_error(built: tuple[ModelProfile, Path]) -> None:
    profile, work = built
    request = _request(profile, batch_sizes=(1,))
    broken = next(b for b in request.blocks if b.precision == "int8")
    (work / "broken.onnx").write_bytes(b"not an onnx model")
    paths = {**_paths(profile, work), broken.artifact_sha256: work / "broken.onnx"}
    report = profile_blocks(request, paths, work / "inputs.npz")
    failed = [t for t in report.timings if t.error]
    assert [(t.start_cut, t.end_cut, t.precision) for t in failed] == [
        (broken.start_cut, broken.end_cut, broken.precision)
    ]
    assert failed[0].error.startswith("failed to load") and failed[0].latency_ms == 0.0
    assert len(report.timings) == len(request.blocks)  # nothing dropped


def test_a_broken_fp32_block_names_the_blocks_it_cannot_feed(built: tuple[ModelProfile, Path]) -> None:
    profile, work = built
    request = _request(profile, batch_sizes=(1,))
    head = next(b for b in request.blocks if b.precision == "fp32" and b.start_cut == 0)
    (work / "broken.onnx").write_bytes(b"\x00" * 10)
    report = profile_blocks(
        request, {**_paths(profile, work), head.artifact_sha256: work / "broken.onnx"}, work / "inputs.npz"
    )
    downstream = [t for t in report.timings if t.start_cut != 0]
    assert downstream and all("fp32 block 0.." in t.error for t in downstream)
    assert len(report.timings) == len(request.blocks)


def test_unreadable_inputs_or_a_missing_fp32_chain_fail_the_report(built: tuple[ModelProfile, Path]) -> None:
    profile, work = built
    (work / "garbage.npz").write_bytes(b"PK not really")
    report = profile_blocks(_request(profile), _paths(profile, work), work / "garbage.npz")
    assert report.timings == () and "not a readable .npz" in report.error
    no_tail = _request(profile)
    no_tail = ProfileRequest(
        no_tail.request_id,
        no_tail.model_name,
        no_tail.source_sha256,
        tuple(b for b in no_tail.blocks if not (b.precision == "fp32" and b.end_cut == 0)),
        no_tail.inputs_sha256,
        1,
        (1,),
        3,
    )
    report = profile_blocks(no_tail, _paths(profile, work), work / "inputs.npz")
    assert report.timings == () and "do not chain" in report.error


@pytest.mark.timeout(60)
def test_the_dispatch_cost_of_the_serving_path_is_added_to_each_call_overhead(
    built: tuple[ModelProfile, Path],
) -> None:
    profile, work = built
    report = profile_blocks(_request(profile), _paths(profile, work), work / "inputs.npz")
    assert report.call_overhead and all(c.dispatch_ms == 0.0 for c in report.call_overhead)
    measured = asyncio.run(with_dispatch(report))
    assert [c.batch_size for c in measured.call_overhead] == [c.batch_size for c in report.call_overhead]
    assert [c.latency_ms for c in measured.call_overhead] == [c.latency_ms for c in report.call_overhead]
    # Through the batch queue and a worker thread and back costs more than the call alone, always.
    assert all(c.dispatch_ms > 0.0 for c in measured.call_overhead)
    assert measured.timings == report.timings
    # Nothing to add it to: the report is returned as it is (a failed profile has no overheads).
    failed = ProfileReport("prof-2", "digits", error="boom")
    assert asyncio.run(with_dispatch(failed)) is failed


def test_measure_dispatch_answers_every_batch_size_once() -> None:
    out = asyncio.run(measure_dispatch((1, 32, 1)))
    assert sorted(out) == [1, 32] and all(v > 0.0 for v in out.values())
