"""Canonical form, digest and diff: what a policy set means, independent of how it is written."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from controller.policy import FieldChange, PolicyKey, diff_policy_sets, load_policies, load_policy_texts
from tests.policy.helpers import CLOUD_POOL, DEPLOYMENT, EDGE_POOL, GROUP, docs, valid_files

# The same policies as helpers.valid_files(): other files, key order, flow style, comments, quoting,
# list order where it means nothing, and defaults written out.
REWRITTEN = {
    "everything.yml": """\
# all in one file
kind: ModelDeployment
apiVersion: "edgefleet.io/v1alpha1"
spec:
  partitioning: {cloudPools: [gpus], edgePools: [eu-edge], enabled: true}
  objectives: {latency: {maxMs: 80.0, percentile: 95}, minAccuracy: 0.99}
  group: eu-phones
  model: 'minilm'
  memoryHeadroom: 0.2
  precisions: {device: [int4, int8, fp16, fp32]}
metadata: {name: minilm-eu, labels: {}}
---
kind: ComputePool
apiVersion: edgefleet.io/v1alpha1
metadata: {name: gpus}
spec: {nodes: {names: [gpu-1]}, tier: cloud, hardwareClass: cloud-gpu, utilizationCap: 0.7}
---
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata: {name: eu-edge}
spec:
  slotsPerNode: 2
  clients: {selector: {matchLabels: {region: eu}}}
  nodes: {selector: {matchLabels: {pool: eu-edge}, matchExpressions: []}}
  hardwareClass: edge-npu
  tier: edge
  defaultLink: {bandwidthMbps: 50, rttMs: 10}
