"""Artifact manifests: one small JSON document per stored artifact, named by its sha256.

A manifest records what the bytes are (``kind``: a model ``variant``, a ``segment`` of a model, the
``eval_data`` of a build or the ``profile_inputs`` agents profile blocks on; size, inputs/outputs or
arrays, opset imports, IR version), how they were built (precision, method, the segment range and the
fp32 source for segments, the toolchain versions) and under which names they are registered. The
first registration also fills the top-level ``model``/``variant``/``precision``/``method``;
registering the same bytes again (another model, variant or block) appends to ``registrations``. The
manifest is written before the registration it records, so a registered artifact always has one; a
manifest whose registration then failed is restored (see ``ArtifactStore.restore_manifest``) or
removed with its artifact. Manifests written before ``kind`` existed describe variants.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx

from common.types import ModelVariant, TensorSpec
from controller.artifacts import ArtifactStore
from controller.onnx_check import signature
from controller.toolchain.variants import toolchain_versions

SCHEMA = 1
#: Kinds of ``.npz`` artifacts a build keeps (see ``record_data``).
DATA_KINDS = ("eval_data", "profile_inputs")


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
        r for r in current["registrations"] if (r.get("model"), r.get("variant")) != (model, variant.variant)
    ]
    registrations.append(entry)
    first = registrations[0]
    if (first.get("model"), first.get("variant")) == (model, variant.variant):  # a rebuild refines the first
        current.update({k: entry[k] for k in ("precision", "method")})
    current["registrations"] = registrations
    store.write_manifest(variant.sha256, current)
    return previous


def record_segment(
    store: ArtifactStore,
    model: str,
    *,
    sha256: str,
    precision: str,
    method: str,
    start_cut: int,
    end_cut: int,
    source_sha256: str,
    now_ms: int,
) -> bytes | None:
    """Write (or update) the manifest of a block's artifact: the block ``start_cut``..``end_cut``
    (0: the model inputs / outputs) of ``model``'s fp32 ``source_sha256`` at ``precision``, built with
    ``method``. Returns the previous manifest's bytes, as ``record_registration`` does."""
    entry = {
        "kind": "segment",
        "model": model,
        "precision": precision,
        "method": method,
        "start_cut": start_cut,
        "end_cut": end_cut,
        "registered_at": _iso(now_ms),
    }

    def describe() -> dict[str, Any]:
        path = store.path(sha256)
        proto = onnx.load(str(path), load_external_data=False)
        inputs, outputs = signature(proto)
        doc = _header(path, sha256, "segment", now_ms=now_ms)
        doc.update(
            {
                "model": model,
                "precision": precision,
                "method": method,
                "segment": {"start_cut": start_cut, "end_cut": end_cut},
                "source_sha256": source_sha256,
                "inputs": [_spec(s) for s in inputs],
                "outputs": [_spec(s) for s in outputs],
                "opset_imports": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
                "ir_version": proto.ir_version,
                "toolchain": toolchain_versions(),
            }
        )
        return doc

    return _record(store, sha256, entry, ("model", "precision", "start_cut", "end_cut"), describe)


def record_data(
    store: ArtifactStore, model: str, *, sha256: str, kind: str, arrays: Mapping[str, Any], now_ms: int
) -> bytes | None:
    """Write (or update) the manifest of an ``.npz`` a build keeps: ``kind`` is ``eval_data`` or
    ``profile_inputs``; ``arrays`` are its arrays by name (their dtypes and shapes are recorded)."""
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}")
    entry = {"kind": kind, "model": model, "registered_at": _iso(now_ms)}

    def describe() -> dict[str, Any]:
        doc = _header(store.path(sha256), sha256, kind, now_ms=now_ms)
        doc.update(
            {
                "model": model,
                "arrays": [
                    {"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)}
                    for name, arr in arrays.items()
                ],
                "rows": int(next(iter(arrays.values())).shape[0]) if arrays else 0,
            }
        )
        return doc

    return _record(store, sha256, entry, ("kind", "model"), describe)


def _record(
    store: ArtifactStore,
    sha256: str,
    entry: dict[str, Any],
    key: tuple[str, ...],
    describe: Callable[[], dict[str, Any]],
) -> bytes | None:
    """Add ``entry`` to the registrations of ``sha256``'s manifest (replacing one with the same ``key``
    fields), describing the artifact first if it has no manifest yet; returns the previous bytes."""
    previous = store.manifest_bytes(sha256)
    current = store.read_manifest(sha256)
    if current is None or current.get("schema") != SCHEMA:
        current = describe()
        current["registrations"] = []
    same = tuple(entry.get(k) for k in key)
    registrations = [r for r in current["registrations"] if tuple(r.get(k) for k in key) != same]
    registrations.append(entry)
    current["registrations"] = registrations
    store.write_manifest(sha256, current)
    return previous


def _header(path: Path, sha256: str, kind: str, *, now_ms: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": kind,
        "sha256": sha256,
        "size_bytes": path.stat().st_size,
        "model": "",
        "variant": None,
        "precision": None,
        "method": None,
        "segment": None,
        "created_at": _iso(now_ms),
        "registrations": [],
    }


def _describe(
    path: Path, variant: ModelVariant, *, now_ms: int, segment: tuple[int, int] | None
) -> dict[str, Any]:
    proto = onnx.load(str(path), load_external_data=False)  # only the header and graph signature
    return {
        "schema": SCHEMA,
        "kind": "variant",
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
