"""PseudoSeg's strong view (Zou et al., ICLR 2021): the weak view's crop with the authors' colour jitter and one CutOut square.

No geometric change and no blur: the paper takes SimCLR's colour jittering and "remove[s] all geometric
transformations". The jitter follows the authors' code (googleinterns/wss, core/preprocess_utils.py
`color_jitter`, TensorFlow's image ops), its four operations in a random order, each result clipped to [0, 1]:

- brightness: x + delta, delta ~ U[-0.5, 0.5] (added, not a factor);
- contrast: (x - mean_c) * f + mean_c per channel c, f ~ U[0.5, 1.5];
- saturation: HSV saturation * f, clipped, f ~ U[0.5, 1.5];
- hue: HSV hue turned by delta ~ U[-0.25, 0.25] of a circle.

CutOut (`cutout_with_mask`): a square of side `cutout` x crop whose centre is uniform over the crop, clipped at
the crop's border, filled with the dataset's mean pixel; its pixels are excluded from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pssl.data.transforms import _uniform, adjust_hue

JITTER = (0.5, 0.5, 0.5, 0.25)  # brightness delta, contrast and saturation factor ranges, hue delta
# ImageNet's mean pixel: the pre-training set's, which the backbones' normalisation maps to 0 (as the authors'
# fill, their feature extractor's mean pixel).
MEAN_PIXEL = np.array([0.485, 0.456, 0.406], dtype=np.float32)


@dataclass(frozen=True)
class StrongParams:
    order: tuple[int, ...]  # of brightness, contrast, saturation, hue
    brightness: float  # added
    contrast: float  # factor
    saturation: float  # factor
    hue: float  # fraction of a turn
    cut: tuple[int, int, int, int]  # the CutOut square's rows [top, bottom) and columns [left, right)


def draw_strong(g: torch.Generator, crop: int, cutout: float) -> StrongParams:
    """The strong view's random draws, after the crop's (`g` continues the sample's generator)."""
    b, c, s, h = JITTER
    order = tuple(torch.randperm(4, generator=g).tolist())
    factors = (_uniform(g, -b, b), _uniform(g, 1 - c, 1 + c), _uniform(g, 1 - s, 1 + s), _uniform(g, -h, h))
    half = round(cutout * crop / 2)  # the authors' pad_size: the square is 2 x pad_size wide
    cut = (0, 0, 0, 0)
    if half:
        y, x = (int(torch.randint(0, crop, (), generator=g)) for _ in range(2))
        cut = (max(y - half, 0), min(y + half, crop), max(x - half, 0), min(x + half, crop))
    return StrongParams(order, *factors, cut)


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    return image + delta


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    mean = image.reshape(-1, 3).mean(axis=0)
    return (image - mean) * factor + mean


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """HSV saturation times `factor`, clipped to [0, 1] (OpenCV's float HSV: S in [0, 1])."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def strong_view(weak: np.ndarray, p: StrongParams) -> tuple[np.ndarray, np.ndarray]:
    """(strong float32 (H, W, 3) crop, bool (H, W) CutOut mask) of the weak float32 crop in [0, 1]."""
    adjust = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    values = (p.brightness, p.contrast, p.saturation, p.hue)
    image = weak
    for i in p.order:
        image = np.clip(adjust[i](image, values[i]), 0.0, 1.0).astype(np.float32)
    top, bottom, left, right = p.cut
    cut = np.zeros(weak.shape[:2], dtype=bool)
    cut[top:bottom, left:right] = True
    image[cut] = MEAN_PIXEL
    return image, cut
