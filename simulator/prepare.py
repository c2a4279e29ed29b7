"""A controller data directory with the scenario's model imported, built once and reused.

The import is the product's own (``fleetctl serve`` and ``models import``: variants, cut points and
block profiles measured on this host), done by a real controller process; the result is cached by
what it depends on, so repeated runs (and the determinism check) plan against the same profiles.
Each run works on a copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common.errors import InvalidArgument
from controller.client import AdminClient
from simulator.processes import start_controller
from simulator.scenario import ModelSpec

log = logging.getLogger(__name__)

#: Bumped when what the cache holds changes meaning.
CACHE_FORMAT = 1
PRECISIONS = ("fp32", "int8")


def _key(model: ModelSpec, base: Path) -> str:
    parts: dict[str, object] = {"format": CACHE_FORMAT, "name": model.name, "source": model.source}
    if model.source != "digits":
        path = (base / model.source).resolve()
        parts["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        if model.eval_data:
            parts["eval_sha256"] = hashlib.sha256((base / model.eval_data).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def prepared_data_dir(model: ModelSpec, *, scenario_dir: Path, cache: Path) -> Path:
    """The cached data dir for ``model`` (building it on first use)."""
    target = cache / f"{model.name}-{_key(model, scenario_dir)}"
    if (target / "READY").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".building-") as tmp:
        work = Path(tmp)
        model_path, eval_path = _model_files(model, scenario_dir, work)
        data_dir = work / "controller"
        proc, address = start_controller(data_dir, 0, heartbeat=None, log_level="warning", timeout=60)
        try:
            with AdminClient(address, timeout_s=600) as admin:
                precisions = PRECISIONS if eval_path is not None else ()
                admin.import_model(model_path, name=model.name, eval_data=eval_path, precisions=precisions)
        finally:
            proc.terminate()
        (data_dir / "READY").write_text("imported\n")
        if target.exists():  # a half-built leftover from an interrupted run
            shutil.rmtree(target)
        data_dir.rename(target)
    log.info("prepared controller data for model %s in %s", model.name, target)
    return target


def _model_files(model: ModelSpec, base: Path, work: Path) -> tuple[Path, Path | None]:
    if model.source == "digits":
        from controller.toolchain.digits import build_digits_model

        digits = build_digits_model(work / "model")
        test = np.load(digits.test_path)
        eval_path = work / "model" / "digits_eval.npz"
        np.savez(eval_path, input=test["x"].astype(np.float32), labels=test["y"].astype(np.int64))
        return digits.model_path, eval_path
    path = base / model.source
    if not path.is_file():
        raise InvalidArgument(f"model.source {model.source!r}: no such file under {base}")
    return path, (base / model.eval_data) if model.eval_data else None


def copy_for_run(prepared: Path, run_dir: Path) -> Path:
    data_dir = run_dir / "controller"
    shutil.copytree(prepared, data_dir)
    return data_dir
