"""The ImageNet-layout index: one row per image, stable order, class ids from the sorted wnid folders.

Scanning uses only directory listings (no image decoding, no per-file stat), so 1.28M files take seconds.
The root and the class list travel in the parquet schema metadata, so later stages need only the index.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pssl.errors import InputError, MissingInput
from pssl.settings import IndexSettings
from pssl.tables import write_table

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
INDEX_COLUMNS = ("image_id", "relpath", "wnid", "class_idx")


def _images_in(directory: str) -> list[str]:
    return [e.name for e in os.scandir(directory)
            if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()]


def spread(folders: list[str], n: int) -> list[str]:
    """`n` of the sorted `folders`, evenly spread: folder i * len / n for i < n (100 of 1000: every 10th,
    starting with the first); all of them for n = 0."""
    if n > len(folders):
        raise InputError(f"imagenet_subset asks for {n} classes, the tree has {len(folders)} class folders")
    return folders if not n else [folders[i * len(folders) // n] for i in range(n)]


def scan_imagenet(root: str | os.PathLike, labelled: bool = True, subset: IndexSettings = IndexSettings()
                  ) -> tuple[pd.DataFrame, list[str]]:
    """Return (index frame, sorted class list) for `root`/<wnid>/<image> (and loose images in `root`).

    Loose images directly under `root`, and every image when `labelled` is false, get class_idx -1. A `subset`
    (a pilot's slice) keeps `classes` folders evenly spread over the sorted ones and the first
    `images_per_class` images of each by file name, without loose images: the index a tree of symlinks to
    those files would give, its classes the chosen folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"image root {str(root)!r} is not a directory")
    class_dirs = spread(sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")),
                        subset.classes)
    cap = subset.images_per_class or None
    relpaths, wnids = [], []
    for wnid in class_dirs:
        names = sorted(_images_in(os.path.join(root, wnid)))[:cap]
        if not names:
            log.warning("class folder %s holds no images", wnid)
        relpaths += [f"{wnid}/{n}" for n in names]
        wnids += [wnid] * len(names)
    loose = [] if subset.classes else sorted(_images_in(str(root)))[:cap]
    relpaths += loose
    wnids += [""] * len(loose)
    if not relpaths:
        raise MissingInput(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    frame = pd.DataFrame({"relpath": relpaths, "wnid": wnids}).sort_values("relpath", kind="stable")
    class_of = {w: i for i, w in enumerate(class_dirs)} if labelled else {}
    frame["class_idx"] = frame["wnid"].map(class_of).fillna(-1).astype("int32")
    frame.insert(0, "image_id", pd.RangeIndex(len(frame), dtype="int64"))
    return frame.reset_index(drop=True), class_dirs if labelled else []


def build_index(root: str | os.PathLike, out: str | os.PathLike, labelled: bool = True,
                subset: IndexSettings = IndexSettings()) -> pd.DataFrame:
    frame, classes = scan_imagenet(root, labelled, subset)
    sliced = {"subset": asdict(subset)} if subset != IndexSettings() else {}
    write_table(frame, out, {"root": str(Path(root).resolve()), "classes": classes, **sliced})
    n_labelled = int((frame["class_idx"] >= 0).sum())
    log.info(f"indexed {len(frame)} images ({n_labelled} labelled, {len(classes)} classes) under {root}"
             + (f" (slice: {subset.classes or 'all'} classes x {subset.images_per_class or 'all'} images)"
                if sliced else "") + f" -> {out}")
    return frame
