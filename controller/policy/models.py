"""The policy kinds as pydantic models: the shape, types and ranges of every field.

One model per kind (``DeviceGroup``, ``ModelDeployment``, ``ComputePool``, ``HardwareClass``), each a
document with ``apiVersion``, ``kind``, ``metadata`` and ``spec``. Fields are snake_case in Python
and camelCase in YAML (an alias generator, so Python callers construct them by snake_case name);
the loader validates by alias only, so a file must spell every field the way the schema does.

Models are frozen and keep lists in the order the file gave them (error positions refer to that
order); ``PolicySet.canonical`` sorts the lists whose order carries no meaning. Checks that need
several fields, or several documents, are in ``controller.policy.checks``, where each error can name
the exact field it is about. Attribute docstrings become the JSON Schema's descriptions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from common.types import HARDWARE_CLASS_RE, NAME_RE

API_VERSION = "edgefleet.io/v1alpha1"

Precision = Literal["fp32", "fp16", "int8", "int4"]
#: Every precision, most accurate first (the order canonical forms and messages use).
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8", "int4")
Tier = Literal["edge", "cloud"]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]

_T = TypeVar("_T")

# --- field types -------------------------------------------------------------------------------

# Kubernetes label syntax: an optional DNS-subdomain prefix and '/', then a name of at most 63
# characters; values are empty or a name. Devices' labels come from agents and from KubeEdge nodes,
# so selectors accept exactly what those may carry.
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "invalid_name",
            "invalid name {value}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            {"value": repr(value)},
        )
    return value


def _check_hardware_class(value: str) -> str:
    if not HARDWARE_CLASS_RE.fullmatch(value):
        raise PydanticCustomError(
            "invalid_hardware_class",
            "invalid hardware class {value}: use a lowercase DNS label (1-63 letters, digits or '-')",
            {"value": repr(value)},
        )
    return value


def _check_label_key(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(prefix))) or (
        len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name)
    ):
        raise PydanticCustomError(
            "invalid_label_key",
            "invalid label key {value}: use an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit",
            {"value": repr(value)},
        )
    return value


def _check_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME_RE.fullmatch(value)):
        raise PydanticCustomError(
            "invalid_label_value",
            "invalid label value {value}: use at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (or leave it empty)",
            {"value": repr(value)},
        )
    return value


def _unique(items: Sequence[_T]) -> Sequence[_T]:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            raise PydanticCustomError("duplicate_item", "{item} is listed twice", {"item": repr(item)})
        seen.add(item)
    return items


_QUANTITY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i|[kMGTPE])?\s*$")
_QUANTITY_FACTORS: dict[str | None, int] = {
    None: 1,
    **{suffix: 1024 ** (i + 1) for i, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{suffix: 1000 ** (i + 1) for i, suffix in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def parse_memory_quantity(value: object) -> int:
    """Bytes from an int or a Kubernetes-style quantity (``4Gi``, ``512Mi``, ``1.5G``, ``2048``).

    Memory sizes in policy files are written the way Kubernetes writes them so operators can copy them
    from node descriptions; the result must be a whole, positive number of bytes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError(
            "memory_quantity", "must be a number of bytes or a quantity such as '4Gi' or '512Mi'"
        )
    if isinstance(value, int):
        number = value
    else:
        m = _QUANTITY_RE.fullmatch(value)
        if m is None:
            raise PydanticCustomError(
                "memory_quantity",
                "invalid quantity {value}: use bytes or a number with Ki, Mi, Gi, Ti (or k, M, G, T)",
                {"value": repr(value)},
            )
        digits, suffix = m.group(1), m.group(2)
        whole, _, frac = digits.partition(".")
        factor = _QUANTITY_FACTORS[suffix]
        scaled = int(whole) * factor * 10 ** len(frac) + int(frac or "0") * factor
        number, rest = divmod(scaled, 10 ** len(frac))
        if rest:
            raise PydanticCustomError(
                "memory_quantity", "{value} is not a whole number of bytes", {"value": repr(value)}
            )
    if number <= 0:
        raise PydanticCustomError("memory_quantity", "must be greater than 0 bytes")
    return number


