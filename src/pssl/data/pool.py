"""Unlabelled image pools of the downstream datasets (self-training's teacher labels them).

A pool is a folder of images, searched recursively: the dataset's own unlabelled images where its release
has them (Cityscapes `leftImg8bit/train_extra`, the coarse set's 19,998 images), any configured folder
(e.g. a subset of the indexed ImageNet images), or the demo's `pools/<dataset>`. The demo also writes the
pool's hidden truth (`pool_truth/<dataset>/<image path>.png`, train ids) to score the teacher's pseudo
labels; training never reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pssl.data.downstream import DATASETS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEMO_POOLS, DEMO_TRUTH = "pools", "pool_truth"


def pool_dir(dataset: str, dataset_root: str | Path, configured: str | None = None) -> Path:
    """The pool of `dataset`: the configured folder, else the dataset's own unlabelled images, else the
    demo's pool under the dataset root."""
    if configured:
        return Path(configured)
    own = DATASETS[dataset].pool
    return Path(dataset_root) / (own or f"{DEMO_POOLS}/{dataset}")


def truth_path(truth_root: str | Path, relpath: str) -> Path:
    return Path(truth_root) / Path(relpath).with_suffix(".png")


def list_pool(root: str | Path, images: int = 0, seed: int = 0) -> list[str]:
    """The pool's image paths relative to `root`, sorted; with `images`, the first N of one fixed random
    order (by `seed`), in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"unlabelled pool missing: {root} is not a directory")
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise FileNotFoundError(f"unlabelled pool {root} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    if images and images < len(found):
        keep = np.sort(np.random.default_rng(seed).permutation(len(found))[:images])
        found = [found[i] for i in keep]
    return found


def pool_part(relpaths: list[str], part: int, parts: int) -> list[str]:
    """Part `part` of `parts` (every parts-th image): one teacher-inference job's share."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    return relpaths[part::parts]
