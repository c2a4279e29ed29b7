"""Checks beyond one field's type and range: fields that must agree with each other, documents that
refer to each other, and (``check_references``) names only the controller's state can confirm.

Each check returns every problem it finds with the field path it is about, as KubeEdge's
componentconfig validation does (an error list, never a first-error-and-stop), so the loader can
report them all with their file positions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from common.types import KNOWN_HARDWARE_CLASSES
from controller.policy.errors import PolicyError
from controller.policy.models import (
    ComputePool,
    HardwareClass,
    ModelDeployment,
    PolicyDocument,
    Precision,
)
from controller.policy.policyset import Loc, PolicyKey, PolicySet, format_path


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem in one document, before it is given a file position."""

    loc: Loc
    message: str


def _names(names: Collection[str]) -> str:
    return ", ".join(sorted(names)) if names else "none"


# --- one document ------------------------------------------------------------------------------


def check_document(doc: PolicyDocument) -> list[Finding]:
    """Rules within one valid document that involve more than one field."""
    if isinstance(doc, ModelDeployment):
        return _check_deployment(doc)
    if isinstance(doc, ComputePool):
        return _check_pool(doc)
    if isinstance(doc, HardwareClass):
        return _check_hardware_class(doc)
    return []


def _check_deployment(doc: ModelDeployment) -> list[Finding]:
    p = doc.spec.partitioning
    if p.enabled and not p.edge_pools and not p.cloud_pools:
        return [
            Finding(
                ("spec", "partitioning"),
                "partitioning is enabled but names no edgePools or cloudPools: list the pools that may "
                "serve this model's offloaded segments, or set enabled: false",
            )
        ]
    return []


def _check_pool(doc: ComputePool) -> list[Finding]:
    spec = doc.spec
    out: list[Finding] = []
    if spec.tier == "edge" and spec.clients is None:
        out.append(
            Finding(
                ("spec", "clients"),
                "an edge pool needs clients: a selector for the devices that can reach it",
            )
        )
    if spec.tier == "cloud" and spec.cloud_link is not None:
        out.append(
            Finding(
                ("spec", "cloudLink"),
                "cloudLink is the link from an edge pool to the cloud; a cloud pool has none",
            )
        )
    return out


def _check_hardware_class(doc: HardwareClass) -> list[Finding]:
    spec = doc.spec
    out: list[Finding] = []
    if spec.precisions is not None and spec.latency_scale is not None:
        out += [
            Finding(
                ("spec", "latencyScale", p),
                f"{p} is not in spec.precisions ({', '.join(spec.precisions)}), so it has no latency",
            )
            for p in spec.latency_scale
            if p not in spec.precisions
        ]
    if doc.metadata.name not in KNOWN_HARDWARE_CLASSES:
        why = (
            f"hardware class {doc.metadata.name!r} is not built in "
            f"({', '.join(KNOWN_HARDWARE_CLASSES)}), so there is nothing to fall back to"
        )
        missing = [
            name
            for name, value in (
                ("precisions", spec.precisions),
                ("memoryBytes", spec.memory_bytes),
                ("latencyScale", spec.latency_scale),
            )
            if value is None
        ]
        out += [Finding(("spec", name), f"required: {why}") for name in missing]
        if spec.precisions is not None and spec.latency_scale is not None:
            lacking = [p for p in spec.precisions if p not in spec.latency_scale]
            if lacking:
                out.append(Finding(("spec", "latencyScale"), f"no scale for {', '.join(lacking)}: {why}"))
    return out


# --- documents referring to each other ---------------------------------------------------------


def _error(policy_set: PolicySet, key: PolicyKey, loc: Loc, message: str) -> PolicyError:
    where = policy_set.location(key)
    line, column = where.at(loc)
    return PolicyError(where.file, line, column, format_path(loc), message)


def check_consistency(
    policy_set: PolicySet, *, invalid: Mapping[PolicyKey, str | None] | None = None
) -> list[PolicyError]:
    """References between documents: a deployment's group and pools exist (pools of the right tier),
    and the precisions it allows are ones the hardware classes defined in the files run.

    ``invalid`` names documents that exist in the files but failed validation (with a ComputePool's
    tier where it could be read), so a reference to one is not reported as dangling on top of its own
    errors."""
    invalid = invalid or {}
    out: list[PolicyError] = []
    for name, dep in policy_set.model_deployments.items():
        key = PolicyKey("ModelDeployment", name)
        out += [_error(policy_set, key, f.loc, f.message) for f in _deployment_refs(policy_set, dep, invalid)]
    return out


