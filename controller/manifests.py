"""Artifact manifests: one small JSON document per stored artifact, named by its sha256.

A manifest records what the bytes are (size, inputs/outputs, opset imports, IR version), how they
were built (precision, method, the segment range for segments, the toolchain versions) and under
which (model, variant) names they are registered. The first registration also fills the top-level
``model``/``variant``/``precision``/``method``; registering the same bytes under another name
appends to ``registrations``. The manifest is written before the registration it records, so a
registered artifact always has one; a manifest whose registration then failed is restored (see
``ArtifactStore.restore_manifest``) or removed with its artifact.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import onnx

from common.types import ModelVariant, TensorSpec
from controller.artifacts import ArtifactStore
from controller.toolchain.variants import toolchain_versions

SCHEMA = 1


def record_registration(
    store: ArtifactStore,
    model: str,
    variant: ModelVariant,
    *,
    now_ms: int,
    segment: tuple[int, int] | None = None,
) -> bytes | None:
    """Write (or update) the manifest of ``variant``'s artifact to record its registration as
    ``model``/``variant.variant``; returns the previous manifest's bytes (None: there was none) for
    ``ArtifactStore.restore_manifest`` if the registration fails. Callers serialise writers."""
    previous = store.manifest_bytes(variant.sha256)
    current = store.read_manifest(variant.sha256)
    entry = {
        "model": model,
        "variant": variant.variant,
        "precision": variant.precision or None,
        "method": variant.method or None,
        "registered_at": _iso(now_ms),
    }
    if current is None or current.get("schema") != SCHEMA:
        current = _describe(store.path(variant.sha256), variant, now_ms=now_ms, segment=segment)
        current.update({k: entry[k] for k in ("model", "variant", "precision", "method")})
        current["registrations"] = []
    registrations = [
        r for r in current["registrations"] if (r["model"], r["variant"]) != (model, variant.variant)
    ]
    registrations.append(entry)
    first = registrations[0]
    if (first["model"], first["variant"]) == (model, variant.variant):  # a rebuild refines the first
        current.update({k: entry[k] for k in ("precision", "method")})
    current["registrations"] = registrations
    store.write_manifest(variant.sha256, current)
    return previous


def _describe(
    path: Path, variant: ModelVariant, *, now_ms: int, segment: tuple[int, int] | None
) -> dict[str, Any]:
    proto = onnx.load(str(path), load_external_data=False)  # only the header and graph signature
    return {
        "schema": SCHEMA,
        "sha256": variant.sha256,
        "size_bytes": path.stat().st_size,
        "model": "",
        "variant": "",
        "precision": None,
        "method": None,
        "segment": None if segment is None else {"start_cut": segment[0], "end_cut": segment[1]},
        "inputs": [_spec(s) for s in variant.inputs],
        "outputs": [_spec(s) for s in variant.outputs],
        "opset_imports": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "toolchain": toolchain_versions(),
        "created_at": _iso(now_ms),
        "registrations": [],
    }


def _spec(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)}


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isoformat(timespec="milliseconds")
