"""Latency and accuracy measurement, and the acceptance floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidArgument
from common.types import DataType, TensorSpec
from controller.onnx_check import inspect_onnx
from controller.toolchain import quantize
from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.evaldata import EvalData, load_eval_data
from controller.toolchain.measure import (
    AcceptanceFloor,
    MeasureConfig,
    Metrics,
    eval_batches,
    evaluate,
    judge,
    measure_latency,
    open_session,
    run_eval,
    score,
    worst,
)
from tests.toolchain.conftest import FAST
from tests.toolchain.tiny_models import ffn_block

SCORES = TensorSpec("scores", DataType.FLOAT32, (-1, 3))
LABEL = TensorSpec("label", DataType.INT64, (-1,))


def test_latency_and_accuracy_of_the_digits_model(digits_model: DigitsArtifacts, digits_eval: Path) -> None:
    inputs, outputs = inspect_onnx(digits_model.model_path)
    data = load_eval_data(digits_eval, inputs, outputs)
    session = open_session(digits_model.model_path.read_bytes())
    assert session.get_session_options().intra_op_num_threads == 1

    got = run_eval(session, data, batch=64)  # 450 rows: the last call has a partial batch
    assert got["probabilities"].shape == (data.rows, 10) and got["label"].shape == (data.rows,)
    metrics = evaluate(got, got, outputs, data.labels)
    assert metrics.accuracy == pytest.approx(digits_model.accuracy)
    assert metrics.agreement == 1.0 and metrics.max_abs_diff == 0.0
    assert metrics.cosine == pytest.approx(1.0)

    latency = measure_latency(session, data, FAST)
    assert sorted(latency) == [1, 32] and all(ms > 0 for ms in latency.values())
    # A model with a fixed batch is timed only at that batch.
    assert sorted(measure_latency(session, data, FAST, batch=4)) == [4]


def test_evaluate_compares_with_fp32_and_labels() -> None:
    ref = {"scores": np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)}
    near = {"scores": ref["scores"] + np.float32(0.01)}
    labels = np.array([0, 1, 2])
    m = evaluate(near, ref, [SCORES], labels)
    assert m.accuracy == pytest.approx(2 / 3)  # the all-zero row argmaxes to class 0
    assert m.agreement == 1.0
    # The all-zero fp32 row has no direction and is left out of the cosine (max_abs_diff covers it).
    assert m.cosine is not None and 0.99 < m.cosine < 1.0
    assert m.max_abs_diff == pytest.approx(0.01, abs=1e-6)

    # Without labels a float [N, C] output may be an embedding: no argmax "agreement" is made up.
    assert evaluate(near, ref, [SCORES], None).agreement is None
    flipped = {"scores": -ref["scores"]}
    cos = evaluate(flipped, ref, [SCORES], None).cosine
    assert cos == pytest.approx(-1.0)  # opposite directions; the zero row is left out
    zeros = {"scores": np.zeros((3, 3), np.float32)}
    assert evaluate(near, zeros, [SCORES], None).cosine is None  # no fp32 row has a direction
    nan = {"scores": np.full((3, 3), np.nan, np.float32)}
    assert evaluate(nan, ref, [SCORES], None).nonfinite


def test_integer_label_output_gives_agreement_without_labels() -> None:
    ref = {"label": np.array([1, 2, 3, 4])}
    got = {"label": np.array([1, 2, 3, 0])}
    m = evaluate(got, ref, [LABEL], None)
    assert (m.accuracy, m.agreement, m.cosine) == (None, 0.75, None)
    ok, reason = judge(m, Metrics(agreement=1.0), AcceptanceFloor())
    assert not ok and reason == "agreement with fp32 0.7500 < floor 0.99"


def test_judge_reports_the_measured_reason() -> None:
    floor = AcceptanceFloor()
    ref = Metrics(accuracy=0.97)
    assert judge(Metrics(accuracy=0.965), ref, floor) == (
        True,
        "accuracy 0.9650 vs fp32 0.9700: drop 0.5 points, floor 1.0",
    )
    ok, reason = judge(Metrics(accuracy=0.95), ref, floor)
    assert not ok and reason == "accuracy 0.9500 vs fp32 0.9700: drop 2.0 points > floor 1.0"
    assert judge(Metrics(accuracy=0.98), ref, floor)[1].endswith("1.0 points better, floor 1.0")
    ok, reason = judge(Metrics(cosine=0.62), Metrics(cosine=1.0), floor)
    assert not ok and reason == "cosine to fp32 0.6200 < floor 0.99"
    assert judge(Metrics(cosine=0.995), Metrics(cosine=1.0), floor)[0]
    assert not judge(Metrics(cosine=1.0, nonfinite=True), Metrics(cosine=1.0), floor)[0]
    assert not judge(Metrics(), Metrics(), floor)[0]


@pytest.mark.parametrize(
    "kwargs", [{"max_accuracy_drop_points": -1.0}, {"min_cosine": 1.5}, {"min_agreement": 2.0}]
)
def test_floor_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        AcceptanceFloor(**kwargs)


def test_config_is_validated() -> None:
    with pytest.raises(InvalidArgument):
        MeasureConfig(batch_sizes=(0,))
    with pytest.raises(InvalidArgument):
        MeasureConfig(runs=0)


def skewed_rows(rows: int = 128) -> np.ndarray:
    """[rows, 8, 32] activations whose magnitude changes by 10x from one row to the next (1, 10, 100):
    batched together, the large rows set the one activation scale dynamic int8 uses for all."""
    x = np.random.default_rng(0).normal(size=(rows, 8, 32)).astype(np.float32)
    return x * (10.0 ** (np.arange(rows) % 3))[:, None, None].astype(np.float32)


def test_dynamic_int8_is_scored_at_its_worst_batch_size(tmp_path: Path) -> None:
    """A request's output under dynamic int8 depends on the rows it is batched with; the score holds
    however a serving agent batches them (here the batched one is worse; on MiniLM, one row is)."""
    src = ffn_block(tmp_path / "ffn.onnx")
    _, outputs = inspect_onnx(src)
    session = open_session(quantize.int8_dynamic(src, tmp_path))
    data = EvalData({"x": skewed_rows()})
    reference = run_eval(open_session(src.read_bytes()), data, 64)
    batched = evaluate(run_eval(session, data, 64), reference, outputs, None)
    single = evaluate(run_eval(session, data, 1), reference, outputs, None)
    assert batched.cosine is not None and single.cosine is not None
    assert batched.cosine < single.cosine - 0.05  # what makes one batch size alone wrong

    batches = eval_batches(MeasureConfig(), fixed=0)
    assert batches == (64, 1)
    assert score(session, data, batches, reference, outputs) == batched
    assert score(session, data, (1, 64), reference, outputs) == batched  # not just the first size
    assert score(session, data, (1,), reference, outputs) == single
    assert eval_batches(MeasureConfig(eval_batch=1), fixed=0) == (1,)
    assert eval_batches(MeasureConfig(), fixed=4) == (4,)  # a fixed batch is the only one it runs at


def test_worst_takes_each_metric_at_its_worst() -> None:
    a = Metrics(accuracy=0.9, agreement=0.99, cosine=0.97, max_abs_diff=0.1)
    b = Metrics(accuracy=0.95, agreement=0.98, cosine=0.99, max_abs_diff=0.3, nonfinite=True)
    assert worst([a, b]) == Metrics(
        accuracy=0.9, agreement=0.98, cosine=0.97, max_abs_diff=0.3, nonfinite=True
    )
    assert worst([a]) == a
    # A metric one score lacks is not known for the other batch size either.
    assert worst([a, Metrics(cosine=0.5)]) == Metrics(cosine=0.5)
    assert worst([]) == Metrics()