# Checked by functions (for messages that say what is allowed) and described to editors by patterns.
Name = Annotated[
    str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": NAME_RE.pattern})
]
HardwareClassName = Annotated[
    str,
    AfterValidator(_check_hardware_class),
    WithJsonSchema({"type": "string", "pattern": HARDWARE_CLASS_RE.pattern}),
]
LabelKey = Annotated[
    str,
    AfterValidator(_check_label_key),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 317}),
]
LabelValue = Annotated[
    str,
    AfterValidator(_check_label_value),
    WithJsonSchema({"type": "string", "maxLength": 63, "pattern": f"^({_LABEL_NAME_RE.pattern[1:-1]})?$"}),
]
MemoryBytes = Annotated[
    int,
    BeforeValidator(parse_memory_quantity),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _QUANTITY_RE.pattern},
            ],
            "description": "Bytes, or a quantity such as 4Gi, 512Mi or 1.5G.",
        }
    ),
]


class _Model(BaseModel):
    """Common configuration: unknown fields are errors, values are not coerced (``"100"`` is not a
    number, ``"true"`` not a boolean), models are immutable, YAML names are camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
    )

    #: Fields holding lists whose order means nothing; canonical forms sort them.
    unordered_fields: ClassVar[frozenset[str]] = frozenset()


# --- shared parts ------------------------------------------------------------------------------


class Metadata(_Model):
    """Identity of a policy document."""

    name: Name
    """Unique per kind across all policy files; other documents refer to it by this name."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Free-form labels for people and tools (not used for planning)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Free-form notes (owner, ticket, ...); not used for planning."""


class HardwareClassMetadata(Metadata):
    """A HardwareClass's name is the class itself, so it follows the hardware-class syntax."""

    name: HardwareClassName
    """The hardware class (e.g. phone-cpu, edge-npu, cloud-gpu, or one of your own)."""


class LabelSelectorRequirement(_Model):
    """One condition on a label, as in Kubernetes ``matchExpressions``."""

    unordered_fields = frozenset({"values"})

    key: LabelKey
    """The label key the condition is about."""
    operator: Operator
    """In: the label is set to one of values. NotIn: it is unset or set to none of them. Exists: it is
    set (to anything). DoesNotExist: it is unset."""
    values: tuple[LabelValue, ...] = Field(default=(), strict=False)
    """The values for In and NotIn (at least one); must be empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise PydanticCustomError(
                "selector_values", "operator {op} needs at least one value", {"op": self.operator}
            )
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise PydanticCustomError(
                "selector_values", "operator {op} takes no values", {"op": self.operator}
            )
        _unique(self.values)
        return self


class LabelSelector(_Model):
    """Which devices, by their labels: every matchLabels pair and every matchExpressions condition
    must hold. An empty selector matches every device."""

    unordered_fields = frozenset({"match_expressions"})

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Labels a device must carry with exactly these values."""
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(default=(), strict=False)
    """Further conditions, all of which must hold."""

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


class Link(_Model):
    """A network link's expected performance, used until a device reports a measured one."""

    bandwidth_mbps: float = Field(gt=0)
    """Bandwidth in megabits per second."""
    rtt_ms: float = Field(ge=0)
    """Round-trip time in milliseconds."""


# --- DeviceGroup -------------------------------------------------------------------------------


class DeviceGroupSpec(_Model):
    hardware_class: HardwareClassName | None = None
    """Only devices reporting this hardware class are members; unset: any class."""
    selector: LabelSelector = Field(default_factory=LabelSelector)
    """Which devices are members, by their labels; empty (the default): every device."""


class DeviceGroup(_Model):
    """A named set of devices, chosen by label selector and hardware class; ModelDeployments target
    groups, not single devices."""

    api_version: Literal["edgefleet.io/v1alpha1"]
    """Always edgefleet.io/v1alpha1."""
    kind: Literal["DeviceGroup"]
    metadata: Metadata
    spec: DeviceGroupSpec


# --- ModelDeployment ---------------------------------------------------------------------------


class LatencyObjective(_Model):
    """The latency SLO: this percentile of end-to-end request latency stays under maxMs."""

    percentile: float = Field(default=95.0, ge=50, le=99.9)
    """Which percentile the SLO is about (50 to 99.9)."""
    max_ms: float = Field(gt=0)
    """The latency bound in milliseconds, from the application's call to its answer."""


class Objectives(_Model):
    latency: LatencyObjective
    """The latency SLO every device of the group should meet."""
    min_accuracy: float = Field(default=0.99, gt=0, le=1)
    """Lowest accepted accuracy relative to the fp32 model (1.0: as accurate as fp32; 0.99: at most
    1% worse). Applies to the served variant and to the fallback."""


