"""The ImageNet-layout index: one row per image, stable order, class ids from the sorted wnid folders.

Scanning uses only directory listings (no image decoding, no per-file stat), so 1.28M files take seconds.
The root and the class list travel in the parquet schema metadata, so later stages need only the index.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pssl.io import atomic_file

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
META_KEY = b"pssl"
INDEX_COLUMNS = ("image_id", "relpath", "wnid", "class_idx")


def _images_in(directory: str) -> list[str]:
    return [e.name for e in os.scandir(directory)
            if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()]


def scan_imagenet(root: str | os.PathLike, labelled: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Return (index frame, sorted class list) for `root`/<wnid>/<image> (and loose images in `root`).

    Loose images directly under `root`, and every image when `labelled` is false, get class_idx -1.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {str(root)!r} is not a directory")
    class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    relpaths, wnids = [], []
    for wnid in class_dirs:
        names = _images_in(os.path.join(root, wnid))
        if not names:
            log.warning("class folder %s holds no images", wnid)
        relpaths += [f"{wnid}/{n}" for n in names]
        wnids += [wnid] * len(names)
    loose = _images_in(str(root))
    relpaths += loose
    wnids += [""] * len(loose)
    if not relpaths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    frame = pd.DataFrame({"relpath": relpaths, "wnid": wnids}).sort_values("relpath", kind="stable")
    class_of = {w: i for i, w in enumerate(class_dirs)} if labelled else {}
    frame["class_idx"] = frame["wnid"].map(class_of).fillna(-1).astype("int32")
    frame.insert(0, "image_id", pd.RangeIndex(len(frame), dtype="int64"))
    return frame.reset_index(drop=True), class_dirs if labelled else []


def write_table(frame: pd.DataFrame, path: str | os.PathLike, meta: dict) -> None:
    """Write `frame` as parquet with the pipeline's metadata, atomically."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta)})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a parquet table written by `write_table`: (frame, pipeline metadata)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return table.to_pandas(), meta


def count_rows(path: str | os.PathLike) -> int:
    """Rows of a parquet table, from its footer alone (the workflow sizes SLURM runtimes with it)."""
    return pq.ParquetFile(path).metadata.num_rows


def build_index(root: str | os.PathLike, out: str | os.PathLike, labelled: bool = True) -> pd.DataFrame:
    frame, classes = scan_imagenet(root, labelled)
    write_table(frame, out, {"root": str(Path(root).resolve()), "classes": classes})
    n_labelled = int((frame["class_idx"] >= 0).sum())
    print(f"indexed {len(frame)} images ({n_labelled} labelled, {len(classes)} classes) under {root} -> {out}")
    return frame
