"""Small ONNX models built with onnx.helper for the toolchain tests (no torch, no network).

- ``gemm_model``: one Gemm (transB=1), the layout exporters use for linear layers, to check that int4
  rewrites Gemm into MatMul+Add before quantizing.
- ``relu_model``: no weights at all, so int4 has nothing to quantize.
- ``ffn_block``: a transformer's feed-forward half (MatMul -> exact Gelu as exporters write it ->
  MatMul -> residual Add -> LayerNormalization) on [N, seq, hidden] activations: something
  onnxruntime's transformer optimizer fuses (BiasGelu) with a LayerNormalization after a residual.
- ``digits_cnn``: a conv net on the 8x8 digits, for static QDQ: the conv filters are fixed random
  features and only the linear head is trained (scikit-learn logistic regression), which takes well
  under a second and still gives a real accuracy to measure variants against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8  # readable by any onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def gemm_model(path: Path, features: int = 64, classes: int = 10) -> Path:
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.2, size=(classes, features)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(classes,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path)


def relu_model(path: Path, features: int = 64) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
    )
    return _save(graph, path)


def ffn_block(path: Path, seq: int = 8, hidden: int = 32, inner: int = 64) -> Path:
    """x [N, seq, hidden] -> LayerNorm(x + (Gelu(x W1 + b1) W2 + b2)) -> y [N, seq, hidden]."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, size=(hidden, inner)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, size=(inner,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.2, size=(inner, hidden)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, size=(hidden,)).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, size=(hidden,)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, size=(hidden,)).astype(np.float32), "beta"),
        numpy_helper.from_array(np.array(np.sqrt(2.0), dtype=np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        # Gelu(v) = v * 0.5 * (1 + erf(v / sqrt 2)), the way torch exports nn.GELU()
        helper.make_node("Div", ["hb", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["hb", "erf1"], ["prod"]),
        helper.make_node("Mul", ["prod", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["ob"]),
        helper.make_node("Add", ["ob", "x"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, hidden])],
        inits,
    )
    return _save(graph, path)


def _cnn_graph(
    conv_w: np.ndarray, conv_b: np.ndarray, head: tuple[np.ndarray, np.ndarray] | None
) -> onnx.GraphProto:
    """input [N, 64] (pixels 0..16) -> /16 -> [N,1,8,8] -> Conv 3x3 -> Relu -> MaxPool 2 -> Flatten
    -> (features [N, 128]) or (MatMul + Add -> Softmax -> probabilities [N, 10])."""
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "image_shape"], ["image"]),
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("MaxPool", ["act"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["features"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.full((64,), 1 / 16, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image_shape"),
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
    ]
    channels = conv_w.shape[0]
    output = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels * 16])
    if head is not None:
        nodes += [
            helper.make_node("MatMul", ["features", "head_w"], ["head"]),
            helper.make_node("Add", ["head", "head_b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ]
        inits += [numpy_helper.from_array(head[0], "head_w"), numpy_helper.from_array(head[1], "head_b")]
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", head[0].shape[1]])
    return helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [output],
        inits,
    )


def digits_cnn(path: Path, channels: int = 8) -> tuple[Path, float]:
    """Write the conv net to ``path``; returns (path, its accuracy on held-out digits)."""
    import onnxruntime as ort
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.25, stratify=y, random_state=0
    )
    rng = np.random.default_rng(0)
    conv_w = rng.normal(0, 0.5, size=(channels, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, size=(channels,)).astype(np.float32)

    def features(rows: np.ndarray) -> np.ndarray:
        model = helper.make_model(_cnn_graph(conv_w, conv_b, None), opset_imports=OPSET)
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"input": rows})[0])

    with threadpool_limits(limits=1):  # tiny problem; multithreaded BLAS only fights other processes
        clf = LogisticRegression(max_iter=500).fit(features(x_train), y_train)
    head = (clf.coef_.T.astype(np.float32), clf.intercept_.astype(np.float32))
    _save(_cnn_graph(conv_w, conv_b, head), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    accuracy = float(np.mean(np.argmax(session.run(None, {"input": x_test})[0], axis=1) == y_test))
    return path, accuracy
