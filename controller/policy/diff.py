"""What changes between two policy sets: documents added, removed, and changed field by field.

Compared on the canonical forms, so reformatting, reordering keys or reordering lists whose order
means nothing is no change, and a default written out explicitly is no change either. Lists that
differ are reported whole (``spec.precisions.device: ['fp32', 'int8'] -> ['int8']``), which reads
better than item-by-item shifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.policy.policyset import Loc, PolicyKey, PolicySet, canonical_value, format_path


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field: its path in YAML names and its canonical JSON values (None where the key is
    absent on that side, e.g. a label added or removed)."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class DocumentChange:
    key: PolicyKey
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """Sorted by key; ``changed`` fields in document order."""

    added: tuple[PolicyKey, ...] = ()
    removed: tuple[PolicyKey, ...] = ()
    changed: tuple[DocumentChange, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_doc(self) -> dict[str, Any]:
        """The stable JSON shape (for ``fleetctl diff -o json``)."""
        return {
            "added": [{"kind": k.kind, "name": k.name} for k in self.added],
            "removed": [{"kind": k.kind, "name": k.name} for k in self.removed],
            "changed": [
                {
                    "kind": c.key.kind,
                    "name": c.key.name,
                    "fields": [{"path": f.path, "old": f.old, "new": f.new} for f in c.fields],
                }
                for c in self.changed
            ],
        }

    def lines(self) -> list[str]:
        """One line per added/removed document and per changed field, for people."""
        out = [f"+ {k}" for k in self.added]
        out += [f"- {k}" for k in self.removed]
        for c in self.changed:
            out.append(f"~ {c.key}")
            out += [f"    {f.path}: {_show(f.old)} -> {_show(f.new)}" for f in c.fields]
        return out


def _show(value: Any) -> str:
    return "(unset)" if value is None else repr(value)


def _changes(loc: Loc, old: Any, new: Any) -> list[FieldChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for k in [*old, *(k for k in new if k not in old)]:
            out += _changes((*loc, k), old.get(k), new.get(k))
        return out
    return [] if old == new else [FieldChange(format_path(loc), old, new)]


def diff_policy_sets(old: PolicySet, new: PolicySet) -> PolicyDiff:
    """Added, removed and changed documents from ``old`` to ``new``."""
    old_keys, new_keys = set(old.keys()), set(new.keys())
    changed: list[DocumentChange] = []
    for key in sorted(old_keys & new_keys):
        before, after = old.get(key), new.get(key)
        fields = _changes((), canonical_value(before), canonical_value(after))
        if fields:
            changed.append(DocumentChange(key, tuple(fields)))
    return PolicyDiff(
        added=tuple(sorted(new_keys - old_keys)),
        removed=tuple(sorted(old_keys - new_keys)),
        changed=tuple(changed),
    )
