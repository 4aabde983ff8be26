"""Figures from explain stores: image | ensemble heat map | D9 pseudo label (| one panel per model)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pssl import store
from pssl.data.images import load_rgb, resize_square
from pssl.io import atomic_file
from pssl.tables import read_table

log = logging.getLogger(__name__)

# A perceptual ramp (dark blue -> red -> yellow) for decile heat maps, one colour per decile.
HEAT = np.array([[20, 24, 82], [42, 40, 130], [70, 50, 160], [110, 50, 160], [150, 50, 140], [190, 60, 110],
                 [220, 90, 70], [240, 130, 40], [250, 180, 30], [252, 235, 90]], dtype=np.uint8)


def heat(deciles: np.ndarray) -> np.ndarray:
    return HEAT[deciles]


def overlay_d9(rgb: np.ndarray, deciles: np.ndarray) -> np.ndarray:
    """The image with D9 pixels (the pseudo label's foreground) tinted, background darkened."""
    d9 = (deciles == 9)[..., None]
    tint = np.array([255, 60, 60], dtype=np.float32)
    out = np.where(d9, 0.45 * rgb + 0.55 * tint, 0.45 * rgb)
    return out.astype(np.uint8)


def store_panels(group, row: int, rgb: np.ndarray, model_deciles: bool = False) -> list[tuple[str, np.ndarray]]:
    deciles = group["deciles"][row]
    size = deciles.shape[0]
    small = resize_square(rgb, size)
    panels = [("image", small), ("ensemble deciles", heat(deciles)), ("D9 pseudo label", overlay_d9(small, deciles))]
    if model_deciles and "model_deciles" in group:
        names = [m["name"] for m in group.attrs["models"]]
        panels += [(name, heat(d)) for name, d in zip(names, group["model_deciles"][row])]
    return panels


def grid(rows: list[list[tuple[str, np.ndarray]]], scale: int = 3, label_h: int = 14) -> Image.Image:
    """Panels (title, HxWx3) laid out in rows, each upscaled by `scale` with its title above it."""
    cell = max(p.shape[0] for row in rows for _, p in row) * scale
    ncol = max(len(row) for row in rows)
    canvas = Image.new("RGB", (ncol * (cell + 4), len(rows) * (cell + label_h + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, (title, panel) in enumerate(row):
            x, y = c * (cell + 4), r * (cell + label_h + 4)
            canvas.paste(Image.fromarray(panel).resize((cell, cell), Image.NEAREST), (x, y + label_h))
            draw.text((x + 2, y + 1), title[:cell // 6], fill="black")
    return canvas


def show_store_image(store_path, row: int, out, model_deciles: bool = False) -> Path:
    group = store.open_store(store_path)
    n = group["status"].shape[0]
    if not 0 <= row < n:
        raise IndexError(f"--index {row} is outside the store's {n} images")
    status = int(group["status"][row])
    if status != store.DONE:
        reason = group.attrs["unreadable"].get(str(int(group["image_id"][row])), "")
        raise ValueError(f"image {row} has status {store.STATUS_NAMES[status]} {reason}".strip())
    frame, meta = read_table(group.attrs["shard_table"])
    rgb = load_rgb(Path(meta["root"]) / frame["relpath"].iloc[row])
    panels = store_panels(group, row, rgb, model_deciles)
    per_row = 3 if not model_deciles else 6
    layout = [panels[i:i + per_row] for i in range(0, len(panels), per_row)]
    with atomic_file(out) as tmp:
        grid(layout).save(tmp, format="PNG")
    log.info(f"wrote {out}")
    return Path(out)
