"""Inference for evaluation: sliding window (large images), multi-scale and horizontal flip.

Logits are averaged as softmax probabilities over scales and flips, at the input resolution. With a base
size, scale s resizes the image to a long side of ceil(s x base), aspect kept (PyTorch-Encoding's
multi-scale evaluation, the convention of the paper's base sizes); without one, s scales the image itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pssl.data.images import long_side_size


def sliding_window(model, image: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    """Softmax probabilities (1, C, H, W) of `image` (1, 3, H, W) from overlapping crop x crop windows."""
    _, _, h, w = image.shape
    if h <= crop and w <= crop:
        return model(image)["out"].softmax(1)
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    padded = F.pad(image, (0, pad_w, 0, pad_h))
    ph, pw = padded.shape[-2:]
    probs = torch.zeros(1, num_classes, ph, pw, device=image.device)
    count = torch.zeros(1, 1, ph, pw, device=image.device)
    rows = max(1, math.ceil((ph - crop) / stride) + 1)
    cols = max(1, math.ceil((pw - crop) / stride) + 1)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * stride, ph - crop), min(c * stride, pw - crop)
            window = padded[..., y0:y0 + crop, x0:x0 + crop]
            probs[..., y0:y0 + crop, x0:x0 + crop] += model(window)["out"].softmax(1)
            count[..., y0:y0 + crop, x0:x0 + crop] += 1
    return (probs / count)[..., :h, :w]


def scaled_size(h: int, w: int, scale: float, base_size: int | None = None) -> tuple[int, int]:
    """Input size at one evaluation scale: long side ceil(scale x base_size), or (h, w) x scale without a base."""
    if base_size:
        return long_side_size(h, w, math.ceil(base_size * scale))
    return max(8, int(round(h * scale))), max(8, int(round(w * scale)))


@torch.no_grad()
def probabilities(model, image: torch.Tensor, num_classes: int, scales=(1.0,), flip: bool = False,
                  crop: int | None = None, stride: int | None = None, base_size: int | None = None) -> torch.Tensor:
    """Class probabilities (1, C, H, W) for one image (1, 3, H, W) in [0, 1]: the mean over scales (x flip)."""
    _, _, h, w = image.shape
    total = torch.zeros(1, num_classes, h, w, device=image.device)
    views = 0
    for s in scales:
        size = scaled_size(h, w, s, base_size)
        scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False) if size != (h, w) else image
        for flipped in ((False, True) if flip else (False,)):
            x = scaled.flip(-1) if flipped else scaled
            p = sliding_window(model, x, num_classes, crop, stride or crop * 2 // 3) if crop else \
                model(x)["out"].softmax(1)
            if flipped:
                p = p.flip(-1)
            total += F.interpolate(p.float(), size=(h, w), mode="bilinear", align_corners=False)
            views += 1
    return total / views


def predict(model, image: torch.Tensor, num_classes: int, scales=(1.0,), flip: bool = False,
            crop: int | None = None, stride: int | None = None, base_size: int | None = None) -> torch.Tensor:
    """Label map (H, W) for one image (1, 3, H, W) in [0, 1]: the argmax of `probabilities`."""
    return probabilities(model, image, num_classes, scales, flip, crop, stride, base_size).argmax(1)[0]