class Precisions(_Model):
    """Which precisions each tier may run this model at; the planner picks among them. Order does not
    matter."""

    unordered_fields = frozenset({"device", "edge", "cloud"})

    device: Annotated[tuple[Precision, ...], AfterValidator(_unique)] = Field(
        default=PRECISIONS, min_length=1, strict=False
    )
    """Precisions allowed for segments on the device itself (and its fallback)."""
    edge: Annotated[tuple[Precision, ...], AfterValidator(_unique)] = Field(
        default=PRECISIONS, min_length=1, strict=False
    )
    """Precisions allowed for segments offloaded to an edge pool."""
    cloud: Annotated[tuple[Precision, ...], AfterValidator(_unique)] = Field(
        default=PRECISIONS, min_length=1, strict=False
    )
    """Precisions allowed for segments offloaded to a cloud pool."""


class Partitioning(_Model):
    """Whether the model may be cut and part of it offloaded, and to which pools."""

    unordered_fields = frozenset({"edge_pools", "cloud_pools"})

    enabled: bool = True
    """Allow cutting the model (true when this block is given, unless set to false)."""
    edge_pools: Annotated[tuple[Name, ...], AfterValidator(_unique)] = Field(default=(), strict=False)
    """Edge ComputePools (tier edge) that may serve this model's offloaded segments."""
    cloud_pools: Annotated[tuple[Name, ...], AfterValidator(_unique)] = Field(default=(), strict=False)
    """Cloud ComputePools (tier cloud) that may serve this model's offloaded segments."""


class Batching(_Model):
    """How the serving tiers batch requests of this model's offloaded segments."""

    max_batch_size: int = Field(default=1, ge=1, le=1024)
    """Largest batch an edge or cloud node forms for one segment (1: no batching)."""
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    """Longest a request waits for a batch to fill, in milliseconds."""


class ModelDeploymentSpec(_Model):
    model: Name
    """The model (as imported with fleetctl models import) every device of the group runs."""
    group: Name
    """The DeviceGroup whose devices run it."""
    priority: int = 0
    """When deployments compete for edge or cloud capacity, higher priority is served first."""
    objectives: Objectives
    """Latency SLO and accuracy floor."""
    precisions: Precisions = Field(default_factory=Precisions)
    """Allowed precisions per tier (default: all four everywhere)."""
    partitioning: Partitioning = Field(default_factory=lambda: Partitioning(enabled=False))
    """Offloading to edge and cloud pools (default: off, the whole model runs on the device)."""
    memory_headroom: float = Field(default=0.2, ge=0, lt=1)
    """Fraction of a device's memory left free for everything else (0.2: use at most 80%)."""
    request_rate: float = Field(default=1.0, gt=0)
    """Expected requests per second per device, used to size the load on shared pools."""
    batching: Batching = Field(default_factory=Batching)
    """Batching of offloaded segments on the serving tiers."""


class ModelDeployment(_Model):
    """Run a model on every device of a group, under latency and accuracy objectives."""

    api_version: Literal["edgefleet.io/v1alpha1"]
    """Always edgefleet.io/v1alpha1."""
    kind: Literal["ModelDeployment"]
    metadata: Metadata
    spec: ModelDeploymentSpec


# --- ComputePool -------------------------------------------------------------------------------


