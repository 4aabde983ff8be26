"""Figures from explain stores (matplotlib): for each image, the image | its ensemble deciles | the D9 pseudo
label (| one panel per model), at the image's own aspect ratio, titled with the explained class's name and
the image id, with one decile colour bar.

    pssl show <store> --index 3 --out d.png      one image (the suffix picks PNG, PDF or SVG)
    gallery(stores, out)                           the report's sample, spread over the explained classes
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display (compute nodes have none)
from matplotlib.colors import ListedColormap  # noqa: E402

from pssl import store
from pssl.data.images import load_rgb, resize_nearest
from pssl.errors import InputError
from pssl.io import atomic_file
from pssl.tables import read_table

log = logging.getLogger(__name__)

DECILE_CMAP = "magma"  # perceptually uniform, readable in greyscale print


@dataclass(frozen=True)
class StoredImage:
    """One explained image of a store, with what its figure panels need."""
    rgb: np.ndarray           # (H, W, 3), the original image
    deciles: np.ndarray       # (S, S) ensemble deciles
    model_deciles: list[tuple[str, np.ndarray]]  # (model name, (S, S)) when kept and asked for
    title: str                # explained class and image id


@functools.lru_cache(maxsize=None)
def class_names(image_root: str) -> dict[str, str]:
    """wnid -> short class name from the LOC_synset_mapping.txt that ImageNet's (and the demo's) layout keeps
    beside or above the train folder; {} when there is none (figures then show wnids)."""
    root = Path(image_root)
    for folder in [root, *root.parents][:5]:
        mapping = folder / "LOC_synset_mapping.txt"
        if mapping.is_file():
            pairs = (line.split(" ", 1) for line in mapping.read_text().splitlines() if " " in line)
            return {wnid: name.split(",")[0].strip() for wnid, name in pairs}
    return {}


@functools.lru_cache(maxsize=None)
def shard_table(path: str):
    """A store's shard table, read once however many of its images a figure shows."""
    return read_table(path)


def read_image(group, row: int, with_models: bool = False) -> StoredImage:
    """Row `row` of an explain store (status done) with its image, read through the store's shard table."""
    n = group["status"].shape[0]
    if not 0 <= row < n:
        raise InputError(f"--index {row} is outside the store's {n} images")
    status = int(group["status"][row])
    if status != store.DONE:
        reason = group.attrs["unreadable"].get(str(int(group["image_id"][row])), "")
        raise InputError(f"image {row} has status {store.STATUS_NAMES[status]} {reason}".strip())
    frame, meta = shard_table(group.attrs["shard_table"])
    rgb = load_rgb(Path(meta["root"]) / frame["relpath"].iloc[row])
    target = int(group["target"][row])
    classes = group.attrs.get("classes", [])  # what `target` numbers (pssl.classes)
    wnid = classes[target] if 0 <= target < len(classes) else f"class {target}"
    name = class_names(meta["root"]).get(wnid, wnid)
    models = []
    if with_models and "model_deciles" in group:
        names = [m["name"] for m in group.attrs["models"]]
        models = list(zip(names, group["model_deciles"][row]))
    return StoredImage(rgb, group["deciles"][row], models, f"{name} (image {int(group['image_id'][row])})")


def draw_image(axes, image: StoredImage):
    """Fill one row of axes: image, ensemble deciles, D9 pseudo label, then each model's deciles. Decile maps
    are shown at the image's size (nearest neighbour, as pre-training maps them back); returns the last
    decile artist (for a colour bar)."""
    h, w = image.rgb.shape[:2]
    axes[0].imshow(image.rgb)
    axes[0].set_title(image.title, fontsize=8)
    shown = axes[1].imshow(resize_nearest(image.deciles, (h, w)), cmap=DECILE_CMAP, vmin=-0.5, vmax=9.5,
                           interpolation="nearest")
    axes[1].set_title("ensemble deciles", fontsize=8)
    foreground = resize_nearest(image.deciles == 9, (h, w))
    axes[2].imshow(image.rgb)
    axes[2].imshow(np.ma.masked_where(~foreground, foreground), cmap=ListedColormap(["#ff2020"]), alpha=0.55,
                   interpolation="nearest")
    axes[2].set_title("D9 pseudo label (foreground)", fontsize=8)
    for ax, (name, deciles) in zip(axes[3:], image.model_deciles):
        shown = ax.imshow(resize_nearest(deciles, (h, w)), cmap=DECILE_CMAP, vmin=-0.5, vmax=9.5,
                          interpolation="nearest")
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    return shown


def save_figure(images: list[StoredImage], out: str | Path, per_row: int = 1, extra_formats=(),
                dpi: int = 150) -> None:
    """Several images: `per_row` images (3 panels each) per figure row. One image: its panels (3 + one per
    model) wrapped at 6 per row. One decile colour bar; PNG, PDF or SVG by the file's suffix."""
    import matplotlib.pyplot as plt

    panels = 3 + max(len(i.model_deciles) for i in images)
    if len(images) == 1:
        cols = min(6, panels)
        rows = -(-panels // cols)
    else:
        cols, rows = per_row * panels, -(-len(images) // per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.6), squeeze=False,
                             layout="constrained")
    if len(images) == 1:
        shown = draw_image(axes.flat[:panels], images[0])
    else:
        for k, image in enumerate(images):
            r, c = divmod(k, per_row)
            shown = draw_image(axes[r, c * panels:(c + 1) * panels], image)
    for ax in axes.flat:
        if not ax.images:
            ax.set_axis_off()
    bar = fig.colorbar(shown, ax=axes, ticks=range(10), fraction=0.02, pad=0.01)
    bar.set_label("decile of the ensemble saliency (9: top 10%)", fontsize=8)
    out = Path(out)
    for path in (out, *(out.with_suffix(f".{kind}") for kind in extra_formats)):
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)


def show_store_image(store_path, row: int, out, model_deciles: bool = False) -> Path:
    image = read_image(store.open_store(store_path), row, with_models=model_deciles)
    save_figure([image], out)
    log.info(f"wrote {out}")
    return Path(out)


def spread_sample(stores: list[str], count: int) -> list[tuple[str, int]]:
    """Up to `count` (store, row) pairs of explained images, one per explained class in turn (round robin over
    the classes in order of first appearance), so the sample shows many classes, not one shard's first rows."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for path in stores:
        group = store.open_store(path)
        targets, status = group["target"][:], group["status"][:]
        for row in np.flatnonzero(status == store.DONE):
            by_class.setdefault(int(targets[row]), []).append((path, int(row)))
    queues = list(by_class.values())
    sample = []
    while len(sample) < count and any(queues):
        for queue in queues:
            if queue and len(sample) < count:
                sample.append(queue.pop(0))
    return sample


def gallery(stores: list[str], out: str | Path, count: int = 12) -> None:
    """The report's pseudo-label gallery: `count` images spread over the classes, two per figure row; PNG at
    `out` and a PDF beside it."""
    groups = {path: store.open_store(path) for path in stores}
    images = [read_image(groups[path], row) for path, row in spread_sample(stores, count)]
    if not images:
        raise InputError("no explained image in the stores: nothing to show in the gallery")
    save_figure(images, out, per_row=2, extra_formats=("pdf",), dpi=100)
