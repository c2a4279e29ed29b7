"""What an import records about where a model can be cut and how long its blocks take.

Run after the variant build, on the uploaded fp32 bytes: every cut point (cheap: one pass over the
graph), then block profiles between at most ``MAX_PROFILED_CUTS`` selected cut points (spread out and
cheap to cross, see ``ModelGraph.select``) at each accepted precision, with the method the build
chose for it, at batch sizes 1 and 32. The timing config is deliberately small (one warm-up, a few
runs): an import must stay quick, and a planner that needs tighter numbers profiles again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.types import BlockProfile, CutPoint, TensorSpec
from controller.toolchain import partition, profile
from controller.toolchain.evaldata import EvalData
from controller.toolchain.measure import MeasureConfig
from controller.toolchain.segments import Segmenter

#: Most cut points whose blocks an import profiles (all cut points are still reported).
MAX_PROFILED_CUTS = 8
#: Batch sizes the import profiles blocks at (a model with a fixed batch gets only that one).
BATCH_SIZES = (1, 32)
#: Small on purpose: digits with four precisions profiles in about a second.
IMPORT_PROFILE_CONFIG = MeasureConfig(warmup=1, runs=10, min_runs=3, max_seconds=0.25)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    cut_points: tuple[CutPoint, ...]
    block_profiles: tuple[BlockProfile, ...]
    selected: tuple[int, ...]  # indices of the cut points whose blocks were profiled


def profile_model(
    model: bytes,
    data: EvalData,
    methods: Mapping[str, str],
    *,
    max_cuts: int = MAX_PROFILED_CUTS,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    config: MeasureConfig = IMPORT_PROFILE_CONFIG,
    workdir: str | Path | None = None,
    progress: profile.ProgressFn | None = None,
) -> ModelProfile:
    """Cut points of ``model`` and its block profiles at each precision of ``methods`` (precision ->
    the method that built its variant). Progress: one step for the cut points, then one per precision."""
    steps = 1 + len(methods)
    graph = partition.ModelGraph(model)
    cuts = graph.cut_points
    selected = graph.select(max_cuts)
    if progress is not None:
        progress(1, steps, f"{len(cuts)} cut points; profiling blocks between {len(selected)}")
    blocks: tuple[BlockProfile, ...] = ()
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
        blocks = tuple(_block(b) for b in table.blocks)
    return ModelProfile(tuple(_cut(c) for c in cuts), blocks, tuple(c.index for c in selected))


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


def _block(b: profile.BlockProfile) -> BlockProfile:
    return BlockProfile(
        start_cut=b.start or 0,
        end_cut=b.end or 0,
        precision=b.precision,
        batch_size=b.batch,
        latency_ms=b.latency_ms or 0.0,
        error=b.error or ("" if b.latency_ms is not None else "not measured"),
    )
