"""The committed examples in policies/ validate, their JSON Schema matches the models, and the README
documents every field. Runs in `make test`, so a policy file or model change that breaks them fails CI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from controller.policy import read_policies
from controller.policy.schema import policy_json_schema, policy_schema_text

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_every_example_policy_file_validates() -> None:
    result = read_policies([POLICIES])
    assert [str(e) for e in result.errors] == []
    files = sorted(p.name for p in POLICIES.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert sorted(Path(f).name for f in result.files) == files and len(files) >= 4
    ps = result.policy_set
    assert set(ps.kind_counts()) == {"ComputePool", "DeviceGroup", "HardwareClass", "ModelDeployment"}
    assert {d.spec.model for d in ps.model_deployments.values()} == {"minilm", "digits"}
    tiers = sorted(p.spec.tier for p in ps.compute_pools.values())
    assert tiers.count("edge") >= 2 and tiers.count("cloud") >= 1


def test_committed_schema_matches_the_models() -> None:
    committed = (POLICIES / "schema.json").read_text(encoding="utf-8")
    assert committed == policy_schema_text(), (
        "policies/schema.json is out of date: run fleetctl validate --write-schema policies/schema.json"
    )


def _properties(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        found |= set(node.get("properties") or {})
        for value in node.values():
            found |= _properties(value)
    elif isinstance(node, list):
        for value in node:
            found |= _properties(value)
    return found


def test_the_readme_documents_every_field() -> None:
    readme = (POLICIES / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([A-Za-z][A-Za-z0-9]*)`", readme))
    missing = sorted(_properties(policy_json_schema()) - documented)
    assert missing == [], f"policies/README.md does not describe {missing}"


def test_schema_is_one_of_the_kinds_by_kind() -> None:
    schema = json.loads(policy_schema_text())
    assert schema["discriminator"]["propertyName"] == "kind"
    assert sorted(schema["discriminator"]["mapping"]) == [
        "ComputePool",
        "DeviceGroup",
        "HardwareClass",
        "ModelDeployment",
    ]
    spec = schema["$defs"]["ComputePoolSpec"]
    assert spec["additionalProperties"] is False and "defaultLink" not in spec["required"]