def deployment_references(
    ps: PolicySet, spec: Mapping[str, Any], invalid: Mapping[PolicyKey, str | None]
) -> list[Finding]:
    """A deployment's group and pools exist, pools of the tier they are listed under. ``spec`` is the
    deployment's spec as YAML data (camelCase), so this also runs on a deployment that failed
    validation: a dangling reference is reported alongside its other errors, not after they are
    fixed. Values of the wrong type are skipped (validation reports them)."""
    out: list[Finding] = []
    group = spec.get("group")
    if (
        isinstance(group, str)
        and group not in ps.device_groups
        and PolicyKey("DeviceGroup", group) not in invalid
    ):
        out.append(
            Finding(
                ("spec", "group"),
                f"no DeviceGroup {group!r} in the policy files (defined: {_names(ps.device_groups)})",
            )
        )
    partitioning = spec.get("partitioning")
    if not isinstance(partitioning, Mapping):
        return out
    for tier, field_name in (("edge", "edgePools"), ("cloud", "cloudPools")):
        pools = partitioning.get(field_name)
        if not isinstance(pools, list | tuple):
            continue
        for i, pool_name in enumerate(pools):
            if not isinstance(pool_name, str):
                continue
            loc: Loc = ("spec", "partitioning", field_name, i)
            pool = ps.compute_pools.get(pool_name)
            pool_key = PolicyKey("ComputePool", pool_name)
            actual = pool.spec.tier if pool is not None else invalid.get(pool_key)
            if pool is None and pool_key not in invalid:
                same_tier = [n for n, p in ps.compute_pools.items() if p.spec.tier == tier]
                out.append(
                    Finding(
                        loc,
                        f"no ComputePool {pool_name!r} in the policy files "
                        f"({tier} pools defined: {_names(same_tier)})",
                    )
                )
            elif actual is not None and actual != tier:
                out.append(
                    Finding(
                        loc, f"ComputePool {pool_name!r} has tier {actual}; {field_name} lists {tier} pools"
                    )
                )
    return out


def _deployment_refs(
    ps: PolicySet, dep: ModelDeployment, invalid: Mapping[PolicyKey, str | None]
) -> list[Finding]:
    spec = dep.spec
    out = deployment_references(ps, spec.model_dump(by_alias=True), invalid)
    # Precisions the hardware would not run, for lists the file gives explicitly (the default, all
    # four, is narrowed to what the hardware runs by the planner).
    explicit = spec.precisions.model_fields_set if "precisions" in spec.model_fields_set else set()
    group = ps.device_groups.get(spec.group)
    if "device" in explicit and group is not None and group.spec.hardware_class is not None:
        out += _unsupported(
            ps,
            ("spec", "precisions", "device"),
            spec.precisions.device,
            group.spec.hardware_class,
            f"DeviceGroup {spec.group!r}",
        )
    for tier, allowed, pools in (
        ("edge", spec.precisions.edge, spec.partitioning.edge_pools),
        ("cloud", spec.precisions.cloud, spec.partitioning.cloud_pools),
    ):
        if tier not in explicit:
            continue
        for pool_name in pools:
            pool = ps.compute_pools.get(pool_name)
            if pool is not None and pool.spec.tier == tier:
                out += _unsupported(
                    ps,
                    ("spec", "precisions", tier),
                    allowed,
                    pool.spec.hardware_class,
                    f"ComputePool {pool_name!r}",
                )
    return out


def _unsupported(
    ps: PolicySet, loc: Loc, allowed: tuple[Precision, ...], hardware_class: str, used_by: str
) -> list[Finding]:
    hw = ps.hardware_classes.get(hardware_class)
    if hw is None or hw.spec.precisions is None:
        return []
    runs = hw.spec.precisions
    bad = [p for p in allowed if p not in runs]
    if not bad:
        return []
    return [
        Finding(
            loc,
            f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not run by hardware class "
            f"{hardware_class!r} of {used_by} (HardwareClass {hardware_class} runs {', '.join(runs)})",
        )
    ]


# --- names only the controller knows -----------------------------------------------------------


def check_references(
    policy_set: PolicySet,
    *,
    known_models: Collection[str] | None = None,
    known_classes: Collection[str] | None = None,
) -> tuple[PolicyError, ...]:
    """Problems only the controller's state reveals, at the positions in the files: deployments of
    models it does not have (``known_models``), and hardware classes that are neither built in, nor
    in ``known_classes`` (e.g. reported by enrolled devices), nor defined by a HardwareClass document.
    ``None`` skips that check. The apply path calls this before it changes anything."""
    out: list[PolicyError] = []
    if known_models is not None:
        models = set(known_models)
        for name, dep in policy_set.model_deployments.items():
            if dep.spec.model not in models:
                out.append(
                    _error(
                        policy_set,
                        PolicyKey("ModelDeployment", name),
                        ("spec", "model"),
                        f"model {dep.spec.model!r} is not in the controller "
                        "(import it with fleetctl models import)",
                    )
                )
    if known_classes is not None:
        classes = set(known_classes) | set(KNOWN_HARDWARE_CLASSES) | set(policy_set.hardware_classes)
        uses: list[tuple[PolicyKey, str | None]] = [
            (PolicyKey("DeviceGroup", n), g.spec.hardware_class) for n, g in policy_set.device_groups.items()
        ] + [
            (PolicyKey("ComputePool", n), p.spec.hardware_class) for n, p in policy_set.compute_pools.items()
        ]
        for key, hardware_class in uses:
            if hardware_class is not None and hardware_class not in classes:
                out.append(
                    _error(
                        policy_set,
                        key,
                        ("spec", "hardwareClass"),
                        f"unknown hardware class {hardware_class!r}: not built in, reported by no device "
                        f"and defined by no HardwareClass (known: {_names(classes)})",
                    )
                )
    return tuple(sorted(out))
