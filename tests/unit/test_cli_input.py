"""fleetctl refuses bad flag combinations itself, before uploading anything (no controller needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from controller.cli.main import app


def _files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not checked before the flags are")
    eval_data = tmp_path / "e.npz"
    np.savez(eval_data, input=np.zeros((2, 4), np.float32))
    return model, eval_data


def test_eval_data_without_a_precision_to_build_is_refused(tmp_path: Path) -> None:
    model, eval_data = _files(tmp_path)
    # An unreachable controller address: reaching it would fail differently (exit 1, unavailable).
    args = ["models", "import", str(model), "--name", "m", "--eval-data", str(eval_data)]
    result = CliRunner().invoke(app, [*args, "--controller", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "--eval-data is only used with --precisions" in result.output


def test_precisions_without_eval_data_are_refused(tmp_path: Path) -> None:
    model, _ = _files(tmp_path)
    args = ["models", "import", str(model), "--name", "m", "--precisions", "fp32,int8"]
    result = CliRunner().invoke(app, [*args, "--controller", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "needs --eval-data" in result.output


def test_bad_duration_is_refused_with_its_text() -> None:
    result = CliRunner().invoke(app, ["token", "create", "--ttl", "soon", "--controller", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "invalid duration 'soon'" in result.output