class PoolNodes(_Model):
    """The enrolled agents that serve a pool: by label selector or by device id, exactly one."""

    unordered_fields = frozenset({"names"})

    selector: LabelSelector | None = None
    """Agents whose labels match (must not be empty: that would pick every device)."""
    names: Annotated[tuple[Name, ...], AfterValidator(_unique)] | None = Field(
        default=None, min_length=1, strict=False
    )
    """Agents by device id."""

    @field_validator("selector")
    @classmethod
    def _not_everyone(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and selector.is_empty:
            raise PydanticCustomError(
                "pool_nodes", "must not be empty: it would make every device a node of this pool"
            )
        return selector

    @model_validator(mode="after")
    def _one_way(self) -> PoolNodes:
        if (self.selector is None) == (self.names is None):
            raise PydanticCustomError("pool_nodes", "give either selector or names (exactly one)")
        return self


class PoolClients(_Model):
    selector: LabelSelector
    """Devices whose labels match can reach this pool."""


# Links assumed until devices measure theirs: a phone on Wi-Fi/5G to a nearby edge node, a phone to
# a cloud region, an edge node's wired uplink to the cloud.
DEFAULT_EDGE_LINK = {"bandwidthMbps": 50.0, "rttMs": 10.0}
DEFAULT_CLOUD_LINK = {"bandwidthMbps": 20.0, "rttMs": 60.0}
DEFAULT_EDGE_TO_CLOUD_LINK = {"bandwidthMbps": 500.0, "rttMs": 20.0}


def _links_not_required(schema: dict[str, Any]) -> None:
    # defaultLink has a default that depends on the tier (filled in by _tier_defaults below).
    schema["required"] = [r for r in schema.get("required", []) if r != "defaultLink"]


class ComputePoolSpec(_Model):
    model_config = ConfigDict(json_schema_extra=_links_not_required)

    tier: Tier
    """edge: nodes near the devices (e.g. KubeEdge edge nodes); cloud: GPU workers in a region."""
    hardware_class: HardwareClassName
    """The hardware class of the pool's nodes (sets their performance and memory)."""
    nodes: PoolNodes
    """Which enrolled agents serve this pool."""
    clients: PoolClients | None = None
    """Which devices can reach the pool: required for edge pools; for cloud pools, unset means every
    device."""
    slots_per_node: int = Field(default=1, ge=1)
    """Segment executions one node runs at once."""
    utilization_cap: float = Field(default=0.7, gt=0, le=1)
    """Highest planned utilisation of each node (0.7: 30% spare so queues stay short)."""
    default_link: Link
    """Client-to-pool link assumed for a device that has not measured it (default: 50 Mbit/s and
    10 ms for edge pools, 20 Mbit/s and 60 ms for cloud pools)."""
    cloud_link: Link | None = None
    """Edge pools only: the link from this pool's nodes to the cloud (default 500 Mbit/s, 20 ms)."""

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults(cls, data: Any) -> Any:
        """Fill the links a tier implies. Only when absent, so a cloudLink given on a cloud pool stays
        visible to ``checks``, which reports it."""
        if not isinstance(data, dict):
            return data
        tier = data.get("tier")
        given = set(data)
        filled = dict(data)
        if not given & {"defaultLink", "default_link"}:
            # With no valid tier the document fails on tier alone; any link keeps that the only error.
            filled["defaultLink"] = DEFAULT_CLOUD_LINK if tier == "cloud" else DEFAULT_EDGE_LINK
        if tier == "edge" and not given & {"cloudLink", "cloud_link"}:
            filled["cloudLink"] = DEFAULT_EDGE_TO_CLOUD_LINK
        return filled


class ComputePool(_Model):
    """Edge nodes or cloud GPU workers that accept offloaded segments, with their capacity."""

    api_version: Literal["edgefleet.io/v1alpha1"]
    """Always edgefleet.io/v1alpha1."""
    kind: Literal["ComputePool"]
    metadata: Metadata
    spec: ComputePoolSpec


# --- HardwareClass -----------------------------------------------------------------------------


class HardwareClassSpec(_Model):
    """Performance of a hardware class, used where no measured profile of it exists. Each field left
    out falls back to the built-in catalog; a class the catalog does not know must give precisions,
    memoryBytes and latencyScale."""

    unordered_fields = frozenset({"precisions"})

    memory_bytes: MemoryBytes | None = None
    """Memory of a device of this class that does not report its own (bytes or e.g. 4Gi)."""
    precisions: Annotated[tuple[Precision, ...], AfterValidator(_unique)] | None = Field(
        default=None, min_length=1, strict=False
    )
    """The precisions this hardware runs."""
    latency_scale: dict[Precision, Annotated[float, Field(gt=0)]] | None = None
    """Per precision: latency on this hardware divided by the latency measured on the controller host
    at import (e.g. fp32: 4.0 means four times slower)."""
    call_overhead_ms: float | None = Field(default=None, ge=0)
    """Fixed cost of one segment execution on this hardware, in milliseconds."""


class HardwareClass(_Model):
    """Overrides for a hardware class's performance when measured profiles are missing."""

    api_version: Literal["edgefleet.io/v1alpha1"]
    """Always edgefleet.io/v1alpha1."""
    kind: Literal["HardwareClass"]
    metadata: HardwareClassMetadata
    spec: HardwareClassSpec


PolicyDocument = DeviceGroup | ModelDeployment | ComputePool | HardwareClass
#: Kind name -> model, in alphabetical order (the order canonical forms and listings use).
KINDS: dict[str, type[PolicyDocument]] = {
    "ComputePool": ComputePool,
    "DeviceGroup": DeviceGroup,
    "HardwareClass": HardwareClass,
    "ModelDeployment": ModelDeployment,
}
