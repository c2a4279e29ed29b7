"""Evaluation data for the model toolchain: an ``.npz`` whose arrays are named after the model's inputs.

An optional ``labels`` array (integer class ids, one per row) turns accuracy into task accuracy;
without it, variants are compared with the fp32 model's outputs. Everything is checked against the
model's declared inputs before any variant is built, so a wrong file fails in milliseconds with a
message that names the array and what is wrong, instead of deep inside a quantizer.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import InvalidArgument
from common.types import DataType, TensorSpec

logger = logging.getLogger(__name__)

LABELS = "labels"
_FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT16, DataType.FLOAT64)

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True, eq=False)
class EvalData:
    """Validated evaluation rows: one array per model input (same row count) and optional labels."""

    inputs: Mapping[str, Array]
    labels: Array | None = None

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def head(self, rows: int) -> EvalData:
        """The first ``rows`` rows (all of them if there are fewer)."""
        if rows >= self.rows:
            return self
        labels = None if self.labels is None else self.labels[:rows]
        return EvalData({name: arr[:rows] for name, arr in self.inputs.items()}, labels)

    def feed(self, start: int, stop: int) -> dict[str, Array]:
        """Rows ``start:stop`` as an onnxruntime feed."""
        return {name: arr[start:stop] for name, arr in self.inputs.items()}

    def batch_of(self, size: int) -> dict[str, Array]:
        """A feed of exactly ``size`` rows, repeating the data when it has fewer (for latency runs)."""
        index = np.arange(size) % self.rows
        return {name: arr[index] for name, arr in self.inputs.items()}


def is_float(spec: TensorSpec) -> bool:
    return spec.dtype in _FLOAT_TYPES


def class_output(outputs: Sequence[TensorSpec]) -> TensorSpec | None:
    """The output that gives one class per row: an integer [N] label, else a float [N, C] score."""
    for spec in outputs:
        if not is_float(spec) and spec.dtype is not DataType.BOOL and len(spec.shape) == 1:
            return spec
    for spec in outputs:
        if is_float(spec) and len(spec.shape) == 2:
            return spec
    return None


def load_eval_data(
    path: str | Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec] = (),
    *,
    where: str | None = None,
) -> EvalData:
    """Load ``path`` (an ``.npz``) and validate it against the model's ``inputs`` (and ``outputs``,
    which decide whether ``labels`` can be scored). Raises InvalidArgument naming the problem,
    prefixed with ``where`` (default: "eval data <file name>"; an upload's temp name means nothing)."""
    path = Path(path)
    where = where or f"eval data {path.name}"
    if not path.is_file():
        raise InvalidArgument(f"{where}: no such file: {path}")
    try:
        # allow_pickle=False: eval data is uploaded by users and must never execute code on load.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InvalidArgument(f"{where}: is a single .npy array; expected an .npz of named arrays")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except InvalidArgument:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy reports a non-npz file as "cannot load pickled data" or a zip error; both mean "not npz".
        raise InvalidArgument(f"{where}: not a readable .npz file ({_first_line(exc)})") from exc
    data = validate_eval_data(arrays, inputs, outputs, where=where)
    logger.info("loaded %s: %d rows, labels=%s", where, data.rows, data.labels is not None)
    return data


def validate_eval_data(
    arrays: Mapping[str, Array],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec] = (),
    *,
    where: str = "eval data",
) -> EvalData:
    """Check ``arrays`` against the model's inputs: names, dtype, rank, static dims, equal row counts."""
    if not inputs:
        raise InvalidArgument(f"{where}: the model has no inputs to feed")
    input_names = [spec.name for spec in inputs]
    present = ", ".join(sorted(arrays)) or "none"
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise InvalidArgument(
            f"{where}: no array for model input {', '.join(map(repr, missing))} (arrays present: {present}; "
            f"name arrays after the model inputs {', '.join(map(repr, input_names))} plus optional {LABELS!r})"
        )
    unknown = sorted(set(arrays) - set(input_names) - {LABELS})
    if unknown:
        raise InvalidArgument(
            f"{where}: array {', '.join(map(repr, unknown))} matches no model input "
            f"(model inputs: {', '.join(map(repr, input_names))}; the only other allowed array is {LABELS!r})"
        )

    fed = {spec.name: _check_input(arrays[spec.name], spec, where) for spec in inputs}
    first = inputs[0].name
    rows = int(fed[first].shape[0])
    if rows == 0:
        raise InvalidArgument(f"{where}: array {first!r} has no rows")
    for name, arr in fed.items():
        if arr.shape[0] != rows:
            raise InvalidArgument(
                f"{where}: array {name!r} has {arr.shape[0]} rows but {first!r} has {rows}; "
                "every array needs the same number of rows"
            )
    for spec in inputs:
        # A fixed batch dimension (e.g. [1, 3, 224, 224]) is fed in batches of that size.
        if spec.shape[0] > 0 and rows % spec.shape[0]:
            raise InvalidArgument(
                f"{where}: model input {spec.name!r} has a fixed batch of {spec.shape[0]}, "
                f"so the row count must be a multiple of it (got {rows})"
            )

    labels = arrays.get(LABELS)
    if labels is not None:
        _check_labels(labels, rows, outputs, where)
    return EvalData(fed, labels)


def _check_input(arr: Array, spec: TensorSpec, where: str) -> Array:
    expected = np.dtype(spec.dtype.value)
    if arr.dtype != expected:
        raise InvalidArgument(
            f"{where}: array {spec.name!r} has dtype {arr.dtype} but model input {spec.name!r} "
            f"expects {expected}"
        )
    if not spec.shape:
        raise InvalidArgument(
            f"{where}: model input {spec.name!r} is a scalar; eval data needs a leading row dimension"
        )
    if arr.ndim != len(spec.shape):
        raise InvalidArgument(
            f"{where}: array {spec.name!r} has rank {arr.ndim} (shape {list(arr.shape)}) but model input "
            f"{spec.name!r} has rank {len(spec.shape)} (shape {_shape_text(spec.shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if axis > 0 and want >= 0 and want != got:
            raise InvalidArgument(
                f"{where}: array {spec.name!r} has shape {list(arr.shape)} but model input {spec.name!r} "
                f"needs {want} at dimension {axis} (shape {_shape_text(spec.shape)})"
            )
    return arr


def _check_labels(labels: Array, rows: int, outputs: Sequence[TensorSpec], where: str) -> None:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InvalidArgument(
            f"{where}: array {LABELS!r} must be a 1-D array of integer class ids; "
            f"got dtype {labels.dtype}, shape {list(labels.shape)}"
        )
    if labels.shape[0] != rows:
        raise InvalidArgument(
            f"{where}: array {LABELS!r} has {labels.shape[0]} rows but the inputs have {rows}"
        )
    if outputs and class_output(outputs) is None:
        raise InvalidArgument(
            f"{where}: has {LABELS!r} but the model has no class output to score them against "
            "(an integer [N] label or a float [N, classes] score); drop the labels to compare with fp32"
        )


def _shape_text(shape: Sequence[int]) -> str:
    # N: the dynamic row dimension; ?: any other dynamic dimension (e.g. sequence length).
    return (
        "[" + ", ".join(str(d) if d >= 0 else "N" if axis == 0 else "?" for axis, d in enumerate(shape)) + "]"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
