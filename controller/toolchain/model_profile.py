"""What an import records about where a model can be cut, how long its blocks take, what lowering
each block costs in accuracy, and the block artifacts themselves.

Run after the variant build, on the uploaded fp32 bytes: every cut point (cheap: one pass over the
graph), then block profiles between at most ``MAX_PROFILED_CUTS`` selected cut points (spread out and
cheap to cross, see ``ModelGraph.select``) at each accepted precision, with the method the build
chose for it, at batch sizes 1 and 32. The timing config is deliberately small (one warm-up, a few
runs): an import must stay quick, and a planner that needs tighter numbers profiles again. The blocks
built for timing are kept (``block_artifacts``, for the artifact store: agents download them to
profile on their own hardware) and scored for accuracy one at a time (``mixes.block_sensitivity``).
The first ``PROFILE_INPUT_ROWS`` eval rows of the model inputs become the ``.npz`` agents profile on.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.types import BlockAccuracy, BlockProfile, CallOverhead, CutPoint, TensorSpec
from controller.toolchain import mixes, partition, profile
from controller.toolchain.evaldata import EvalData
from controller.toolchain.measure import MeasureConfig
from controller.toolchain.segments import Segmenter

#: Most cut points whose blocks an import profiles (all cut points are still reported).
MAX_PROFILED_CUTS = 8
#: Batch sizes the import profiles blocks at (a model with a fixed batch gets only that one).
BATCH_SIZES = (1, 32)
#: Small on purpose: digits with four precisions profiles in about a second.
IMPORT_PROFILE_CONFIG = MeasureConfig(warmup=1, runs=10, min_runs=3, max_seconds=0.25)
#: Eval rows kept as profile inputs: the largest profiled batch (an agent tiles fewer rows).
PROFILE_INPUT_ROWS = max(BATCH_SIZES)


@dataclass(frozen=True, slots=True, eq=False)
class BlockArtifact:
    """A block as built for profiling: what the import stores (by its sha256) and registers."""

    start_cut: int  # 0: the model inputs
    end_cut: int  # 0: the model outputs
    precision: str
    method: str
    onnx_bytes: bytes
    sha256: str


@dataclass(frozen=True, slots=True, eq=False)
class ModelProfile:
    cut_points: tuple[CutPoint, ...]
    block_profiles: tuple[BlockProfile, ...]  # with the artifact sha256 and size of each block
    selected: tuple[int, ...]  # indices of the cut points whose blocks were profiled
    block_artifacts: tuple[BlockArtifact, ...] = ()
    block_accuracy: tuple[BlockAccuracy, ...] = ()
    profile_inputs: bytes = b""  # an .npz of the first PROFILE_INPUT_ROWS rows of the model inputs
    source_sha256: str = ""
    #: One call to a model that does nothing, per batch size, on the host that timed the blocks.
    call_overhead: tuple[CallOverhead, ...] = ()


def profile_model(
    model: bytes,
    data: EvalData,
    methods: Mapping[str, str],
    *,
    outputs: tuple[TensorSpec, ...] = (),
    max_cuts: int = MAX_PROFILED_CUTS,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    config: MeasureConfig = IMPORT_PROFILE_CONFIG,
    workdir: str | Path | None = None,
    progress: profile.ProgressFn | None = None,
) -> ModelProfile:
    """Cut points of ``model``, its block profiles at each precision of ``methods`` (precision -> the
    method that built its variant) and, given the model's ``outputs``, the accuracy of each block
    lowered alone. Progress: one step for the cut points, one per precision, one for the accuracy."""
    steps = 2 + len(methods)
    graph = partition.ModelGraph(model)
    cuts = graph.cut_points
    selected = graph.select(max_cuts)
    if progress is not None:
        progress(1, steps, f"{len(cuts)} cut points; profiling blocks between {len(selected)}")
    blocks: tuple[BlockProfile, ...] = ()
    artifacts: list[BlockArtifact] = []
    accuracy: tuple[BlockAccuracy, ...] = ()
    overhead: tuple[CallOverhead, ...] = ()
    if methods:
        segmenter = Segmenter(graph, calibration=data.head(config.calibration_rows), workdir=workdir)
        table = profile.profile_blocks(
            segmenter,
            selected,
            dict(methods),
            batch_sizes,
            data=data,
            config=config,
            progress=None if progress is None else lambda step, _, msg: progress(1 + step, steps, msg),
        )
        for (start, end, precision), seg in table.segments.items():
            artifacts.append(
                BlockArtifact(start or 0, end or 0, precision, seg.method, seg.onnx_bytes, seg.sha256)
            )
        sizes = {(a.start_cut, a.end_cut, a.precision): len(a.onnx_bytes) for a in artifacts}
        blocks = tuple(_block(b, sizes) for b in table.blocks)
        overhead = tuple(CallOverhead(b, ms) for b, ms in sorted(table.overhead_ms.items()))
        if outputs:
            sensitivity = mixes.block_sensitivity(
                table, data, outputs, batches=mixes.eval_batches(graph.fixed_batch)
            )
            accuracy = _accuracy(sensitivity)
        if progress is not None:
            progress(steps, steps, f"accuracy of {len(table.boundaries) - 1} blocks lowered one at a time")
    return ModelProfile(
        tuple(_cut(c) for c in cuts),
        blocks,
        tuple(c.index for c in selected),
        tuple(artifacts),
        accuracy,
        _profile_inputs(data),
        graph.source_sha256,
        overhead,
    )


def _profile_inputs(data: EvalData) -> bytes:
    """The first PROFILE_INPUT_ROWS rows of the model inputs as an ``.npz`` (no labels, no pickles)."""
    arrays: dict[str, Any] = {
        name: np.ascontiguousarray(arr[:PROFILE_INPUT_ROWS]) for name, arr in data.inputs.items()
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _accuracy(table: mixes.SensitivityTable) -> tuple[BlockAccuracy, ...]:
    """The sensitivities as stored, led by the fp32 reference on the same rows as the whole model
    (0..0 at fp32): the ``q_fp32`` the additive prediction subtracts the blocks' costs from."""
    ref = table.reference
    rows = [BlockAccuracy(0, 0, "fp32", ref.accuracy, ref.cosine, ref.agreement)]
    for b in table.blocks:
        m = b.metrics
        rows.append(
            BlockAccuracy(b.start or 0, b.end or 0, b.precision, m.accuracy, m.cosine, m.agreement, b.error)
        )
    return tuple(rows)


def _cut(cut: partition.CutPoint) -> CutPoint:
    size = cut.bytes_per_sample
    return CutPoint(
        index=cut.index,
        tensors=tuple(
            TensorSpec(t.name, t.dtype, tuple(d if isinstance(d, int) else -1 for d in t.shape))
            for t in cut.tensors
        ),
        bytes_per_sample=-1 if size is None else size,
    )


def _block(b: profile.BlockProfile, sizes: Mapping[tuple[int, int, str], int]) -> BlockProfile:
    return BlockProfile(
        start_cut=b.start or 0,
        end_cut=b.end or 0,
        precision=b.precision,
        batch_size=b.batch,
        latency_ms=b.latency_ms or 0.0,
        error=b.error or ("" if b.latency_ms is not None else "not measured"),
        artifact_sha256=b.sha256,
        artifact_size_bytes=sizes.get((b.start or 0, b.end or 0, b.precision), 0) if b.sha256 else 0,
    )
