"""Joint image/mask augmentation for training (pre-training and fine-tuning), reproducible per sample."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pssl.data.images import long_side_size


class RandomLongSideResize(v2.Transform):
    """PyTorch-Encoding's random scale for fine-tuning: the long side uniform in [scale] x base, aspect kept
    (masks are resized with nearest neighbour by torchvision)."""

    def __init__(self, base: int, scale: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.low, self.high = int(base * scale[0]), int(base * scale[1])

    def make_params(self, flat_inputs: list) -> dict:
        h, w = next(v2.functional.get_size(x) for x in flat_inputs if isinstance(x, tv_tensors.Image))
        long_side = int(torch.randint(self.low, self.high + 1, ()))
        return {"size": list(long_side_size(h, w, long_side))}

    def transform(self, inpt, params: dict):
        return v2.functional.resize(inpt, params["size"], antialias=True)

    # torchvision < 0.21 calls these names
    _get_params, _transform = make_params, transform


def train_transforms(crop: int, mask_fill: int, base_size: int | None = None, heavy: bool = True,
                     scale: tuple[float, float] = (0.5, 2.0), long_side: bool = False) -> v2.Compose:
    """Joint image/mask augmentation: random scale, crop with the mask's padding filled with `mask_fill`, flip;
    `heavy` (pre-training) adds rotation, blur and colour jitter.

    Random scale: the shorter side in scale x base_size (pre-training, as PaddleSeg's PSSL configs), or with
    `long_side` the longer side in scale x base_size, aspect kept (fine-tuning, PyTorch-Encoding's convention,
    which the paper's base size 520 / crop 480 follow).
    """
    base = base_size or crop
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: mask_fill}
    steps = [RandomLongSideResize(base, scale) if long_side else
             v2.RandomResize(int(base * scale[0]), int(base * scale[1]))]
    if heavy:
        steps.append(v2.RandomRotation(10.0, fill=fill))
    steps += [v2.RandomCrop(crop, pad_if_needed=True, fill=fill), v2.RandomHorizontalFlip()]
    if heavy:
        steps += [v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3), v2.ColorJitter(0.3, 0.3, 0.3, 0.02)]
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                            scale=True))
    return v2.Compose(steps)


def augment(transform: v2.Compose, rgb: np.ndarray, labels: np.ndarray, seed: int, epoch: int, index: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `transform` with randomness that depends only on (seed, epoch, index), so a resumed run sees the
    same crops; the global RNG is left untouched."""
    image = tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        image, mask = transform(image, mask)
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()[:7], "little")
