"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import pytest

from controller.toolchain.digits import DigitsArtifacts, build_digits_model


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    """The digits demo model, trained and exported once per test session (about 3 s)."""
    pytest.importorskip("sklearn", reason="needs the 'models' extra (scikit-learn, skl2onnx)")
    pytest.importorskip("skl2onnx", reason="needs the 'models' extra (scikit-learn, skl2onnx)")
    return build_digits_model(tmp_path_factory.mktemp("digits"))
