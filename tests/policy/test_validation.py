"""Policy validation: every problem is reported at once, each at its exact file, line, column and field
path. Expected lines are counted in the YAML texts written out in each test."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidArgument
from controller.policy import (
    ComputePoolSpec,
    PolicyErrors,
    PolicyKey,
    PolicySet,
    PoolNodes,
    check_references,
    load_policies,
    load_policy_texts,
    parse_memory_quantity,
    read_policies,
)
from controller.policy.models import DEFAULT_EDGE_LINK, PRECISIONS, Link
from tests.policy.helpers import (
    CLOUD_POOL,
    DEPLOYMENT,
    EDGE_POOL,
    GROUP,
    docs,
    error_lines,
    load,
    valid_files,
)

HEADER = "apiVersion: edgefleet.io/v1alpha1\n"


def test_valid_files_load_with_defaults_filled_in() -> None:
    result = load(valid_files())
    assert result.errors == ()
    ps = result.policy_set
    assert len(ps) == 4 and result.documents == 4
    dep = ps.model_deployments["minilm-eu"].spec
    assert dep.partitioning.enabled  # a partitioning block enables it unless it says otherwise
    assert dep.precisions.device == PRECISIONS
    assert (dep.memory_headroom, dep.request_rate, dep.priority) == (0.2, 1.0, 0)
    assert dep.objectives.min_accuracy == 0.99
    assert (dep.batching.max_batch_size, dep.batching.max_queue_delay_ms) == (1, 0.0)
    edge = ps.compute_pools["eu-edge"].spec
    assert edge.default_link == Link.model_validate(DEFAULT_EDGE_LINK)
    assert edge.cloud_link is not None and edge.utilization_cap == 0.7
    assert ps.compute_pools["gpus"].spec.cloud_link is None
    assert ps.locations[PolicyKey("ModelDeployment", "minilm-eu")].file == "deploy.yaml"


def test_deployment_without_partitioning_block_runs_whole_model_on_device() -> None:
    text = docs(GROUP, DEPLOYMENT.split("  partitioning:")[0])
    dep = load_policy_texts({"a.yaml": text}).model_deployments["minilm-eu"].spec
    assert not dep.partitioning.enabled and dep.partitioning.edge_pools == ()


def test_unknown_fields_are_errors_with_a_suggestion() -> None:
    text = (
        HEADER + "kind: ModelDeployment\n"  # 2
        "metadata: {name: m}\n"  # 3
        "spec:\n"  # 4
        "  model: minilm\n"  # 5
        "  group: eu-phones\n"  # 6
        "  objectives:\n"  # 7
        "    latency:\n"  # 8
        "      maxMS: 80\n"  # 9
        "  colour: blue\n"  # 10
    )
    assert error_lines({"g.yaml": GROUP, "m.yaml": text}) == [
        "m.yaml:8:5: spec.objectives.latency.maxMs: required field missing",
        "m.yaml:9:7: spec.objectives.latency.maxMS: unknown field (did you mean 'maxMs'?)",
        "m.yaml:10:3: spec.colour: unknown field (allowed: model, group, priority, objectives, precisions, "
        "partitioning, memoryHeadroom, requestRate, batching)",
    ]


def test_snake_case_field_names_are_not_accepted_from_files() -> None:
    text = GROUP.replace("hardwareClass:", "hardware_class:")
    assert error_lines({"g.yaml": text}) == [
        "g.yaml:6:3: spec.hardware_class: unknown field (did you mean 'hardwareClass'?)"
    ]


def test_every_error_of_every_file_is_reported_at_once_sorted_by_position() -> None:
    bad_deployment = (
        HEADER + "kind: ModelDeployment\n"  # 2
        "metadata:\n"  # 3
        "  name: m\n"  # 4
        "spec:\n"  # 5
        "  model: minilm\n"  # 6
        "  group: nowhere\n"  # 7
        "  objectives:\n"  # 8
        "    latency: {percentile: 100, maxMs: 0}\n"  # 9
        "    minAccuracy: 1.5\n"  # 10
        "  precisions:\n"  # 11
        "    device: [fp32, fp8]\n"  # 12
        "    edge: []\n"  # 13
        "  memoryHeadroom: 1\n"  # 14
        "  requestRate: 0\n"  # 15
        "  batching: {maxBatchSize: 2000, maxQueueDelayMs: -1}\n"  # 16
    )
    bad_pool = (
        HEADER + "kind: ComputePool\n"  # 2
        "metadata: {name: p}\n"  # 3
        "spec:\n"  # 4
        "  tier: fog\n"  # 5
        "  hardwareClass: edge-npu\n"  # 6
        "  nodes: {names: [a]}\n"  # 7
        "  slotsPerNode: 0\n"  # 8
        "  utilizationCap: 1.2\n"  # 9
    )
    assert error_lines({"deploy.yaml": bad_deployment, "pool.yaml": bad_pool}) == [
        "deploy.yaml:7:3: spec.group: no DeviceGroup 'nowhere' in the policy files (defined: none)",
        "deploy.yaml:9:15: spec.objectives.latency.percentile: must be at most 99.9 (got 100)",
        "deploy.yaml:9:32: spec.objectives.latency.maxMs: must be greater than 0 (got 0)",
        "deploy.yaml:10:5: spec.objectives.minAccuracy: must be at most 1 (got 1.5)",
        "deploy.yaml:12:20: spec.precisions.device[1]: must be 'fp32', 'fp16', 'int8' or 'int4' (got 'fp8')",
        "deploy.yaml:13:5: spec.precisions.edge: must not be empty",
        "deploy.yaml:14:3: spec.memoryHeadroom: must be less than 1 (got 1)",
        "deploy.yaml:15:3: spec.requestRate: must be greater than 0 (got 0)",
        "deploy.yaml:16:14: spec.batching.maxBatchSize: must be at most 1024 (got 2000)",
        "deploy.yaml:16:34: spec.batching.maxQueueDelayMs: must be at least 0 (got -1)",
        "pool.yaml:5:3: spec.tier: must be 'edge' or 'cloud' (got 'fog')",
        "pool.yaml:8:3: spec.slotsPerNode: must be at least 1 (got 0)",
        "pool.yaml:9:3: spec.utilizationCap: must be at most 1 (got 1.2)",
    ]


@pytest.mark.parametrize(
    ("latency", "message"),
    [
        (
            "{percentile: 49.9, maxMs: 10}",
            "spec.objectives.latency.percentile: must be at least 50 (got 49.9)",
        ),
        (
            "{percentile: 99.95, maxMs: 10}",
            "spec.objectives.latency.percentile: must be at most 99.9 (got 99.95)",
        ),
        ("{maxMs: -3}", "spec.objectives.latency.maxMs: must be greater than 0 (got -3)"),
    ],
)
def test_latency_objective_ranges(latency: str, message: str) -> None:
    text = DEPLOYMENT.replace(
        "    latency:\n      percentile: 95\n      maxMs: 80\n", f"    latency: {latency}\n"
    )
    assert [e.split(": ", 1)[1] for e in error_lines({**valid_files(), "deploy.yaml": text})] == [message]


@pytest.mark.parametrize(("value", "ok"), [("1", True), ("0.5", True), ("0", False), ("1.01", False)])
def test_min_accuracy_is_relative_to_fp32_in_zero_to_one(value: str, ok: bool) -> None:
    text = DEPLOYMENT.replace("      maxMs: 80\n", f"      maxMs: 80\n    minAccuracy: {value}\n")
    errors = error_lines({**valid_files(), "deploy.yaml": text})
    assert (errors == []) is ok
    if not ok:
        assert errors[0].startswith("deploy.yaml:12:5: spec.objectives.minAccuracy: must be")


def test_values_are_not_coerced() -> None:
    text = (
        HEADER + "kind: ModelDeployment\n"
        "metadata: {name: m}\n"
        "spec:\n"
        "  model: minilm\n"
        "  group: eu-phones\n"
        "  priority: 1.5\n"  # 7
        "  objectives:\n"
        "    latency: {maxMs: '80'}\n"  # 9
        "  partitioning: {enabled: 'yes', edgePools: [eu-edge]}\n"  # 10
        "  requestRate: true\n"  # 11
    )
    assert error_lines({**valid_files(), "deploy.yaml": text}) == [
        "deploy.yaml:7:3: spec.priority: must be an integer (got 1.5)",
        "deploy.yaml:9:15: spec.objectives.latency.maxMs: must be a number (got '80')",
        "deploy.yaml:10:18: spec.partitioning.enabled: must be true or false (got 'yes')",
        "deploy.yaml:11:3: spec.requestRate: must be a number (got true)",
    ]


def test_api_version_and_kind() -> None:
    text = docs(
        "apiVersion: v1\nkind: DeviceGroup\nmetadata: {name: a}\nspec: {}\n",  # 1-4
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\n",  # 6-8
        "metadata: {name: c}\n",  # 10
        "apiVersion: edgefleet.io/v1alpha1\nkind: [DeviceGroup]\n",  # 12-13
    )
    known = "ComputePool, DeviceGroup, HardwareClass, ModelDeployment"
    assert error_lines({"k.yaml": text}) == [
        "k.yaml:1:1: apiVersion: must be 'edgefleet.io/v1alpha1' (got 'v1')",
        "k.yaml:6:1: apiVersion: must be 'edgefleet.io/v1alpha1' (got 'v1')",
        f"k.yaml:7:1: kind: unknown kind 'Pod'; known kinds: {known}",
        "k.yaml:10:1: apiVersion: required field missing: apiVersion (edgefleet.io/v1alpha1)",
        f"k.yaml:10:1: kind: required field missing: the kind of document ({known})",
        f"k.yaml:13:1: kind: unknown kind a list; known kinds: {known}",
    ]


def test_missing_spec_is_reported_at_the_document() -> None:
    text = "# a comment\n" + HEADER + "kind: DeviceGroup\nmetadata: {name: a}\n"
    assert error_lines({"a.yaml": text}) == ["a.yaml:2:1: spec: required field missing"]


def test_duplicates_across_files_name_both_locations() -> None:
    second = docs(CLOUD_POOL, GROUP)  # the group's name: line 4 of the second document, line 14 of the file
    assert error_lines({**valid_files(), "more.yaml": second}) == [
        "more.yaml:4:3: metadata.name: duplicate ComputePool 'gpus': first defined at pools.yaml:21:3",
        "more.yaml:14:3: metadata.name: duplicate DeviceGroup 'eu-phones': first defined at group.yaml:4:3",
    ]


def test_same_name_in_different_kinds_is_fine() -> None:
    other = GROUP.replace("name: eu-phones", "name: gpus")
    assert error_lines({**valid_files(), "g2.yaml": other}) == []


def test_dangling_references_and_wrong_tiers() -> None:
    text = (
        DEPLOYMENT.replace("edgePools: [eu-edge]", "edgePools: [gpus, nope]")
        .replace("cloudPools: [gpus]", "cloudPools:\n      - eu-edge\n      - gpus")
        .replace("group: eu-phones", "group: us-phones")
    )
    assert error_lines({**valid_files(), "deploy.yaml": text}) == [
        "deploy.yaml:7:3: spec.group: no DeviceGroup 'us-phones' in the policy files (defined: eu-phones)",
        "deploy.yaml:13:17: spec.partitioning.edgePools[0]: ComputePool 'gpus' has tier cloud; "
        "edgePools lists edge pools",
        "deploy.yaml:13:23: spec.partitioning.edgePools[1]: no ComputePool 'nope' in the policy files "
        "(edge pools defined: eu-edge)",
        "deploy.yaml:15:9: spec.partitioning.cloudPools[0]: ComputePool 'eu-edge' has tier edge; "
        "cloudPools lists cloud pools",
    ]


def test_reference_to_an_invalid_document_is_not_reported_as_dangling() -> None:
    broken_group = GROUP.replace("  hardwareClass: phone-cpu\n", "  hardwareClass: Phone CPU\n")
    broken_pool = EDGE_POOL.replace("slotsPerNode: 2", "slotsPerNode: none")
    assert error_lines(
        {**valid_files(), "group.yaml": broken_group, "pools.yaml": docs(broken_pool, CLOUD_POOL)}
    ) == [
        "group.yaml:6:3: spec.hardwareClass: invalid hardware class 'Phone CPU': use a lowercase DNS label "
        "(1-63 letters, digits or '-')",
        "pools.yaml:16:3: spec.slotsPerNode: must be an integer (got 'none')",
    ]


def test_references_of_an_invalid_deployment_are_still_checked() -> None:
    text = DEPLOYMENT.replace("maxMs: 80", "maxMs: 0").replace("[eu-edge]", "[eu-edgee]")
    assert error_lines({**valid_files(), "deploy.yaml": text}) == [
        "deploy.yaml:11:7: spec.objectives.latency.maxMs: must be greater than 0 (got 0)",
        "deploy.yaml:13:17: spec.partitioning.edgePools[0]: no ComputePool 'eu-edgee' in the policy files "
        "(edge pools defined: eu-edge)",
    ]


def test_partitioning_enabled_without_any_pool_is_impossible() -> None:
    text = DEPLOYMENT.replace("    edgePools: [eu-edge]\n    cloudPools: [gpus]\n", "    enabled: true\n")
    errors = error_lines({**valid_files(), "deploy.yaml": text})
    assert errors == [
        "deploy.yaml:12:3: spec.partitioning: partitioning is enabled but names no edgePools or cloudPools: "
        "list the pools that may serve this model's offloaded segments, or set enabled: false"
    ]
    disabled = text.replace("enabled: true", "enabled: false")
    assert error_lines({**valid_files(), "deploy.yaml": disabled}) == []


def test_edge_pool_needs_clients_and_cloud_pool_has_no_cloud_link() -> None:
    edge = EDGE_POOL.split("  clients:")[0]
    cloud = CLOUD_POOL + "  cloudLink: {bandwidthMbps: 100, rttMs: 5}\n"  # file line 22
    assert error_lines({**valid_files(), "pools.yaml": docs(edge, cloud)}) == [
        "pools.yaml:5:1: spec.clients: an edge pool needs clients: a selector for the devices that can reach it",
        "pools.yaml:22:3: spec.cloudLink: cloudLink is the link from an edge pool to the cloud; a cloud pool "
        "has none",
    ]


def test_pool_nodes_by_selector_or_names_exactly_once() -> None:
    both = CLOUD_POOL.replace(
        "    names: [gpu-1]\n", "    names: [gpu-1]\n    selector: {matchLabels: {a: b}}\n"
    )
    neither = CLOUD_POOL.replace("  nodes:\n    names: [gpu-1]\n", "  nodes: {}\n")
    everyone = CLOUD_POOL.replace("    names: [gpu-1]\n", "    selector: {}\n")
    twice = CLOUD_POOL.replace("[gpu-1]", "[gpu-1, gpu-1]")
    assert error_lines({"p.yaml": both}) == [
        "p.yaml:8:3: spec.nodes: give either selector or names (exactly one)"
    ]
    assert error_lines({"p.yaml": neither}) == [
        "p.yaml:8:3: spec.nodes: give either selector or names (exactly one)"
    ]
    assert error_lines({"p.yaml": everyone}) == [
        "p.yaml:9:5: spec.nodes.selector: must not be empty: it would make every device a node of this pool"
    ]
    assert error_lines({"p.yaml": twice}) == ["p.yaml:9:5: spec.nodes.names: 'gpu-1' is listed twice"]


def test_selector_syntax() -> None:
    text = (
        HEADER + "kind: DeviceGroup\n"
        "metadata: {name: g}\n"
        "spec:\n"
        "  selector:\n"  # 5
        "    matchLabels: {'bad key!': x, region: 'not ok'}\n"  # 6
        "    matchExpressions:\n"  # 7
        "      - {key: a, operator: In}\n"  # 8
        "      - {key: b, operator: Exists, values: [x]}\n"  # 9
        "      - {key: c, operator: Matches, values: [x]}\n"  # 10
        "      - {key: d, operator: NotIn, values: [x, x]}\n"  # 11
        "      - {key: e/f/g, operator: Exists}\n"  # 12
    )
    assert error_lines({"g.yaml": text}) == [
        "g.yaml:6:19: spec.selector.matchLabels[\"bad key!\"]: invalid label key 'bad key!': use an optional "
        "DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
        "letter or digit",
        "g.yaml:6:34: spec.selector.matchLabels.region: invalid label value 'not ok': use at most 63 letters, "
        "digits, '-', '_' or '.', starting and ending with a letter or digit (or leave it empty)",
        "g.yaml:8:9: spec.selector.matchExpressions[0]: operator In needs at least one value",
        "g.yaml:9:9: spec.selector.matchExpressions[1]: operator Exists takes no values",
        "g.yaml:10:18: spec.selector.matchExpressions[2].operator: must be 'In', 'NotIn', 'Exists' or "
        "'DoesNotExist' (got 'Matches')",
        "g.yaml:11:9: spec.selector.matchExpressions[3]: 'x' is listed twice",
        "g.yaml:12:10: spec.selector.matchExpressions[4].key: invalid label key 'e/f/g': use an optional DNS "
        "prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
        "or digit",
    ]


HW_PHONE = """\
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata:
  name: phone-cpu
