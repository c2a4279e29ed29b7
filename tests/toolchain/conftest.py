"""Fixtures for the toolchain tests: eval files for the digits model and a fast measurement config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.toolchain.digits import DigitsArtifacts
from controller.toolchain.measure import MeasureConfig

#: Few timed runs: these tests check that latency is measured, not how fast the shared CI box is.
FAST = MeasureConfig(warmup=1, runs=5, min_runs=3, max_seconds=0.5)


@pytest.fixture(scope="session")
def digits_eval(digits_model: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out digits as eval data: ``input`` (float32 [n, 64]) and ``labels`` (int64 [n])."""
    test = np.load(digits_model.test_path)
    path = tmp_path_factory.mktemp("eval") / "digits_eval.npz"
    np.savez(path, input=test["x"], labels=test["y"])
    return path


@pytest.fixture(scope="session")
def digits_eval_unlabelled(digits_model: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    test = np.load(digits_model.test_path)
    path = tmp_path_factory.mktemp("eval") / "digits_eval_unlabelled.npz"
    np.savez(path, input=test["x"])
    return path


@pytest.fixture
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, to prove that nothing is written to the CWD."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
