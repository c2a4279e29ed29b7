from __future__ import annotations

import gc
import hashlib
import threading
import weakref
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from agent.runtime import LoadedModel, ModelLoadError, ModelSlot, load_model
from common.errors import EdgefleetError, InvalidArgument, PermanentError
from common.types import AssignmentFailure, DataType, TensorSpec
from controller.toolchain.digits import DigitsArtifacts


def _load(path: Path, threads: int = 1) -> LoadedModel:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return load_model(path, sha256=sha, model_name="digits", variant="fp32", threads=threads)


def _save_graph(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> Path:
    model = oh.make_model(oh.make_graph(nodes, "g", inputs, outputs), opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def model(digits_model: DigitsArtifacts) -> LoadedModel:
    return _load(digits_model.model_path)


@pytest.fixture(scope="module")
def test_set(digits_model: DigitsArtifacts) -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits_model.test_path) as data:
        return data["x"], data["y"]


def test_artifacts_written(digits_model: DigitsArtifacts) -> None:
    x = np.load(digits_model.sample_path)
    assert x.dtype == np.float32 and x.shape == (8, 64)
    with np.load(digits_model.test_path) as data:
        assert data["x"].dtype == np.float32 and data["x"].shape[1] == 64
        assert data["y"].dtype == np.int64 and data["y"].shape == (data["x"].shape[0],)
        # Held-out rows only: a quarter of the 1797 bundled digits.
        assert data["x"].shape[0] == digits_model.n_test == 450
        # Raw pixel scale (0..16): the model, not the caller, does the scaling.
        assert data["x"].max() == 16.0
    assert digits_model.accuracy >= 0.9


def test_specs_and_metadata(model: LoadedModel, digits_model: DigitsArtifacts) -> None:
    assert model.inputs == (TensorSpec("input", DataType.FLOAT32, (-1, 64)),)
    assert model.outputs == (
        TensorSpec("label", DataType.INT64, (-1,)),
        TensorSpec("probabilities", DataType.FLOAT32, (-1, 10)),
    )
    assert model.sha256 == hashlib.sha256(digits_model.model_path.read_bytes()).hexdigest()
    assert (model.model_name, model.variant) == ("digits", "fp32")
    assert model.load_ms > 0  # for the daemon's "loaded in" line


def test_outputs_equal_direct_onnxruntime(
    model: LoadedModel, digits_model: DigitsArtifacts, test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_set
    direct = ort.InferenceSession(str(digits_model.model_path), providers=["CPUExecutionProvider"])
    want_label, want_prob = direct.run(["label", "probabilities"], {"input": x})
    got = model.infer({"input": x})
    assert set(got) == {"label", "probabilities"}
    np.testing.assert_array_equal(got["label"], want_label)
    np.testing.assert_allclose(got["probabilities"], want_prob, rtol=1e-5, atol=1e-6)


def test_accuracy_and_output_selection(model: LoadedModel, test_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = test_set
    got = model.infer({"input": x}, output_names=["label"])
    assert list(got) == ["label"]
    assert float(np.mean(got["label"] == y)) >= 0.9
    prob = model.infer({"input": x[:1]}, ["probabilities"])["probabilities"]
    assert prob.shape == (1, 10)
    assert prob.sum() == pytest.approx(1.0, abs=1e-4)


def test_session_options(model: LoadedModel, digits_model: DigitsArtifacts) -> None:
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert _load(digits_model.model_path, threads=2)._session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(InvalidArgument):
        _load(digits_model.model_path, threads=0)


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ({"pixels": np.zeros((1, 64), np.float32)}, ["'pixels'", "'input'"]),
        ({}, ["missing", "'input'"]),
        ({"input": np.zeros((1, 64), np.float64)}, ["'input'", "float32", "float64"]),
        ({"input": np.zeros((1, 63), np.float32)}, ["'input'", "64", "63"]),
        ({"input": np.zeros(64, np.float32)}, ["'input'", "rank 2", "rank 1"]),
        ({"input": [[0.0] * 64]}, ["'input'", "numpy array"]),
    ],
    ids=["unknown-name", "missing", "dtype", "dim", "rank", "not-array"],
)
def test_bad_input_is_invalid_argument(
    model: LoadedModel, inputs: dict[str, object], fragments: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as err:
        model.infer(inputs)  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in str(err.value)


def test_unknown_output_is_invalid_argument(model: LoadedModel) -> None:
    with pytest.raises(InvalidArgument, match="'logits'"):
        model.infer({"input": np.zeros((1, 64), np.float32)}, ["logits"])


def test_non_contiguous_and_big_endian_inputs_accepted(
    model: LoadedModel, test_set: tuple[np.ndarray, ...]
) -> None:
    x = test_set[0][:4]
    want = model.infer({"input": x})["label"]
    wide = np.zeros((4, 128), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(model.infer({"input": wide[:, ::2]})["label"], want)
    np.testing.assert_array_equal(model.infer({"input": x.astype(">f4")})["label"], want)


def test_onnxruntime_failure_during_run_is_typed(tmp_path: Path) -> None:
    # Two dynamic inputs whose sizes only clash at run time: the specs cannot catch it, ort must.
    path = _save_graph(
        tmp_path / "add.onnx",
        [oh.make_node("Add", ["a", "b"], ["y"])],
        [
            oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["n"]),
            oh.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["m"]),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["k"])],
    )
    loaded = _load(path)
    with pytest.raises(EdgefleetError) as err:
        loaded.infer({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)})
    assert not isinstance(err.value, ModelLoadError)
    assert err.value.code in ("internal", "invalid_argument")
    assert "broadcast" in str(err.value)