spec:
  precisions: [fp32, int8]
"""
HW_NPU = HW_PHONE.replace("phone-cpu", "edge-npu").replace("[fp32, int8]", "[fp16, int8]")


def test_allowed_precisions_outside_what_the_hardware_class_runs() -> None:
    text = DEPLOYMENT.replace(
        "  partitioning:",
        "  precisions:\n    device: [fp32, int4, fp16]\n    edge: [fp32, int8]\n  partitioning:",
    )
    files = {**valid_files(), "deploy.yaml": text, "hw.yaml": docs(HW_PHONE, HW_NPU)}
    assert error_lines(files) == [
        "deploy.yaml:13:5: spec.precisions.device: int4, fp16 are not run by hardware class 'phone-cpu' of "
        "DeviceGroup 'eu-phones' (HardwareClass phone-cpu runs fp32, int8)",
        "deploy.yaml:14:5: spec.precisions.edge: fp32 is not run by hardware class 'edge-npu' of ComputePool "
        "'eu-edge' (HardwareClass edge-npu runs fp16, int8)",
    ]
    # The default (all four) is narrowed by the planner, not an error; nor is a class the files do not define.
    assert error_lines({**valid_files(), "hw.yaml": docs(HW_PHONE, HW_NPU)}) == []
    assert error_lines({**valid_files(), "deploy.yaml": text}) == []


def test_hardware_class_documents() -> None:
    text = docs(
        "apiVersion: edgefleet.io/v1alpha1\nkind: HardwareClass\nmetadata: {name: Big_GPU}\nspec: {}\n",  # 1-4
        "apiVersion: edgefleet.io/v1alpha1\n"  # 6
        "kind: HardwareClass\n"
        "metadata: {name: phone-npu}\n"  # 8
        "spec:\n"  # 9
        "  precisions: [int8, fp16]\n"  # 10
        "  latencyScale: {int8: 0.5}\n"  # 11
        "  callOverheadMs: -1\n",  # 12
        "apiVersion: edgefleet.io/v1alpha1\n"  # 14
        "kind: HardwareClass\n"
        "metadata: {name: phone-cpu}\n"
        "spec:\n"  # 17
        "  precisions: [fp32]\n"  # 18
        "  latencyScale: {fp32: 2, int4: 1}\n"  # 19
        "  memoryBytes: 3.3Ki\n",  # 20
    )
    # Shape and ranges first: a document with one of those errors is not checked further.
    assert error_lines({"hw.yaml": text}) == [
        "hw.yaml:3:12: metadata.name: invalid hardware class 'Big_GPU': use a lowercase DNS label "
        "(1-63 letters, digits or '-')",
        "hw.yaml:12:3: spec.callOverheadMs: must be at least 0 (got -1)",
        "hw.yaml:20:3: spec.memoryBytes: '3.3Ki' is not a whole number of bytes",
    ]
    fixed = text.replace("callOverheadMs: -1", "callOverheadMs: 1").replace("Big_GPU", "big-gpu")
    fixed = fixed.replace("3.3Ki", "3Ki")
    why = "is not built in (phone-cpu, edge-npu, cloud-gpu), so there is nothing to fall back to"
    assert error_lines({"hw.yaml": fixed}) == [
        f"hw.yaml:4:1: spec.latencyScale: required: hardware class 'big-gpu' {why}",
        f"hw.yaml:4:1: spec.memoryBytes: required: hardware class 'big-gpu' {why}",
        f"hw.yaml:4:1: spec.precisions: required: hardware class 'big-gpu' {why}",
        f"hw.yaml:9:1: spec.memoryBytes: required: hardware class 'phone-npu' {why}",
        f"hw.yaml:11:3: spec.latencyScale: no scale for fp16: hardware class 'phone-npu' {why}",
        "hw.yaml:19:27: spec.latencyScale.int4: int4 is not in spec.precisions (fp32), so it has no latency",
    ]
    assert load({"hw.yaml": fixed}).policy_set.hardware_classes["phone-cpu"].spec.memory_bytes == 3072


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (2048, 2048),
        ("2048", 2048),
        ("4Gi", 4 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("2k", 2000),
        ("1G", 10**9),
        (" 8 Ki ", 8192),
    ],
)
def test_memory_quantities(text: int | str, expected: int) -> None:
    assert parse_memory_quantity(text) == expected


@pytest.mark.parametrize("text", ["4GB", "-1", "0", 0, "1.5", "Gi", True, 1.5, "0.0001Ki"])
def test_bad_memory_quantities(text: object) -> None:
    from pydantic_core import PydanticCustomError

    with pytest.raises(PydanticCustomError):
        parse_memory_quantity(text)


def test_yaml_syntax_errors_give_file_and_line_and_other_files_are_still_checked() -> None:
    broken = "apiVersion: edgefleet.io/v1alpha1\nkind: DeviceGroup\nmetadata: {name: [x}\n"
    dupkey = "apiVersion: edgefleet.io/v1alpha1\nkind: DeviceGroup\nkind: DeviceGroup\n"
    files = {**valid_files(), "broken.yaml": broken, "dup.yaml": dupkey}
    files["group.yaml"] = GROUP.replace("region: eu", "region: [eu]")
    errors = error_lines(files)
    assert errors[0].startswith("broken.yaml:3:20: YAML syntax error: ")
    assert errors[1:] == [
        'dup.yaml:3:1: YAML syntax error: found duplicate key "kind" with value "DeviceGroup" '
        '(original value: "DeviceGroup") (while constructing a mapping started at line 1)',
        "group.yaml:9:7: spec.selector.matchLabels.region: must be a string (got a list)",
    ]


def test_multi_document_files_and_empty_or_non_mapping_documents() -> None:
    text = "---\n" + docs(GROUP, EDGE_POOL, CLOUD_POOL) + "---\n---\n# only a comment\n---\n- a list\n"
    result = load({"all.yaml": text, "deploy.yaml": DEPLOYMENT})
    assert [str(e) for e in result.errors] == [
        "all.yaml:42:1: document 6 is not a mapping: a policy document has apiVersion, kind, metadata and spec"
    ]
    assert result.documents == 5 and len(result.policy_set) == 4


def test_names_are_checked() -> None:
    text = DEPLOYMENT.replace("model: minilm", "model: MiniLM").replace("name: minilm-eu", "name: -x")
    assert error_lines({**valid_files(), "deploy.yaml": text}) == [
        "deploy.yaml:4:3: metadata.name: invalid name '-x': use 1-128 lowercase letters, digits, '.', '_' or "
        "'-', starting and ending with a letter or digit",
        "deploy.yaml:6:3: spec.model: invalid name 'MiniLM': use 1-128 lowercase letters, digits, '.', '_' or "
        "'-', starting and ending with a letter or digit",
    ]


def test_load_policies_raises_every_error_as_one_invalid_argument(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DEPLOYMENT.replace("maxMs: 80", "maxMs: 0"))
    (tmp_path / "b.yaml").write_text(GROUP.replace("selector:", "selectr:"))
    with pytest.raises(PolicyErrors) as info:
        load_policies([tmp_path])
    assert isinstance(info.value, InvalidArgument) and info.value.code == "invalid_policy"
    assert [(Path(e.file).name, e.line, e.column, e.path) for e in info.value.errors] == [
        ("a.yaml", 11, 7, "spec.objectives.latency.maxMs"),
        ("a.yaml", 13, 17, "spec.partitioning.edgePools[0]"),
        ("a.yaml", 14, 18, "spec.partitioning.cloudPools[0]"),
        ("b.yaml", 7, 3, "spec.selectr"),
    ]
    assert str(info.value).splitlines()[0] == "4 errors in policy files:"
    assert str(info.value).splitlines()[1] == (
        f"{tmp_path / 'a.yaml'}:11:7: spec.objectives.latency.maxMs: must be greater than 0 (got 0)"
    )


def test_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.yaml").write_text(GROUP)
    (tmp_path / "sub" / "a.yml").write_text(docs(EDGE_POOL, CLOUD_POOL))
    (tmp_path / "sub" / "deeper" / "c.yaml").write_text(DEPLOYMENT)
    (tmp_path / ".hidden" / "x.yaml").write_text("not: [valid")
    (tmp_path / "README.md").write_text("# not a policy")
    (tmp_path / "schema.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    result = read_policies([tmp_path, tmp_path / "b.yaml", tmp_path / "missing.yaml", tmp_path / "empty"])
    assert [Path(f).relative_to(tmp_path).as_posix() for f in result.files] == [
        "b.yaml",
        "sub/a.yml",
        "sub/deeper/c.yaml",
    ]
    assert [str(e) for e in result.errors] == [
        f"{tmp_path / 'empty'}: no policy files (*.yaml, *.yml) in this directory",
        f"{tmp_path / 'missing.yaml'}: no such file or directory",
    ]
    assert len(result.policy_set) == 4


def test_check_references_against_controller_state() -> None:
    ps = load_policy_texts(valid_files())
    assert check_references(ps) == ()  # nothing to check against
    assert check_references(ps, known_models={"minilm"}, known_classes=()) == ()  # built-in classes
    tpu_pool = docs(EDGE_POOL.replace("edge-npu", "edge-tpu"), CLOUD_POOL)
    ps = load_policy_texts({**valid_files(), "pools.yaml": tpu_pool})
    assert [str(e) for e in check_references(ps, known_models={"digits"}, known_classes={"phone-npu"})] == [
        "deploy.yaml:6:3: spec.model: model 'minilm' is not in the controller (import it with fleetctl models "
        "import)",
        "pools.yaml:7:3: spec.hardwareClass: unknown hardware class 'edge-tpu': not built in, reported by no "
        "device and defined by no HardwareClass (known: cloud-gpu, edge-npu, phone-cpu, phone-npu)",
    ]
    assert check_references(ps, known_classes={"edge-tpu"}) == ()
    hw = (
        "apiVersion: edgefleet.io/v1alpha1\nkind: HardwareClass\nmetadata: {name: edge-tpu}\n"
        "spec: {precisions: [int8], memoryBytes: 8Gi, latencyScale: {int8: 0.2}}\n"
    )
    defined = load_policy_texts({**valid_files(), "pools.yaml": tpu_pool, "hw.yaml": hw})
    assert check_references(defined, known_classes=()) == ()


def test_documents_built_in_code_use_snake_case_names() -> None:
    spec = ComputePoolSpec(
        tier="cloud",
        hardware_class="cloud-gpu",
        nodes=PoolNodes(names=("gpu-1",)),
        slots_per_node=8,
    )
    assert spec.default_link.bandwidth_mbps == 20.0 and spec.cloud_link is None
    ps = load_policy_texts(valid_files())
    with pytest.raises(InvalidArgument, match="duplicate DeviceGroup 'eu-phones'"):
        PolicySet.of(*ps.documents(), ps.device_groups["eu-phones"])
