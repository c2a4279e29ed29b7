"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.toolchain.digits import DigitsArtifacts, build_digits_model


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    """The digits demo model, trained and exported once per test session (about 3 s)."""
    pytest.importorskip("sklearn", reason="needs the 'models' extra (scikit-learn, skl2onnx)")
    pytest.importorskip("skl2onnx", reason="needs the 'models' extra (scikit-learn, skl2onnx)")
    return build_digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def eval_npz(digits_model: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out digits rows named after the model's input, with their labels: the eval data an
    import with precisions needs."""
    with np.load(digits_model.test_path) as test:
        x, y = test["x"], test["y"]
    path = tmp_path_factory.mktemp("eval") / "digits_eval.npz"
    np.savez(path, input=x.astype(np.float32), labels=y.astype(np.int64))
    return path
