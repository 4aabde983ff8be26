"""Class centroids of a label map, per tile (NVIDIA semantic-segmentation's datasets/uniform.py): for every
tile x tile tile and every class present in it, the centre of mass of that class's pixels in the tile."""

from __future__ import annotations

import numpy as np


def class_centroids(labels: np.ndarray, tile: int, ignore: int) -> list[tuple[int, float, float, int]]:
    """(class, y, x, pixels) per tile and class of an (H, W) label map; `ignore` pixels are skipped."""
    h, w = labels.shape
    found = []
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            part = labels[top:top + tile, left:left + tile]
            for c in np.unique(part):
                if c == ignore:
                    continue
                ys, xs = np.nonzero(part == c)
                found.append((int(c), top + float(ys.mean()), left + float(xs.mean()), int(ys.size)))
    return found
