"""onnxruntime-backed model runtime for the agent daemon (I/O side; the sans-IO core never imports it).

``load_model`` turns an artifact on disk into a ``LoadedModel`` that has already answered one
inference (a smoke test on zeros), so a model that cannot run is refused before it replaces the one
serving. ``ModelSlot`` holds the serving model; swapping is one pointer assignment under a lock, and
callers take ``slot.active`` once per request, so a swap never disturbs an inference already running
on the old session.

Nothing here logs: the daemon reports what happened, with the device id in every line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from common.errors import EdgefleetError, InvalidArgument, PermanentError
from common.tensors import dtype_from_onnx_type, spec_matches
from common.types import AssignmentFailure, TensorSpec

_CPU = ("CPUExecutionProvider",)


class ModelLoadError(PermanentError):
    """The artifact cannot become the active model; ``failure`` is what the agent reports."""

    def __init__(self, message: str, *, failure: AssignmentFailure) -> None:
        super().__init__(message, code=failure.value)
        self.failure = failure


class LoadedModel:
    """One onnxruntime session plus what the agent reports about it. Safe to share between threads."""

    def __init__(
        self,
        session: Any,
        *,
        path: Path,
        sha256: str,
        model_name: str,
        variant: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
    ) -> None:
        self._session = session
        self.path = path
        self.sha256 = sha256
        self.model_name = model_name
        self.variant = variant
        self.inputs = inputs
        self.outputs = outputs
        self._input_specs = {s.name: s for s in inputs}
        self._output_names = tuple(s.name for s in outputs)
        # Failures come back to the caller as exceptions carrying onnxruntime's message; stop it
        # from also printing each one to stderr (a client sending bad data could flood the log).
        # onnxruntime only reads RunOptions during run(), so one instance serves all threads.
        #: Smoothed wall time of one run (ms); callers use it to decide whether a hop to a worker
        #: thread is worth more than the run itself. Seeded by the smoke test.
        self.typical_run_ms = 0.0
        #: The same per row of the batch (ms): what a request of n rows is expected to take.
        self.typical_row_ms = 0.0
        #: How long ``load_model`` took, smoke test included (ms).
        self.load_ms = 0.0
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    def __repr__(self) -> str:
        return f"LoadedModel({self.model_name!r}, variant={self.variant!r}, sha256={self.sha256[:12]}...)"

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run the model; ``output_names`` empty means all outputs.

        Inputs are checked against the declared specs first, so a caller's mistake comes back as
        InvalidArgument naming the input rather than as an onnxruntime message.
        """
        feeds = self._check_inputs(inputs)
        wanted = tuple(output_names) or self._output_names
        unknown = [n for n in wanted if n not in self._output_names]
        if unknown:
            raise InvalidArgument(
                f"unknown output(s) {', '.join(map(repr, unknown))}; the model has "
                f"{', '.join(map(repr, self._output_names))}"
            )
        try:
            started = time.perf_counter()
            results = self._session.run(list(wanted), feeds, self._run_options)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            # A benign race between threads only blurs the average; no lock on the hot path.
            self.typical_run_ms += (
                0.1 * (elapsed_ms - self.typical_run_ms) if self.typical_run_ms else elapsed_ms
            )
            row_ms = elapsed_ms / _rows(feeds)
            self.typical_row_ms += 0.1 * (row_ms - self.typical_row_ms) if self.typical_row_ms else row_ms
        except OrtInvalidArgument as exc:
            # Data-dependent problems the specs cannot express (e.g. mismatched dynamic dims).
            raise InvalidArgument(f"model {self.model_name!r} rejected the input: {exc}") from exc
        except Exception as exc:  # onnxruntime raises a zoo of unrelated types; all are our bug or its
            raise EdgefleetError(f"model {self.model_name!r} failed to run: {exc}", code="internal") from exc
        return dict(zip(wanted, results, strict=True))

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = [n for n in inputs if n not in self._input_specs]
        if unknown:
            raise InvalidArgument(
                f"unknown input(s) {', '.join(map(repr, unknown))}; the model takes "
                f"{', '.join(map(repr, self._input_specs))}"
            )
        missing = [n for n in self._input_specs if n not in inputs]
        if missing:
            raise InvalidArgument(f"missing input(s) {', '.join(map(repr, missing))}")
        feeds: dict[str, np.ndarray] = {}
        for name, spec in self._input_specs.items():
            array = inputs[name]
            if not isinstance(array, np.ndarray):
                raise InvalidArgument(f"input {name!r} must be a numpy array, not {type(array).__name__}")
            problem = spec_matches(spec, array)
            if problem is not None:
                raise InvalidArgument(f"input {problem}")
            # No copy when already native-endian and contiguous; onnxruntime needs both.
            feeds[name] = np.ascontiguousarray(array, dtype=np.dtype(spec.dtype.value))
        return feeds


