"""fleetctl validate: offline, every error on its own line, exit 2 on any; JSON for scripts."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from controller.cli.main import app
from controller.policy.schema import policy_schema_text
from tests.policy.helpers import DEPLOYMENT, GROUP, valid_files

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_valid_examples() -> None:
    result = CliRunner().invoke(app, ["validate", "-f", str(POLICIES)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "12 documents OK (3 ComputePool, 3 DeviceGroup, 3 HardwareClass, 3 ModelDeployment) in 4 files; digest "
    )


def test_several_files_and_directories(tmp_path: Path) -> None:
    d = _write(tmp_path, valid_files())
    result = CliRunner().invoke(app, ["validate", "-f", str(d / "group.yaml"), "-f", str(d)])
    assert result.exit_code == 0, result.output
    assert "4 documents OK (2 ComputePool, 1 DeviceGroup, 1 ModelDeployment) in 3 files" in result.output


def test_every_error_on_its_own_line_and_exit_2(tmp_path: Path) -> None:
    d = _write(
        tmp_path,
        {
            **valid_files(),
            "deploy.yaml": DEPLOYMENT.replace("maxMs: 80", "maxMs: 0").replace(
                "cloudPools: [gpus]", "cloudPools: [x]"
            ),
            "group.yaml": GROUP.replace("selector:", "selectr:"),
        },
    )
    result = CliRunner().invoke(app, ["validate", "-f", str(d)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines == [
        f"{d / 'deploy.yaml'}:11:7: spec.objectives.latency.maxMs: must be greater than 0 (got 0)",
        f"{d / 'deploy.yaml'}:14:18: spec.partitioning.cloudPools[0]: no ComputePool 'x' in the policy files "
        "(cloud pools defined: gpus)",
        f"{d / 'group.yaml'}:7:3: spec.selectr: unknown field (did you mean 'selector'?)",
        "3 errors; nothing is valid until all are fixed",
    ]


def test_json_output(tmp_path: Path) -> None:
    d = _write(tmp_path, {**valid_files(), "group.yaml": GROUP.replace("phone-cpu", "Phone")})
    result = CliRunner().invoke(app, ["validate", "-f", str(d), "-o", "json"])
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["documents"] == 4
    assert doc["errors"] == [
        {
            "file": str(d / "group.yaml"),
            "line": 6,
            "column": 3,
            "path": "spec.hardwareClass",
            "message": "invalid hardware class 'Phone': use a lowercase DNS label (1-63 letters, digits or '-')",
        }
    ]
    ok = CliRunner().invoke(app, ["validate", "-f", str(POLICIES), "-o", "json"])
    assert ok.exit_code == 0
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["errors"] == [] and len(doc["digest"]) == 64
    assert doc["kinds"] == {"ComputePool": 3, "DeviceGroup": 3, "HardwareClass": 3, "ModelDeployment": 3}


def test_missing_path_and_no_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "-f", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: no such file or directory" in result.output
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2 and "name policy files or directories with -f" in result.output


def test_write_schema(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    result = CliRunner().invoke(app, ["validate", "--write-schema", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == policy_schema_text()
