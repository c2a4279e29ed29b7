"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.toolchain.digits import DigitsArtifacts, build_digits_model
from simulator.broker import Mosquitto
from simulator.broker import available as mosquitto_available


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


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto 2 on a free loopback port (never the machine's own on 1883), with a temporary
    config and persistence on; ``stop``/``kill``/``restart`` it at will. Always stopped afterwards."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
        assert not broker.running, "the test broker outlived its test"
