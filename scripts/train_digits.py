"""Train the digits demo model and write digits.onnx, digits_test.npz and digits_sample.npy.

Usage: python scripts/train_digits.py --out DIR   (needs the ``models`` extra; no network)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from controller.toolchain.digits import build_digits_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the artifacts to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    artifacts = build_digits_model(args.out)
    print(f"model:    {artifacts.model_path} ({artifacts.model_path.stat().st_size} bytes)")
    print(f"test set: {artifacts.test_path} ({artifacts.n_test} rows)")
    print(f"sample:   {artifacts.sample_path}")
    print(f"test accuracy: {artifacts.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
