"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.toolchain.digits import DigitsArtifacts


@pytest.fixture(scope="session")
def eval_npz(digits_model: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out digits rows named after the model's input, with their labels: the eval data an
    import with precisions needs."""
    with np.load(digits_model.test_path) as test:
        x, y = test["x"], test["y"]
    path = tmp_path_factory.mktemp("eval") / "digits_eval.npz"
    np.savez(path, input=x.astype(np.float32), labels=y.astype(np.int64))
    return path