def test_random_bytes_fail_to_load(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelLoadError) as err:
        _load(path)
    assert err.value.failure is AssignmentFailure.LOAD_FAILED
    assert isinstance(err.value, PermanentError)
    assert err.value.code == "load_failed"


def test_unsupported_input_type_fails_to_load(tmp_path: Path) -> None:
    path = _save_graph(
        tmp_path / "strings.onnx",
        [oh.make_node("Identity", ["s"], ["y"])],
        [oh.make_tensor_value_info("s", onnx.TensorProto.STRING, [1])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.STRING, [1])],
    )
    with pytest.raises(ModelLoadError) as err:
        _load(path)
    assert err.value.failure is AssignmentFailure.LOAD_FAILED
    assert "'s'" in str(err.value) and "tensor(string)" in str(err.value)


def test_non_finite_output_on_zeros_fails_smoke_test(tmp_path: Path) -> None:
    # Log(0) = -inf: loads fine, but a model that answers zeros with -inf is not fit to serve.
    path = _save_graph(
        tmp_path / "log.onnx",
        [oh.make_node("Log", ["x"], ["y"])],
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
    )
    with pytest.raises(ModelLoadError) as err:
        _load(path)
    assert err.value.failure is AssignmentFailure.SMOKE_TEST_FAILED
    assert "'y'" in str(err.value) and "finite" in str(err.value)


def test_model_that_errors_on_zeros_fails_smoke_test(tmp_path: Path) -> None:
    # Gather with index input 0 into an empty axis: fine to load, fails at run on the zeros feed.
    path = _save_graph(
        tmp_path / "gather.onnx",
        [oh.make_node("Gather", ["data", "idx"], ["y"])],
        [
            oh.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [0, 3]),
            oh.make_tensor_value_info("idx", onnx.TensorProto.INT64, [1]),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    with pytest.raises(ModelLoadError) as err:
        _load(path)
    assert err.value.failure is AssignmentFailure.SMOKE_TEST_FAILED


# --- ModelSlot -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_models(digits_model: DigitsArtifacts) -> tuple[LoadedModel, LoadedModel, LoadedModel]:
    a, b, c = (_load(digits_model.model_path) for _ in range(3))
    return a, b, c


def test_slot_swap_returns_the_previous_model(
    three_models: tuple[LoadedModel, LoadedModel, LoadedModel],
) -> None:
    a, b, c = three_models
    slot = ModelSlot()
    assert slot.active is None
    assert slot.swap(a) is None
    assert slot.active is a
    assert slot.swap(b) is a
    assert slot.active is b
    assert slot.swap(c) is b
    assert slot.active is c
    assert slot.swap(c) is c  # swapping in the active model again changes nothing
    assert slot.active is c


def test_slot_lets_a_replaced_model_go() -> None:
    # The slot must not keep the previous session alive (that doubled model memory): once nobody
    # holds the replaced model any more, it is freed.
    class Model:
        pass

    slot = ModelSlot()
    first = Model()
    gone = weakref.ref(first)
    slot.swap(cast(LoadedModel, first))
    held_by_a_request = slot.active
    slot.swap(cast(LoadedModel, Model()))
    del first
    gc.collect()
    assert gone() is not None, "a request still using the old model keeps it"
    del held_by_a_request
    gc.collect()
    assert gone() is None


def test_in_flight_request_keeps_its_model(
    three_models: tuple[LoadedModel, LoadedModel, LoadedModel],
) -> None:
    a, b, _ = three_models
    slot = ModelSlot()
    slot.swap(a)
    held = slot.active
    slot.swap(b)
    assert held is a
    assert held.infer({"input": np.zeros((1, 64), np.float32)})["probabilities"].shape == (1, 10)


def test_concurrent_swaps_lose_no_model() -> None:
    # Every model swapped in is handed back exactly once as someone's "previous", except the one
    # left active: a swap that is not atomic would hand the same previous to two callers.
    slot = ModelSlot()
    initial = cast(LoadedModel, object())
    slot.swap(initial)
    per_thread = [[cast(LoadedModel, object()) for _ in range(300)] for _ in range(4)]
    returned: list[list[LoadedModel | None]] = [[] for _ in per_thread]

    def worker(i: int) -> None:
        returned[i].extend(slot.swap(m) for m in per_thread[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(per_thread))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed_back = [id(m) for r in returned for m in r]
    swapped_in = [id(initial)] + [id(m) for ms in per_thread for m in ms]
    assert slot.active is not None
    swapped_in.remove(id(slot.active))
    assert sorted(handed_back) == sorted(swapped_in)
