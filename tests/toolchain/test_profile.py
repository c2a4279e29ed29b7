"""Block profiles: every block timed at each precision and batch size, and the block-sum prediction
checked against measured segments. Timings on a shared CI box are never asserted, only structure."""

from __future__ import annotations

import itertools
import json
import logging
import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from common.errors import InvalidArgument
from controller.toolchain import quantize
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import EvalData
from controller.toolchain.profile import ProfileTable, check_predictions, profile_blocks
from controller.toolchain.segments import Segmenter
from tests.toolchain.conftest import FAST

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def data(digits_model: DigitsArtifacts) -> EvalData:
    return EvalData({"input": np.asarray(np.load(digits_model.test_path)["x"])})


@pytest.fixture(scope="module")
def segmenter(digits_model: DigitsArtifacts, data: EvalData) -> Segmenter:
    return Segmenter(digits_model.model_path.read_bytes(), calibration=data.head(64))


@pytest.fixture(scope="module")
def table(segmenter: Segmenter, data: EvalData) -> ProfileTable:
    cuts = segmenter.graph.select(3)
    return profile_blocks(segmenter, cuts, ("fp32", "int8"), (1, 4), data=data, config=FAST)


def test_every_block_is_timed_at_every_precision_and_batch(table: ProfileTable, segmenter: Segmenter) -> None:
    assert table.boundaries[0] is None and table.boundaries[-1] is None
    blocks = len(table.boundaries) - 1
    assert blocks == 4
    assert len(table.blocks) == blocks * 2 * 2
    assert table.methods == {"fp32": quantize.METHOD_FP32, "int8": quantize.METHOD_INT8_DYNAMIC}
    for position, precision, batch in itertools.product(range(blocks), ("fp32", "int8"), (1, 4)):
        row = table.block(position, precision, batch)
        assert row.error == "" and row.latency_ms is not None and row.latency_ms > 0 and row.size_bytes > 0
    assert set(table.overhead_ms) == {1, 4} and all(ms > 0 for ms in table.overhead_ms.values())
    assert table.source_sha256 == segmenter.graph.source_sha256


def test_a_segment_is_predicted_as_the_sum_of_its_blocks_less_the_extra_calls(table: ProfileTable) -> None:
    first, last = table.boundaries[1], table.boundaries[3]
    times = [table.block(k, "fp32", 1).latency_ms or 0.0 for k in (1, 2)]
    assert table.predict(first, last, "fp32", 1, overhead=False) == pytest.approx(sum(times))
    assert table.predict(first, last, "fp32", 1) == pytest.approx(sum(times) - table.overhead_ms[1])
    whole = [table.block(k, "int8", 4).latency_ms or 0.0 for k in range(4)]
    assert table.predict(None, None, "int8", 4) == pytest.approx(sum(whole) - 3 * table.overhead_ms[4])
    assert table.predict(None, first, "fp32", 1) == table.block(0, "fp32", 1).latency_ms
    with pytest.raises(InvalidArgument, match="profiled cut points"):
        table.predict(None, 999, "fp32", 1)
    with pytest.raises(InvalidArgument, match="end after"):
        table.predict(last, first, "fp32", 1)


def test_prediction_is_checked_against_every_cut_pair(
    table: ProfileTable, segmenter: Segmenter, data: EvalData
) -> None:
    report = check_predictions(segmenter, table, data=data, config=FAST)
    pairs = math.comb(len(table.boundaries), 2)
    assert len(report.checks) == pairs * 2 * 2  # every pair x precision x batch
    assert {(c.start, c.end) for c in report.checks} == {
        (table.boundaries[i], table.boundaries[j])
        for i, j in itertools.combinations(range(len(table.boundaries)), 2)
    }
    summary = report.summary()
    logger.info("digits block-sum prediction: %s", summary)
    for key in ("median_error", "median_error_without_overhead", "median_error_single_block"):
        assert summary[key] is not None and math.isfinite(summary[key]) and summary[key] >= 0
    assert all(c.measured_ms > 0 for c in report.checks)


def test_a_block_that_cannot_be_built_is_recorded_not_dropped(
    digits_model: DigitsArtifacts, data: EvalData
) -> None:
    uncalibrated = Segmenter(digits_model.model_path.read_bytes())  # static int8 needs calibration rows
    cuts = uncalibrated.graph.select(1)
    table = profile_blocks(
        uncalibrated, cuts, {"int8": quantize.METHOD_INT8_STATIC}, (1,), data=data, config=FAST
    )
    assert len(table.blocks) == 2
    assert all(b.latency_ms is None and "calibration" in b.error for b in table.blocks)
    assert table.predict(None, None, "int8", 1) is None


def test_a_fixed_batch_model_is_profiled_at_its_batch_only() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rows = EvalData({"x": np.ones((4, 3), dtype=np.float32)})
    table = profile_blocks(model, None, ("fp32",), (1, 32), data=rows, config=FAST)
    assert table.batch_sizes == (2,)
    assert {b.batch for b in table.blocks} == {2}


def test_table_serialises_and_refuses_bad_requests(
    table: ProfileTable, segmenter: Segmenter, data: EvalData, digits_model: DigitsArtifacts
) -> None:
    dumped = json.loads(json.dumps(table.as_dict()))
    assert len(dumped["blocks"]) == len(table.blocks) and dumped["overhead_ms"].keys() == {"1", "4"}
    with pytest.raises(InvalidArgument, match="unknown precision"):
        profile_blocks(segmenter, None, ("fp8",), data=data, config=FAST)
    with pytest.raises(InvalidArgument, match="batch sizes"):
        profile_blocks(segmenter, None, ("fp32",), (0,), data=data, config=FAST)
    relu = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
            "other",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    relu.ir_version = 8
    with pytest.raises(InvalidArgument, match="different model"):
        check_predictions(relu, table, data=data, config=FAST)
