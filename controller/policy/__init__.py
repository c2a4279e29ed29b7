"""Declarative policies kept in Git: what operators want, validated before anything is applied.

Four kinds (``apiVersion: edgefleet.io/v1alpha1``): ``DeviceGroup`` (devices by labels and hardware
class), ``ModelDeployment`` (a model on a group, with latency/accuracy objectives, allowed
precisions and offloading), ``ComputePool`` (edge nodes or cloud GPUs that accept offloaded
segments, with their capacity) and ``HardwareClass`` (performance overrides where no measured
profile exists).

``load_policies(paths)`` returns a frozen ``PolicySet`` or raises ``PolicyErrors`` carrying every
problem in every file, each with file, line, column and field path. ``PolicySet.digest()`` and
``diff_policy_sets`` tell whether and how two sets differ; ``check_references`` checks the names
only the controller's state can confirm (models, hardware classes). Nothing here does I/O beyond
reading the files it is given, so the planner can take a ``PolicySet`` as plain input.
"""

from controller.policy.checks import Finding, check_consistency, check_document, check_references
from controller.policy.diff import DocumentChange, FieldChange, PolicyDiff, diff_policy_sets
from controller.policy.errors import PolicyError, PolicyErrors
from controller.policy.loader import (
    PolicyLoad,
    load_policies,
    load_policy_texts,
    policy_files,
    read_policies,
    read_policy_texts,
)
from controller.policy.models import (
    API_VERSION,
    KINDS,
    PRECISIONS,
    Batching,
    ComputePool,
    ComputePoolSpec,
    DeviceGroup,
    DeviceGroupSpec,
    HardwareClass,
    HardwareClassSpec,
    LabelSelector,
    LabelSelectorRequirement,
    LatencyObjective,
    Link,
    Metadata,
    ModelDeployment,
    ModelDeploymentSpec,
    Objectives,
    Partitioning,
    PolicyDocument,
    PoolClients,
    PoolNodes,
    Precision,
    Precisions,
    Tier,
    parse_memory_quantity,
)
from controller.policy.policyset import DocumentLocation, PolicyKey, PolicySet
from controller.policy.schema import policy_json_schema, policy_schema_text, write_policy_schema
from controller.policy.selectors import can_reach, group_members, in_group, matches, pool_nodes

__all__ = [
    "API_VERSION",
    "KINDS",
    "PRECISIONS",
    "Batching",
    "ComputePool",
    "ComputePoolSpec",
    "DeviceGroup",
    "DeviceGroupSpec",
    "DocumentChange",
    "DocumentLocation",
    "FieldChange",
    "Finding",
    "HardwareClass",
    "HardwareClassSpec",
    "LabelSelector",
    "LabelSelectorRequirement",
    "LatencyObjective",
    "Link",
    "Metadata",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "Objectives",
    "Partitioning",
    "PolicyDiff",
    "PolicyDocument",
    "PolicyError",
    "PolicyErrors",
    "PolicyKey",
    "PolicyLoad",
    "PolicySet",
    "PoolClients",
    "PoolNodes",
    "Precision",
    "Precisions",
    "Tier",
    "can_reach",
    "check_consistency",
    "check_document",
    "check_references",
    "diff_policy_sets",
    "group_members",
    "in_group",
    "load_policies",
    "load_policy_texts",
    "matches",
    "parse_memory_quantity",
    "policy_files",
    "policy_json_schema",
    "policy_schema_text",
    "pool_nodes",
    "read_policies",
    "read_policy_texts",
    "write_policy_schema",
]
