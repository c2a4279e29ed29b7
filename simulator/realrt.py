"""Real onnxruntime for a share of the virtual devices (``workload.real_fraction``), so the
simulated latencies stay tied to real execution: such a device times its model (or its own
segment) with onnxruntime on this host and scales the time by its hardware class, as the planner's
profiles are scaled. Sessions are shared by every device that runs the same artifact.

The artifacts are read from the controller's data directory (the same disk in both engines), never
through the ``ArtifactStore`` class, which owns and cleans that directory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class RealRuntime:
    def __init__(self, artifacts_root: Path, *, seed: int) -> None:
        self._root = artifacts_root / "sha256"
        self._sessions: dict[str, tuple[Any, dict[str, np.ndarray]] | None] = {}
        self._rng = np.random.default_rng(seed)
        self.runs = 0

    def time_ms(self, sha256: str) -> float | None:
        """Wall milliseconds of one batch-1 run of the artifact; None if it cannot be run here."""
        if not sha256:
            return None
        if sha256 not in self._sessions:
            self._sessions[sha256] = self._load(sha256)
        entry = self._sessions[sha256]
        if entry is None:
            return None
        session, feeds = entry
        started = time.perf_counter()
        session.run(None, feeds)
        self.runs += 1
        return (time.perf_counter() - started) * 1000

    def _load(self, sha256: str) -> tuple[Any, dict[str, np.ndarray]] | None:
        import onnxruntime as ort

        path = self._root / sha256
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # one phone's core, and the loop keeps the other
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            log.warning("artifact %s cannot be run with onnxruntime here: %s", sha256[:12], exc)
            return None
        feeds: dict[str, np.ndarray] = {}
        for spec in session.get_inputs():
            dtype = _DTYPES.get(spec.type)
            if dtype is None:
                log.warning(
                    "artifact %s: input %s of type %s is not simulated", sha256[:12], spec.name, spec.type
                )
                return None
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
            feeds[spec.name] = (
                self._rng.standard_normal(shape).astype(dtype)
                if dtype is np.float32
                else np.zeros(shape, dtype)
            )
        session.run(None, feeds)  # warm-up: the first run pays for allocations
        return session, feeds
