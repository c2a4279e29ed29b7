"""Train and export the demo/test model: an MLP on scikit-learn's bundled 8x8 digits.

The data ships with scikit-learn, so this needs no network. The exported ONNX model takes raw pixel
intensities (float32 0..16, shape [N, 64]) because the /16 scaling is part of the graph, and returns
plain tensors (``label`` int64 [N], ``probabilities`` float32 [N, 10]) rather than skl2onnx's
default ZipMap, which our tensor protocol could not carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
N_FEATURES = 64
N_CLASSES = 10
#: ai.onnx opset 17 / ai.onnx.ml 3: old enough for any onnxruntime >= 1.14, new enough for skl2onnx.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SEED = 0
SAMPLE_ROWS = 8


@dataclass(frozen=True, slots=True)
class DigitsArtifacts:
    model_path: Path  # digits.onnx
    test_path: Path  # digits_test.npz: x float32 [n, 64], y int64 [n] (held-out rows only)
    sample_path: Path  # digits_sample.npy: first SAMPLE_ROWS test rows, float32
    accuracy: float  # of the exported ONNX model (run by onnxruntime) on the held-out rows
    n_test: int


def build_digits_model(out_dir: Path) -> DigitsArtifacts:
    """Train, export and evaluate the digits model into ``out_dir`` (created if needed). Deterministic."""
    # Optional extra (``models``): imported here so importing this module never needs scikit-learn.
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # comes with scikit-learn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    x_all, y_all = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x_all.astype(np.float32),
        y_all.astype(np.int64),
        test_size=0.25,
        stratify=y_all,
        random_state=SEED,
    )

    # Fit the scaler on the fixed pixel range rather than the data, so it is exactly x/16 and an
    # always-zero border pixel in training cannot blow up when a test image has ink there.
    scaler = MinMaxScaler().fit(np.array([[0.0] * N_FEATURES, [16.0] * N_FEATURES], dtype=np.float32))
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), random_state=SEED, max_iter=300)
    # One BLAS thread: the matrices are tiny, and multithreaded OpenBLAS spinning against other
    # busy processes made training 5-10x slower on a loaded 2-core box.
    with threadpool_limits(limits=1):
        clf.fit(scaler.transform(x_train), y_train)
    pipeline = Pipeline([("scale", scaler), ("mlp", clf)])

    onnx_model = to_onnx(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options={id(clf): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    model_path = out_dir / "digits.onnx"
    model_path.write_bytes(onnx_model.SerializeToString())

    test_path = out_dir / "digits_test.npz"
    np.savez(test_path, x=x_test, y=y_test)
    sample_path = out_dir / "digits_sample.npy"
    np.save(sample_path, x_test[:SAMPLE_ROWS])

    accuracy = _onnx_accuracy(model_path, x_test, y_test)
    logger.info(
        "digits model: %d training iterations, test accuracy %.4f on %d rows, %d bytes at %s",
        clf.n_iter_,
        accuracy,
        len(y_test),
        model_path.stat().st_size,
        model_path,
    )
    return DigitsArtifacts(model_path, test_path, sample_path, accuracy, len(y_test))


def _onnx_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the exported file itself, so a bad export cannot hide behind sklearn's score."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (labels,) = session.run([LABEL_OUTPUT], {INPUT_NAME: x})
    return float(np.mean(labels == y))
