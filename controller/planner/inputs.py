"""From what the controller knows (a registered ``Model``) to what the planner reads (``PlannerModel``).

Pure functions of domain values. A model is plannable once an import has built its variants and
profiled its blocks (``fleetctl models import --eval-data --precisions``): the blocks between the
profiled cut points become the planner's blocks; a precision is offered when every block has a
batch-1 time at it and a whole-model variant exists (the fallback is always a whole variant).

Quality is relative to fp32: task accuracy over fp32's when the eval data had labels, else the
cosine similarity to fp32 (agreement for class outputs). Where a per-block measurement is missing —
weights per block, or a block's own quality loss — the whole variant's figure is spread over the
blocks in proportion to their fp32 time, and the model says so (``estimated_loss``), so an
explanation never passes an estimate off as a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from common.types import CutPoint, Model, ModelVariant, TensorSpec
from controller.planner.types import HOST, PRECISIONS, PlannerModel, VariantInfo

#: A dimension the model leaves open (other than the batch) counts as this many elements when
#: estimating bytes on the wire: small, so an unknown does not make every cut look expensive.
UNKNOWN_DIM = 1


def planner_model(model: Model) -> PlannerModel | None:
    """The planner's view of ``model``; None when it has no usable block profile yet."""
    blocks = [b for b in model.block_profiles if not b.error and b.latency_ms > 0]
    cuts = sorted({c for b in blocks for c in (b.start_cut, b.end_cut) if c > 0})
    spans = list(zip([0, *cuts], [*cuts, 0], strict=True))
    times: dict[tuple[str, str, int], tuple[float, ...]] = {}
    for precision in {b.precision for b in blocks}:
        for batch in sorted({b.batch_size for b in blocks}):
            found = {
                (b.start_cut, b.end_cut): b.latency_ms
                for b in blocks
                if (b.precision, b.batch_size) == (precision, batch)
            }
            if all(s in found for s in spans):
                times[(HOST, precision, batch)] = tuple(found[s] for s in spans)
    variants = {v.precision or v.variant: v for v in model.variants}
    precisions = tuple(p for p in PRECISIONS if (HOST, p, 1) in times and p in variants)
    if "fp32" not in precisions:
        return None
    fp32 = variants["fp32"]
    quality = {p: _quality(variants[p], fp32) for p in precisions}
    share = _shares(times[(HOST, "fp32", 1)])
    block_bytes = {p: tuple(int(variants[p].size_bytes * s) for s in share) for p in precisions}
    block_loss = {p: tuple((1.0 - quality[p]) * s for s in share) for p in precisions}
    by_index = {c.index: c for c in model.cut_points}
    boundary = [_bytes(fp32.inputs), *(_cut_bytes(by_index.get(c)) for c in cuts), _bytes(fp32.outputs)]
    return PlannerModel(
        name=model.name,
        cut_indices=tuple(cuts),
        boundary_bytes=tuple(boundary),
        precisions=precisions,
        block_ms=times,
        block_bytes=block_bytes,
        block_loss=block_loss,
        variants={p: VariantInfo(p, variants[p].size_bytes, quality[p]) for p in precisions},
        estimated_loss=frozenset(p for p in precisions if p != "fp32"),
    )


def _quality(v: ModelVariant, fp32: ModelVariant) -> float:
    if v is fp32:
        return 1.0
    if v.accuracy is not None and fp32.accuracy:
        return min(1.0, v.accuracy / fp32.accuracy)
    if v.cosine is not None:
        return v.cosine
    if v.agreement is not None:
        return v.agreement
    return 1.0 if v.precision == "fp32" else 0.0  # unmeasured: never preferred over a measured one


def _shares(times: Sequence[float]) -> list[float]:
    total = sum(times)
    return [t / total for t in times] if total > 0 else [1.0 / len(times)] * len(times)


def _bytes(specs: Sequence[TensorSpec]) -> int:
    """Bytes per sample of tensors as declared (the first dimension is the batch)."""
    total = 0
    for spec in specs:
        dims = [d if d > 0 else UNKNOWN_DIM for d in spec.shape[1:]]
        total += math.prod(dims) * spec.dtype.itemsize
    return total


def _cut_bytes(cut: CutPoint | None) -> int:
    if cut is None:
        return 0
    if cut.bytes_per_sample >= 0:
        return cut.bytes_per_sample
    return _bytes(cut.tensors)
