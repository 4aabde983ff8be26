"""The explain store: one zarr v3 group per shard. The only module that knows its layout.

Arrays (N images, S = explanation resolution, M models):
  deciles        uint8 (N, S, S)  0..9, one image per chunk, sharded, compressed
  model_deciles  uint8 (N, M, S, S)  optional (keep_model_deciles)
  image_id int64 (N,), orig_hw int32 (N, 2)
  class_idx      int16 (N,)  the image's label: a position in the shard table's `classes` (-1: unlabelled)
  target         int16 (N,)  the class explained: a position in attrs["classes"] (pssl.classes)
  status         uint8 (N,)  0 = not yet, 1 = done, 2 = unreadable input (reason in attrs["unreadable"])
Attrs: format_version, models, classes, smoothgrad parameters, config_hash, timing, unreadable, and the
labels' stability (D9 IoU of two noise draws, pssl.explain.run).

Every array names its dimensions (image, model, y, x, hw) and the decile arrays list image_id and class_idx
as their coordinates, so `xarray.open_zarr(store)` gives a Dataset with named dimensions and the image ids
as a coordinate; a finished store carries consolidated metadata (one read lists the group).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from pssl.errors import InputError, MissingInput

FORMAT_VERSION = 1
PENDING, DONE, UNREADABLE = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", UNREADABLE: "unreadable"}
# Chosen by measurement (benchmarks/store_codecs.py, numbers in benchmarks/README.md): on demo decile maps
# zstd level 9 was the smallest of the codecs tried (1005 bytes per 48 x 48 map vs 1095 for bit-shuffled
# blosc-zstd), and its 0.8 ms per image to write is nothing next to explaining the image.
DECILE_CODEC = ZstdCodec(level=9)
IMAGES_PER_ZARR_SHARD = 256
COORDINATES = "image_id class_idx"  # CF "coordinates": what xarray attaches to each image of a decile array


def create_store(path: str | os.PathLike, image_ids: np.ndarray, class_idx: np.ndarray, size: int,
                 n_models: int, keep_model_deciles: bool, attrs: dict,
                 codec=DECILE_CODEC) -> zarr.Group:
    n = len(image_ids)
    per_shard = max(1, min(n, IMAGES_PER_ZARR_SHARD))
    group = zarr.create_group(store=str(path), zarr_format=3, overwrite=True)
    maps = group.create_array("deciles", shape=(n, size, size), dtype="uint8", chunks=(1, size, size),
                              shards=(per_shard, size, size), compressors=codec, fill_value=0,
                              dimension_names=("image", "y", "x"))
    maps.attrs["coordinates"] = COORDINATES
    if keep_model_deciles:
        maps = group.create_array("model_deciles", shape=(n, n_models, size, size), dtype="uint8",
                                  chunks=(1, n_models, size, size), shards=(per_shard, n_models, size, size),
                                  compressors=codec, fill_value=0, dimension_names=("image", "model", "y", "x"))
        maps.attrs["coordinates"] = COORDINATES
    per_image = {"chunks": (max(1, n),), "dimension_names": ("image",)}
    group.create_array("image_id", data=np.asarray(image_ids, dtype="int64"), **per_image)
    group.create_array("class_idx", data=np.asarray(class_idx, dtype="int16"), **per_image)
    group.create_array("target", shape=(n,), dtype="int16", fill_value=-1, **per_image)
    group.create_array("orig_hw", shape=(n, 2), dtype="int32", chunks=(max(1, n), 2), fill_value=0,
                       dimension_names=("image", "hw"))
    group.create_array("status", shape=(n,), dtype="uint8", fill_value=PENDING, **per_image)
    group.attrs.update({"format_version": FORMAT_VERSION, "unreadable": {}, **attrs})
    return group


def consolidate(path: str | os.PathLike) -> None:
    """Write the finished store's consolidated metadata (zarr-python's extension to v3; xarray reads it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))


def open_store(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    if mode in ("r", "r+") and not os.path.exists(path):
        raise MissingInput(f"{path} does not exist")
    group = zarr.open_group(str(path), mode=mode)
    version = group.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: explain store format {version}, this pssl reads {FORMAT_VERSION}")
    return group


def write_rows(group: zarr.Group, start: int, stop: int, *, status: np.ndarray, orig_hw: np.ndarray,
               target: np.ndarray, deciles: np.ndarray, model_deciles: np.ndarray | None,
               unreadable: dict[int, str]) -> None:
    """Write rows [start, stop). Status goes last, so status == done always means the data is there."""
    group["deciles"][start:stop] = deciles
    if model_deciles is not None and "model_deciles" in group:
        group["model_deciles"][start:stop] = model_deciles
    group["orig_hw"][start:stop] = orig_hw
    group["target"][start:stop] = target
    if unreadable:
        group.attrs["unreadable"] = {**group.attrs["unreadable"], **{str(k): v for k, v in unreadable.items()}}
    group["status"][start:stop] = status


def stored_bytes(path: str | os.PathLike, array: str) -> int:
    root = Path(path) / array
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary: shapes, codec, bytes per image, status counts, decile histogram, attrs."""
    group = open_store(path)
    deciles = group["deciles"]
    status = group["status"][:]
    done = np.flatnonzero(status == DONE)
    lines = [f"explain store {path} (zarr v{group.metadata.zarr_format}, format {group.attrs['format_version']})"]
    for name in ("deciles", "model_deciles", "image_id", "class_idx", "target", "orig_hw", "status"):
        if name in group:
            a = group[name]
            lines.append(f"  {name:14s} {str(a.shape):22s} {str(a.dtype):6s} chunks {a.chunks}"
                         + (f" shards {a.shards}" if a.shards else ""))
    lines.append(f"  codec          {deciles.compressors}")
    n_bytes = stored_bytes(path, "deciles")
    lines.append(f"  deciles bytes  {n_bytes} on disk, {n_bytes / max(1, len(status)):.0f} per image "
                 f"({deciles.shape[1] * deciles.shape[2]} raw)")
    counts = {STATUS_NAMES[k]: int((status == k).sum()) for k in STATUS_NAMES}
    lines.append(f"  status         {counts}")
    if len(done):
        hist = np.bincount(deciles[done[:1000]].ravel(), minlength=10) if len(done) else np.zeros(10)
        frac = hist / hist.sum()
        lines.append("  decile histogram (first 1000 done): " + " ".join(f"{d}:{f:.3f}" for d, f in enumerate(frac)))
    attrs = dict(group.attrs)
    classes = attrs.pop("classes", [])  # 1000 names: summarised, not listed
    lines.append(f"  classes        {len(classes)}" + (f" ({classes[0]} .. {classes[-1]}), what target numbers"
                                                       if classes else " (an older store: none named)"))
    if "stability" in attrs:
        lines.append(f"  stability      D9 IoU {attrs['stability']['d9_iou']} between two noise draws on "
                     f"{attrs['stability']['images']} images (how far sampling alone moves the labels)")
    lines.append("  attrs:")
    lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(attrs.items())]
    return "\n".join(lines)
