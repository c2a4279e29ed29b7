"""Which devices a policy is about: label selectors with Kubernetes semantics, and group and pool
membership built on them. Pure functions, so the planner can call them freely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from common.types import Device
from controller.policy.models import ComputePool, DeviceGroup, LabelSelector, LabelSelectorRequirement


def requirement_holds(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    """One ``matchExpressions`` condition, as Kubernetes evaluates it (NotIn holds for an unset label)."""
    if req.operator == "In":
        return req.key in labels and labels[req.key] in req.values
    if req.operator == "NotIn":
        return req.key not in labels or labels[req.key] not in req.values
    if req.operator == "Exists":
        return req.key in labels
    return req.key not in labels  # DoesNotExist


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy every matchLabels pair and every matchExpressions condition; an
    empty selector matches everything."""
    return all(labels.get(k) == v for k, v in selector.match_labels.items()) and all(
        requirement_holds(r, labels) for r in selector.match_expressions
    )


def in_group(group: DeviceGroup, device: Device) -> bool:
    hardware_class = group.spec.hardware_class
    if hardware_class is not None and device.hardware.hardware_class != hardware_class:
        return False
    return matches(group.spec.selector, device.hardware.labels)


def group_members(group: DeviceGroup, devices: Iterable[Device]) -> tuple[Device, ...]:
    """The devices of ``group`` (hardware class, if the group names one, and selector), in the order
    given."""
    return tuple(d for d in devices if in_group(group, d))


def pool_nodes(pool: ComputePool, devices: Iterable[Device]) -> tuple[Device, ...]:
    """The enrolled agents that serve ``pool`` (by selector or by id), in the order given. Their
    performance is taken from the pool's hardwareClass."""
    nodes = pool.spec.nodes
    if nodes.names is not None:
        wanted = set(nodes.names)
        return tuple(d for d in devices if d.id in wanted)
    assert nodes.selector is not None  # PoolNodes guarantees exactly one of the two
    selector = nodes.selector
    return tuple(d for d in devices if matches(selector, d.hardware.labels))


def can_reach(pool: ComputePool, device: Device) -> bool:
    """Whether ``device`` is a client of ``pool``: matched by its ``clients`` selector; a cloud pool
    without one serves every device."""
    clients = pool.spec.clients
    if clients is None:
        return pool.spec.tier == "cloud"
    return matches(clients.selector, device.hardware.labels)