def load_model(
    path: Path,
    *,
    sha256: str,
    model_name: str,
    variant: str,
    threads: int = 1,
    providers: Sequence[str] = _CPU,
) -> LoadedModel:
    """Create a session for ``path`` and smoke-test it.

    ``threads`` is onnxruntime's intra-op thread count; the default of 1 keeps several agents on a
    small box from oversubscribing its cores. Raises ModelLoadError with LOAD_FAILED (onnxruntime
    refused the file, or it uses tensor types we cannot carry) or SMOKE_TEST_FAILED (it loaded but
    an inference on zeros failed or produced non-finite floats).
    """
    if threads < 1:
        raise InvalidArgument(f"threads must be at least 1, got {threads}")
    started = time.monotonic()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn idle CPU that neighbouring agents on the same box need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        inputs = tuple(_spec(arg) for arg in session.get_inputs())
        outputs = tuple(_spec(arg) for arg in session.get_outputs())
    except Exception as exc:  # any refusal by onnxruntime, whatever its exception type
        raise ModelLoadError(
            f"cannot load model {model_name!r} ({sha256[:12]}): {exc}", failure=AssignmentFailure.LOAD_FAILED
        ) from exc

    model = LoadedModel(
        session,
        path=Path(path),
        sha256=sha256,
        model_name=model_name,
        variant=variant,
        inputs=inputs,
        outputs=outputs,
    )
    _smoke_test(model)
    model.load_ms = (time.monotonic() - started) * 1000
    return model


def _spec(arg: Any) -> TensorSpec:
    """TensorSpec of an onnxruntime NodeArg; symbolic or unknown dimensions become -1."""
    try:
        dtype = dtype_from_onnx_type(arg.type)
    except InvalidArgument as exc:
        raise ModelLoadError(
            f"{arg.name!r} has type {arg.type}, which edgefleet cannot carry: {exc}",
            failure=AssignmentFailure.LOAD_FAILED,
        ) from exc
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def _smoke_test(model: LoadedModel) -> None:
    feeds = {
        s.name: np.zeros(tuple(1 if d < 0 else d for d in s.shape), dtype=np.dtype(s.dtype.value))
        for s in model.inputs
    }
    try:
        results = model.infer(feeds)
    except EdgefleetError as exc:
        raise ModelLoadError(
            f"model {model.model_name!r} failed its smoke test on zeros: {exc}",
            failure=AssignmentFailure.SMOKE_TEST_FAILED,
        ) from exc
    for name, value in results.items():
        if not isinstance(value, np.ndarray):
            raise ModelLoadError(
                f"model {model.model_name!r} output {name!r} is {type(value).__name__}, not a tensor",
                failure=AssignmentFailure.SMOKE_TEST_FAILED,
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ModelLoadError(
                f"model {model.model_name!r} output {name!r} is not finite on all-zero input",
                failure=AssignmentFailure.SMOKE_TEST_FAILED,
            )


class ModelSlot:
    """The serving model, swapped atomically.

    Readers take ``active`` once per request and keep using that object; nothing here closes a
    session, so an in-flight inference finishes on the model it started with. The slot keeps no
    reference to a replaced model: its memory goes as soon as the last request using it finishes
    (falling back to a last-known-good model is the agent core's business: it loads it again).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: LoadedModel | None = None

    @property
    def active(self) -> LoadedModel | None:
        return self._active  # one attribute read: atomic, no lock needed

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Make ``new`` active and return the previous active model (None if there was none)."""
        with self._lock:
            previous, self._active = self._active, new
            return previous


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    """The batch size of a request (the first dimension of its inputs; 1 for scalars)."""
    return max(1, min((a.shape[0] for a in feeds.values() if a.ndim), default=1))
