"""How the demo draws a downstream dataset: the description each dataset's spec carries (`demo = ...`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DemoScenes:
    # The files themselves are written by the dataset's own `write_demo`, in its real layout.
    """classes: (class name, is stuff, appearance id). Appearance ids below 1000 are classification classes
    (taken modulo the demo's class count: categories shared with pre-training), ids from 1000 are new.
    background: the class shown where only clutter remains, or None for the dataset's ignore value.
    ignore_raw: the raw value written for ignored pixels. border_ignore: VOC's ignore band around objects.
    """
    classes: tuple[tuple[str, bool, int], ...]
    background: str | None
    ignore_raw: int
    size: Callable[[np.random.Generator], tuple[int, int]]
    splits: tuple[str, ...]
    border_ignore: bool = False


def size_range(h: tuple[int, int], w: tuple[int, int]) -> Callable[[np.random.Generator], tuple[int, int]]:
    """Image sizes drawn uniformly from [h0, h1] x [w0, w1]."""
    return lambda rng: (int(rng.integers(h[0], h[1] + 1)), int(rng.integers(w[0], w[1] + 1)))


def object_borders(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds another label (VOC marks this band as 255)."""
    pad = np.pad(label, 1, mode="edge")
    h, w = label.shape
    differs = np.zeros_like(label, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            differs |= pad[dy:dy + h, dx:dx + w] != label
    return differs
