"""JSON Schema of the policy files, generated from the models, for editors.

One schema for any policy document: ``oneOf`` the kinds, told apart by ``kind``. It is committed as
``policies/schema.json`` (``fleetctl validate --write-schema policies/schema.json``) and a test fails
when it drifts from the models. Editors with yaml-language-server pick it up from a modeline such as
``# yaml-language-server: $schema=./schema.json``. The schema checks shape, types and ranges; checks
across fields and documents are ``fleetctl validate``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from controller.policy.models import API_VERSION, ComputePool, DeviceGroup, HardwareClass, ModelDeployment

_DOCUMENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[DeviceGroup | ModelDeployment | ComputePool | HardwareClass, Field(discriminator="kind")]
)


def _tidy(node: Any) -> None:
    """Drop the titles pydantic derives from property names ("Maxms": the name says it better) and
    join descriptions wrapped across docstring lines."""
    if isinstance(node, dict):
        for prop in (node.get("properties") or {}).values():
            if isinstance(prop, dict):
                prop.pop("title", None)
        if isinstance(node.get("description"), str):
            node["description"] = " ".join(node["description"].split())
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for value in node:
            _tidy(value)


def policy_json_schema() -> dict[str, Any]:
    schema = _DOCUMENT.json_schema(by_alias=True, mode="validation")
    _tidy(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://{API_VERSION}/policy.schema.json",
        "title": "edgefleet policy document",
        "description": (
            f"One YAML document of an edgefleet policy file (apiVersion {API_VERSION}). Generated from "
            "controller/policy/models.py: do not edit; run fleetctl validate --write-schema."
        ),
        **schema,
    }


def policy_schema_text() -> str:
    """The schema as committed: stable key order, two-space indent, final newline."""
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_policy_schema(path: Path) -> None:
    path.write_text(policy_schema_text(), encoding="utf-8")
