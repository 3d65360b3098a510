"""Build dlai_diffusion/assets/mnist_subset.npz: a balanced, real MNIST subset for offline use.

Reads the four canonical MNIST files from ``<root>/mnist/`` (MD5-checked and parsed by
``dlai_diffusion.data``), draws a fixed number of digits per class from each split with a
fixed seed, and stores them unchanged (uint8) in a compressed ``.npz`` with the keys
``{split}_images`` (n, 28, 28), ``{split}_labels`` (n,) and ``{split}_indices`` (positions in
the original files, sorted). The subset is a derived work of MNIST, CC BY-SA 3.0 (see
``dlai_diffusion/assets/MNIST_LICENSE.txt``).

    python scripts/make_mnist_subset.py --root ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from dlai_diffusion import data

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data"
DEFAULT_OUTPUT = REPO / "dlai_diffusion" / "assets" / data.MNIST_SUBSET


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` positions of each label value, drawn without replacement, sorted."""
    chosen = []
    for digit in np.unique(labels):
        candidates = np.flatnonzero(labels == digit)
        if len(candidates) < per_class:
            raise ValueError(f"class {digit} has {len(candidates)} digits, fewer than {per_class}")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding mnist/")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--download", action="store_true", help="download missing files")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        images, labels = data.mnist_arrays(split, root=args.root, download=args.download)
        index = balanced_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index]
        arrays[f"{split}_indices"] = index.astype(np.int32)
        counts = np.bincount(labels[index], minlength=10)
        print(f"{split}: {len(index)} digits, per class {counts.tolist()}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    size = args.output.stat().st_size
    print(f"wrote {args.output} ({size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
