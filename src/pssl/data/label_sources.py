"""Where the pre-training label maps' foreground comes from: the explanations (the method) or a control.

  deciles   the D >= threshold region of the image's own explanation (the paper)
  oracle    the image's true object mask (upper bound: perfect labels of the same images); masks in the demo's
            layout (`<root>/<wnid>/<stem>.png`, object > 127) or ImageNet-S's (same paths, RGB with the
            class id R + 256 G: 0 background, 1000 ignored, anything else the object)
  shuffled  another image's D >= threshold region (a derangement: never the image's own; every image keeps its
            class, so class frequencies are unchanged; what labels without information about the image give)
  centre    a centred ellipse with the area of the image's own D >= threshold region (a prior without
            explanations)

Each returns an (S, S) int8 map at the explanation's resolution: 1 object, 0 background, -1 ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pssl.errors import InputError

LABEL_SOURCES = ("deciles", "oracle", "shuffled", "centre")
IMAGENET_S_IGNORE = 1000


def derangement(n: int, seed: int) -> np.ndarray:
    """partner[i] != i for every i, a permutation of 0..n-1: the cycle through one random order."""
    if n < 2:
        raise InputError(f"shuffled labels need at least 2 images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def centre_ellipse(area: int, shape: tuple[int, int]) -> np.ndarray:
    """The `area` pixels nearest the centre in the map's own aspect (an ellipse with the map's proportions),
    exactly `area` of them (ties broken by position)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    radius = ((y + 0.5 - h / 2) / h) ** 2 + ((x + 0.5 - w / 2) / w) ** 2
    inside = np.zeros(h * w, dtype=bool)
    inside[np.argsort(radius.ravel(), kind="stable")[:area]] = True
    return inside.reshape(h, w)


def mask_path(masks_root: str | Path, relpath: str) -> Path:
    return Path(masks_root) / Path(relpath).with_suffix(".png")


def read_object_mask(path: str | Path, size: int) -> np.ndarray:
    """An object mask in either layout, resized to size x size (nearest): 1 object, 0 background, -1 ignored."""
    with Image.open(path) as image:
        if image.mode in ("RGB", "RGBA"):  # ImageNet-S: class id R + 256 G
            rgb = np.asarray(image.convert("RGB").resize((size, size), Image.NEAREST)).astype(np.int32)
            ids = rgb[..., 0] + 256 * rgb[..., 1]
            return np.where(ids == IMAGENET_S_IGNORE, -1, ids > 0).astype(np.int8)
        gray = np.asarray(image.convert("L").resize((size, size), Image.NEAREST))
        return (gray > 127).astype(np.int8)


def foreground(source: str, deciles: np.ndarray, threshold: int, *, partner_deciles: np.ndarray | None = None,
               mask: np.ndarray | None = None) -> np.ndarray:
    """The (S, S) int8 foreground of one image under `source` (1 object, 0 background, -1 ignored)."""
    if source == "deciles":
        return (deciles >= threshold).astype(np.int8)
    if source == "shuffled":
        return (partner_deciles >= threshold).astype(np.int8)
    if source == "centre":
        return centre_ellipse(int((deciles >= threshold).sum()), deciles.shape).astype(np.int8)
    if source == "oracle":
        return mask
    raise InputError(f"label source must be one of {LABEL_SOURCES}, got {source!r}")
