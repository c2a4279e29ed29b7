"""Segment artifacts for plans: the ONNX of each planned segment, built once, content-addressed.

A plan names segments by cut range and precision; devices need their bytes. Each distinct segment
(source fp32 model, cut range, method) is built the way the import built its blocks — split the fp32
model first, then convert that part with the method the variant build chose for the precision
(``controller.toolchain.segments.Segmenter``) — stored as an artifact with a ``segment`` manifest,
and remembered in the store (``segment_artifacts``) so the next plan that needs it reuses it. A
segment that is exactly one profiled block is that block's artifact already.

Building is CPU work (a quantizer run per segment), done in worker threads; store calls go through
the store thread. ``SegmentBuilder`` keeps the last model's prepared graph (``Segmenter``) between
builds, so a plan with many segments of one model prepares it once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common import limits
from common.errors import NotFound
from common.types import Model
from controller import manifests
from controller.artifacts import ArtifactStore
from controller.hub import Db
from controller.service.clock import Clock
from controller.toolchain.evaldata import load_eval_data
from controller.toolchain.segments import DEFAULT_METHODS, Segmenter

log = logging.getLogger(__name__)

#: Calibration rows for static int8 segments (as the import's blocks use).
CALIBRATION_ROWS = 128


@dataclass(frozen=True, slots=True)
class SegmentKey:
    model: str
    start_cut: int  # 0: the model inputs
    end_cut: int  # 0: the model outputs
    precision: str


class SegmentBuilder:
    def __init__(self, db: Db, artifacts: ArtifactStore, clock: Clock) -> None:
        self._db = db
        self._artifacts = artifacts
        self._clock = clock
        self._lock = threading.Lock()  # one build at a time: each is a CPU-heavy quantizer run
        self._segmenter: tuple[str, Segmenter] | None = None

    async def ensure(
        self, models: dict[str, Model], keys: Iterable[SegmentKey]
    ) -> dict[SegmentKey, tuple[str, int]]:
        """(sha256, size) of the artifact of every segment in ``keys``, building what is missing."""
        out: dict[SegmentKey, tuple[str, int]] = {}
        for key in sorted(set(keys), key=lambda k: (k.model, k.start_cut, k.end_cut, k.precision)):
            out[key] = await self._one(models[key.model], key)
        return out

    async def _one(self, model: Model, key: SegmentKey) -> tuple[str, int]:
        variant = model.variant(key.precision)
        source = model.variant("fp32")
        if variant is None or source is None:
            raise NotFound(f"model {model.name} has no {key.precision} variant to build a segment from")
        method = variant.method or DEFAULT_METHODS[key.precision]
        for b in model.block_profiles:  # one profiled block: the import built it already
            if (b.start_cut, b.end_cut, b.precision) == (
                key.start_cut,
                key.end_cut,
                key.precision,
            ) and b.artifact_sha256:
                return b.artifact_sha256, b.artifact_size_bytes
        found = await self._db.run(
            self._db.store.find_segment_artifact, source.sha256, key.start_cut, key.end_cut, method
        )
        if found is not None and self._artifacts.exists(found[0]):
            return found
        sha256, size = await asyncio.to_thread(self._build, model, source.sha256, key, method)
        await self._db.run(
            self._db.store.add_segment_artifact,
            model.name,
            source.sha256,
            key.start_cut,
            key.end_cut,
            method,
            sha256,
            size,
            now_ms=self._clock.now_ms(),
        )
        log.info(
            "model=%s built segment %s..%s at %s (%s): %s, %d bytes",
            model.name,
            key.start_cut or "inputs",
            key.end_cut or "outputs",
            key.precision,
            method,
            sha256[:12],
            size,
        )
        return sha256, size

    def _build(self, model: Model, source_sha256: str, key: SegmentKey, method: str) -> tuple[str, int]:
        with self._lock:
            segmenter = self._segmenter_for(model, source_sha256)
            segment = segmenter.segment(key.start_cut or None, key.end_cut or None, method)
            sha256, size = self._artifacts.put_stream([segment.onnx_bytes], max_bytes=limits.MAX_MODEL_BYTES)
            manifests.record_segment(
                self._artifacts,
                model.name,
                sha256=sha256,
                precision=key.precision,
                method=method,
                start_cut=key.start_cut,
                end_cut=key.end_cut,
                source_sha256=source_sha256,
                now_ms=self._clock.now_ms(),
            )
            return sha256, size

    def _segmenter_for(self, model: Model, source_sha256: str) -> Segmenter:
        if self._segmenter is not None and self._segmenter[0] == source_sha256:
            return self._segmenter[1]
        calibration = None
        if model.eval_data_sha256:
            source = self._artifacts.path(source_sha256)
            from controller.onnx_check import inspect_onnx

            inputs, outputs = inspect_onnx(source)
            data = load_eval_data(
                self._artifacts.path(model.eval_data_sha256), inputs, outputs, where="eval data"
            )
            calibration = data.head(CALIBRATION_ROWS)
        segmenter = Segmenter(
            Path(self._artifacts.path(source_sha256)).read_bytes(),
            calibration=calibration,
            workdir=self._artifacts.tmp_dir,
        )
        self._segmenter = (source_sha256, segmenter)
        return segmenter
