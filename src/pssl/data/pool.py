"""Unlabelled image pools of the downstream datasets (self-training's teacher labels them).

A pool is one or several folders of images, each searched recursively: the dataset's own unlabelled images
where its release has them (Cityscapes `leftImg8bit/train_extra`, the coarse set's 19,998 images), configured
folders (Zhu et al.'s pool: Cityscapes coarse + Mapillary, 40K images; or a subset of the indexed ImageNet
images), or the demo's `pools/<dataset>`. An image is named by its path relative to the folders' common parent
(`pool_base`; one folder: the folder itself), so names from several folders never collide. The demo also
writes the pool's hidden truth (`pool_truth/<dataset>/<image path>.png`, train ids) to score the teacher's
pseudo labels; training never reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pssl.data.downstream import DATASETS
from pssl.errors import InputError, MissingInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEMO_POOLS, DEMO_TRUTH = "pools", "pool_truth"


def pool_dir(dataset: str, dataset_root: str | Path) -> Path:
    """The default pool of `dataset`: its own unlabelled images, else the demo's pool under the dataset root."""
    own = DATASETS[dataset].pool
    return Path(dataset_root) / (own or f"{DEMO_POOLS}/{dataset}")


def pool_folders(dataset: str, dataset_root: str | Path, configured: str | list[str] | None = None) -> list[Path]:
    """The pool of `dataset`: the configured folder or folders, else its default pool (`pool_dir`)."""
    if not configured:
        return [pool_dir(dataset, dataset_root)]
    return [Path(f) for f in ([configured] if isinstance(configured, str) else configured)]


def pool_base(folders: list[str | Path]) -> Path:
    """The folders' common parent: the pool's image names are relative to it."""
    return Path(os.path.commonpath([Path(f).resolve() for f in folders]))


def truth_path(truth_root: str | Path, relpath: str) -> Path:
    return Path(truth_root) / Path(relpath).with_suffix(".png")


def list_pool(folders: list[str | Path], images: int = 0, seed: int = 0) -> list[str]:
    """The images of the pool's folders, as paths relative to `pool_base(folders)`, sorted; with `images`, the
    first N of one fixed random order (by `seed`), in sorted order."""
    base, found = pool_base(folders), set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MissingInput(f"unlabelled pool missing: {folder} is not a directory")
        prefix = folder.resolve().relative_to(base)
        images_here = {str(prefix / p.relative_to(folder)) for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
        if not images_here:
            raise MissingInput(f"unlabelled pool {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        found |= images_here
    found = sorted(found)
    if images and images < len(found):
        keep = np.sort(np.random.default_rng(seed).permutation(len(found))[:images])
        found = [found[i] for i in keep]
    return found


def pool_part(relpaths: list[str], part: int, parts: int) -> list[str]:
    """Part `part` of `parts` (every parts-th image): one teacher-inference job's share."""
    if not 0 <= part < parts:
        raise InputError(f"part {part} is not in 0..{parts - 1}")
    return relpaths[part::parts]
