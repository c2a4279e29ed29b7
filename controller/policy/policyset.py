"""A validated set of policy documents, by kind and name, with a canonical form and its digest.

The canonical form is what a policy *means*: every default filled in, keys sorted, lists whose order
carries no meaning sorted, no trace of formatting, comments, file layout or key order. Two sets with
the same digest plan the same, so ``fleetctl apply`` can tell that applying the same files again
changes nothing. Where each document came from (file, positions of its fields) travels alongside but
takes no part in equality or the digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from common.errors import InvalidArgument
from controller.policy.models import (
    API_VERSION,
    KINDS,
    ComputePool,
    DeviceGroup,
    HardwareClass,
    ModelDeployment,
    PolicyDocument,
)

#: A field path as pydantic reports it: field names (YAML spelling), mapping keys, list indexes.
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, order=True)
class PolicyKey:
    """A document's identity: names are unique per kind."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class DocumentLocation:
    """Where a document is: its file and the 1-based (line, column) of each of its keys and list
    items, so a problem found later (a dangling reference, a model the controller lacks) can still be
    reported at the exact line."""

    file: str
    positions: Mapping[Loc, tuple[int, int]] = field(default_factory=dict)

    def at(self, loc: Loc) -> tuple[int, int]:
        """Position of ``loc``, or of its nearest ancestor that is in the file (a missing field is
        reported where its parent is); (0, 0) when nothing is known."""
        for i in range(len(loc), -1, -1):
            pos = self.positions.get(loc[:i])
            if pos is not None:
                return pos
        return (0, 0)


def format_path(loc: Loc) -> str:
    """``spec.precisions.device[1]``; keys that are not plain words are quoted:
    ``metadata.labels["edgefleet.io/region"]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").replace("-", "").isalnum() and not part[:1].isdigit():
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def canonical_value(value: Any) -> Any:
    """The canonical JSON value of a model, or of anything inside one."""
    if isinstance(value, BaseModel):
        unordered: frozenset[str] = getattr(value, "unordered_fields", frozenset())
        doc: dict[str, Any] = {}
        for name, info in type(value).model_fields.items():
            item = canonical_value(getattr(value, name))
            if name in unordered and isinstance(item, list):
                item = sorted(item, key=lambda x: json.dumps(x, sort_keys=True))
            doc[info.alias or name] = item
        return doc
    if isinstance(value, Mapping):
        return {str(k): canonical_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, tuple | list):
        return [canonical_value(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        # 100 and 100.0 mean the same; JSON shows them the same way.
        return int(value)
    return value


@dataclass(frozen=True)
class PolicySet:
    """Policy documents by kind and name. Build it with ``load_policies`` (files) or ``PolicySet.of``
    (code, e.g. tests)."""

    device_groups: Mapping[str, DeviceGroup] = field(default_factory=dict)
    model_deployments: Mapping[str, ModelDeployment] = field(default_factory=dict)
    compute_pools: Mapping[str, ComputePool] = field(default_factory=dict)
    hardware_classes: Mapping[str, HardwareClass] = field(default_factory=dict)
    locations: Mapping[PolicyKey, DocumentLocation] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(
        cls, *documents: PolicyDocument, locations: Mapping[PolicyKey, DocumentLocation] | None = None
    ) -> PolicySet:
        """A set of these documents; two of the same kind and name are an ``InvalidArgument``."""
        by_kind: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        for doc in documents:
            names = by_kind[doc.kind]
            if doc.metadata.name in names:
                raise InvalidArgument(f"duplicate {doc.kind} {doc.metadata.name!r}")
            names[doc.metadata.name] = doc

        def ordered(kind: str) -> dict[str, Any]:
            return dict(sorted(by_kind[kind].items()))

        return cls(
            device_groups=ordered("DeviceGroup"),
            model_deployments=ordered("ModelDeployment"),
            compute_pools=ordered("ComputePool"),
            hardware_classes=ordered("HardwareClass"),
            locations=dict(locations or {}),
        )

    def _by_kind(self) -> dict[str, Mapping[str, PolicyDocument]]:
        return {
            "ComputePool": self.compute_pools,
            "DeviceGroup": self.device_groups,
            "HardwareClass": self.hardware_classes,
            "ModelDeployment": self.model_deployments,
        }

    def documents(self) -> tuple[PolicyDocument, ...]:
        """Every document, sorted by kind then name."""
        return tuple(doc for _, docs in sorted(self._by_kind().items()) for _, doc in sorted(docs.items()))

    def keys(self) -> tuple[PolicyKey, ...]:
        return tuple(PolicyKey(d.kind, d.metadata.name) for d in self.documents())

    def get(self, key: PolicyKey) -> PolicyDocument | None:
        docs = self._by_kind().get(key.kind)
        return None if docs is None else docs.get(key.name)

    def __len__(self) -> int:
        return sum(len(docs) for docs in self._by_kind().values())

    def __iter__(self) -> Iterator[PolicyDocument]:
        return iter(self.documents())

    def kind_counts(self) -> dict[str, int]:
        """Documents per kind, for the kinds present, alphabetically."""
        return {kind: len(docs) for kind, docs in sorted(self._by_kind().items()) if docs}

    def location(self, key: PolicyKey) -> DocumentLocation:
        return self.locations.get(key) or DocumentLocation(file="<unknown>")

    def canonical(self) -> dict[str, Any]:
        """What the set means, as JSON-ready data: every document with defaults filled in, sorted."""
        return {
            "apiVersion": API_VERSION,
            "documents": [canonical_value(doc) for doc in self.documents()],
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON: equal digests mean equal policies."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()
