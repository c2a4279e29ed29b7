"""The fleet planner: per device, where the model is cut and at which precision each part runs.

``plan(PlanInput) -> Plan`` is pure (no I/O, no clock) and deterministic; ``controller.planner.inputs``
builds its input from policies and the controller's store. See ``plan`` for the steps, ``configs``
for the latency/accuracy/capacity model and ``catalog`` for hardware classes nobody measured.
"""

from controller.planner.plan import plan
from controller.planner.types import (
    Binding,
    ConfigKey,
    DeploymentInput,
    DeviceInput,
    DevicePlan,
    HardwareClassSpec,
    Link,
    Pattern,
    Plan,
    PlanInput,
    PlannerModel,
    PoolInput,
    Tier,
    VariantInfo,
    Weights,
)

__all__ = [
    "Binding",
    "ConfigKey",
    "DeploymentInput",
    "DeviceInput",
    "DevicePlan",
    "HardwareClassSpec",
    "Link",
    "Pattern",
    "Plan",
    "PlanInput",
    "PlannerModel",
    "PoolInput",
    "Tier",
    "VariantInfo",
    "Weights",
    "plan",
]