---
apiVersion: edgefleet.io/v1alpha1
kind: DeviceGroup
metadata: {name: eu-phones}
spec: {selector: {matchLabels: {region: eu}}, hardwareClass: phone-cpu}
""",
}


def test_the_same_policies_written_differently_have_the_same_digest() -> None:
    a, b = load_policy_texts(valid_files()), load_policy_texts(REWRITTEN)
    assert a.canonical_json() == b.canonical_json()
    assert a.digest() == b.digest()
    assert diff_policy_sets(a, b).is_empty


def test_the_canonical_form_has_every_default_and_is_sorted() -> None:
    ps = load_policy_texts(valid_files())
    canonical = json.loads(ps.canonical_json())
    assert [(d["kind"], d["metadata"]["name"]) for d in canonical["documents"]] == [
        ("ComputePool", "eu-edge"),
        ("ComputePool", "gpus"),
        ("DeviceGroup", "eu-phones"),
        ("ModelDeployment", "minilm-eu"),
    ]
    spec = canonical["documents"][3]["spec"]
    assert spec["memoryHeadroom"] == 0.2 and spec["requestRate"] == 1 and spec["priority"] == 0
    assert spec["precisions"]["device"] == ["fp16", "fp32", "int4", "int8"]
    assert canonical["documents"][0]["spec"]["cloudLink"] == {"bandwidthMbps": 500, "rttMs": 20}
    assert len(ps.digest()) == 64


def test_a_changed_field_changes_the_digest_and_the_diff_names_it() -> None:
    old = load_policy_texts(valid_files())
    changed = DEPLOYMENT.replace("maxMs: 80", "maxMs: 60").replace(
        "  partitioning:", "  precisions: {edge: [int8]}\n  partitioning:"
    )
    new = load_policy_texts({**valid_files(), "deploy.yaml": changed})
    assert old.digest() != new.digest()
    diff = diff_policy_sets(old, new)
    assert diff.added == diff.removed == ()
    assert [c.key for c in diff.changed] == [PolicyKey("ModelDeployment", "minilm-eu")]
    assert diff.changed[0].fields == (
        FieldChange("spec.objectives.latency.maxMs", 80, 60),
        FieldChange("spec.precisions.edge", ["fp16", "fp32", "int4", "int8"], ["int8"]),
    )
    assert diff.lines() == [
        "~ ModelDeployment/minilm-eu",
        "    spec.objectives.latency.maxMs: 80 -> 60",
        "    spec.precisions.edge: ['fp16', 'fp32', 'int4', 'int8'] -> ['int8']",
    ]


def test_added_removed_and_label_changes() -> None:
    old = load_policy_texts(valid_files())
    group = GROUP.replace("  name: eu-phones\n", "  name: eu-phones\n  labels: {team: mobile}\n")
    us = GROUP.replace("eu-phones", "us-phones").replace("region: eu", "region: us")
    new = load_policy_texts({"group.yaml": docs(group, us), "pools.yaml": docs(EDGE_POOL), "d.yaml": ""})
    diff = diff_policy_sets(old, new)
    assert diff.added == (PolicyKey("DeviceGroup", "us-phones"),)
    assert diff.removed == (PolicyKey("ComputePool", "gpus"), PolicyKey("ModelDeployment", "minilm-eu"))
    assert [(c.key.name, c.fields) for c in diff.changed] == [
        ("eu-phones", (FieldChange("metadata.labels.team", None, "mobile"),))
    ]
    doc = diff.to_doc()
    assert doc["added"] == [{"kind": "DeviceGroup", "name": "us-phones"}]
    assert doc["changed"][0]["fields"] == [{"path": "metadata.labels.team", "old": None, "new": "mobile"}]
    assert "+ DeviceGroup/us-phones" in diff.lines() and "- ComputePool/gpus" in diff.lines()


def test_label_keys_with_dots_and_slashes_are_quoted_in_paths() -> None:
    old = load_policy_texts(valid_files())
    group = GROUP.replace("region: eu", "edgefleet.io/region: eu")
    new = load_policy_texts({**valid_files(), "group.yaml": group})
    fields = diff_policy_sets(old, new).changed[0].fields
    assert [(f.path, f.old, f.new) for f in fields] == [
        ("spec.selector.matchLabels.region", "eu", None),
        ('spec.selector.matchLabels["edgefleet.io/region"]', None, "eu"),
    ]
    assert diff_policy_sets(new, new).is_empty and diff_policy_sets(new, new).lines() == []


def test_a_default_written_out_is_no_change() -> None:
    explicit = CLOUD_POOL + "  defaultLink: {bandwidthMbps: 20, rttMs: 60}\n"
    a = load_policy_texts(valid_files())
    b = load_policy_texts({**valid_files(), "pools.yaml": docs(EDGE_POOL, explicit)})
    assert a.digest() == b.digest()
    slower = explicit.replace("rttMs: 60", "rttMs: 61")
    c = load_policy_texts({**valid_files(), "pools.yaml": docs(EDGE_POOL, slower)})
    assert [(f.path, f.old, f.new) for f in diff_policy_sets(a, c).changed[0].fields] == [
        ("spec.defaultLink.rttMs", 60, 61)
    ]


UNORDERED = {
    "device",
    "edge",
    "cloud",
    "edgePools",
    "cloudPools",
    "names",
    "values",
    "precisions",
    "matchExpressions",
}
POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _shuffled(node: Any, rnd: random.Random, key: str = "") -> Any:
    if isinstance(node, dict):
        items = [(k, _shuffled(v, rnd, k)) for k, v in node.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(node, list):
        items = [_shuffled(v, rnd) for v in node]
        if key in UNORDERED:
            rnd.shuffle(items)
        return items
    return node


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.booleans())
def test_digest_ignores_key_order_unordered_lists_and_layout(rnd: random.Random, flow: bool) -> None:
    original = load_policies([POLICIES])
    yaml = YAML(typ="safe")
    documents = [d for f in sorted(POLICIES.glob("*.yaml")) for d in yaml.load_all(f.read_text()) if d]
    rnd.shuffle(documents)
    out = YAML()
    out.default_flow_style = flow
    texts: dict[str, str] = {}
    for i, doc in enumerate(documents):
        buf = io.StringIO()
        out.dump(_shuffled(doc, rnd), buf)
        texts.setdefault(f"part{i % 3}.yaml", "")
        texts[f"part{i % 3}.yaml"] += "---\n" + buf.getvalue()
    rewritten = load_policy_texts(texts)
    assert rewritten.digest() == original.digest()
    assert diff_policy_sets(original, rewritten).is_empty
