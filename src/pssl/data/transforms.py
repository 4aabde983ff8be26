"""Joint image/mask augmentation for training (pre-training and fine-tuning), reproducible per sample.

Every random draw comes first (`CropAugment.sample`): the scale, the rotation, the crop box in the scaled
and rotated image (padded where it is smaller than the crop), the flip, then blur and colour jitter. The
geometry is then one affine map from the crop's pixels back to the source image, applied once: the
expensive work touches crop x crop pixels, never the scaled full image, and a JPEG given by its path is
decoded at the smallest DCT scale (PIL draft) that keeps the resolution the crop samples. OpenCV does the
warp, the blur and the hue (measured in benchmarks/README.md: the pre-training sample 4x faster per core). The mask goes
through the same map with nearest neighbour, from a label grid of any resolution that covers the image
(pre-training: the S x S decile map; fine-tuning: the full-resolution label image); outside the image it
is `mask_fill`. Blur and colour jitter follow torchvision's definitions, on the crop.

The draws follow torchvision's RandomResize / RandomRotation / RandomCrop(pad_if_needed) / flip /
GaussianBlur / ColorJitter, and depend only on (seed, epoch, index), so a resumed run sees the same crops.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from pssl.data.images import image_size, load_rgb, long_side_size

JITTER = (0.3, 0.3, 0.3, 0.02)  # brightness, contrast, saturation, hue (pre-training)
BLUR_P, BLUR_KERNEL, BLUR_SIGMA = 0.3, 5, (0.1, 1.5)
GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class CropParams:
    resized: tuple[int, int]  # (h, w) of the scaled image
    angle: float  # degrees, counter-clockwise about the scaled image's centre
    pad: tuple[int, int]  # (y, x) padding on each side where the scaled image is smaller than the crop
    top: int  # the crop box in the padded image
    left: int
    flip: bool
    blur_sigma: float | None
    jitter: tuple[float, float, float, float] | None  # brightness, contrast, saturation factors; hue shift
    jitter_order: tuple[int, ...] = ()


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


# One sample per call: OpenCV's thread pool would only compete with the DataLoader's worker processes.
cv2.setNumThreads(0)


def grayscale(image: np.ndarray) -> np.ndarray:
    """(H, W) luma of an (H, W, 3) float image, torchvision's weights."""
    return image @ GRAY_WEIGHTS


def blend(image: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
    return np.clip(ratio * image + (1.0 - ratio) * other, 0.0, 1.0)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(image, float(grayscale(image).mean()), factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(image, grayscale(image)[..., None], factor)


def adjust_hue(image: np.ndarray, hue: float) -> np.ndarray:
    """The HSV hue turned by `hue` of a full circle (OpenCV's float HSV: hue in degrees)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * hue, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """torchvision's gaussian_blur: a normalised size x size kernel, reflect padding (OpenCV's REFLECT_101)."""
    return cv2.GaussianBlur(image, (BLUR_KERNEL, BLUR_KERNEL), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


class CropAugment:
    """Random scale, rotation (`heavy`), crop and flip, then blur and colour jitter (`heavy`).

    Scale: the shorter side uniform in [scale] x base_size (pre-training, as PaddleSeg's PSSL configs), or with
    `long_side` the longer side (fine-tuning, PyTorch-Encoding's convention, which the paper's base size 520 /
    crop 480 follow); the aspect ratio is kept.
    """

    def __init__(self, crop: int, mask_fill: int, base_size: int | None = None,
                 scale: tuple[float, float] = (0.5, 2.0), long_side: bool = False, heavy: bool = True,
                 degrees: float = 10.0, jitter: tuple[float, float, float, float] = JITTER):
        base = base_size or crop
        self.crop, self.mask_fill, self.long_side, self.heavy, self.degrees = crop, mask_fill, long_side, heavy, degrees
        self.jitter = jitter
        self.low, self.high = int(base * scale[0]), int(base * scale[1])

    def resized_size(self, g: torch.Generator, h: int, w: int) -> tuple[int, int]:
        if self.long_side:  # the long side in [low, high]
            return long_side_size(h, w, int(torch.randint(self.low, self.high + 1, (), generator=g)))
        short = int(torch.randint(self.low, self.high, (), generator=g))  # as v2.RandomResize: [low, high)
        long = int(short * max(h, w) / min(h, w))
        return (short, long) if h <= w else (long, short)

    def corner(self, g: torch.Generator, extent: int, pad: int, centre: float | None) -> int:
        """The crop's first row (or column) in the padded image of `extent` + 2 x `pad` pixels; with a
        `centre` (in the scaled image), uniform over the corners whose crop contains it (NVIDIA's
        class-uniform sampler: x1 ~ U[c - crop, c], clipped to the image)."""
        low, high = 0, extent + 2 * pad - self.crop
        if centre is not None:
            c = int(centre) + pad
            low, high = max(low, min(c - self.crop + 1, high)), max(low, min(c, high))
        return int(torch.randint(low, high + 1, (), generator=g))

    def sample(self, g: torch.Generator, h: int, w: int, centre: tuple[float, float] | None = None) -> CropParams:
        """Every random draw of one sample; `centre` (y, x in the source image, no rotation): the crop contains
        that point."""
        rh, rw = self.resized_size(g, h, w)
        angle = _uniform(g, -self.degrees, self.degrees) if self.heavy else 0.0
        pad_y, pad_x = max(self.crop - rh, 0), max(self.crop - rw, 0)
        if centre is not None and angle:
            raise ValueError("a crop around a centre needs heavy=False (no rotation)")
        top = self.corner(g, rh, pad_y, None if centre is None else centre[0] * rh / h)
        left = self.corner(g, rw, pad_x, None if centre is None else centre[1] * rw / w)
        flip = bool(torch.rand((), generator=g) < 0.5)
        sigma = jitter = None
        order: tuple[int, ...] = ()
        if self.heavy:
            if float(torch.rand((), generator=g)) < BLUR_P:
                sigma = _uniform(g, *BLUR_SIGMA)
            b, c, s, hue = self.jitter
            order = tuple(torch.randperm(4, generator=g).tolist())
            jitter = (_uniform(g, 1 - b, 1 + b), _uniform(g, 1 - c, 1 + c), _uniform(g, 1 - s, 1 + s),
                      _uniform(g, -hue, hue))
        return CropParams((rh, rw), angle, (pad_y, pad_x), top, left, flip, sigma, jitter, order)

    def crop_to_source(self, p: CropParams, h: int, w: int) -> np.ndarray:
        """3 x 3 map from the crop's continuous pixel coordinates (x, y, 1) to the (h, w) source image's."""
        rh, rw = p.resized
        flip = np.array([[-1.0, 0, self.crop], [0, 1, 0], [0, 0, 1]]) if p.flip else np.eye(3)
        shift = np.array([[1.0, 0, p.left - p.pad[1]], [0, 1, p.top - p.pad[0]], [0, 0, 1]])
        a = math.radians(p.angle)
        centre = np.array([[1.0, 0, rw / 2], [0, 1, rh / 2], [0, 0, 1]])
        unrotate = centre @ np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]) \
            @ np.linalg.inv(centre)
        unscale = np.diag([w / rw, h / rh, 1.0])
        return unscale @ unrotate @ shift @ flip

    def warp_image(self, rgb: np.ndarray, crop_to_rgb: np.ndarray) -> np.ndarray:
        """Bilinear crop of `rgb`; a source more than 2x finer than the crop's sampling is first area-reduced,
        so no source pixel is skipped (the antialiasing the full-image resize had)."""
        step = math.sqrt(abs(np.linalg.det(crop_to_rgb[:2, :2])))  # source pixels per crop pixel
        if step >= 2:
            h, w = rgb.shape[:2]
            factor = int(step)
            rgb = cv2.resize(rgb, (max(w // factor, 1), max(h // factor, 1)), interpolation=cv2.INTER_AREA)
            crop_to_rgb = np.diag([rgb.shape[1] / w, rgb.shape[0] / h, 1.0]) @ crop_to_rgb
        return self.warp_values(rgb, crop_to_rgb, 0)

    def warp_values(self, values: np.ndarray, crop_to_values: np.ndarray, fill: float) -> np.ndarray:
        """Bilinear crop of an image or a float map; `fill` outside it."""
        # OpenCV indexes pixel centres, the map is in continuous coordinates (centres at +0.5)
        centres = np.array([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        indexed = np.linalg.inv(centres) @ crop_to_values @ centres
        return cv2.warpAffine(values, indexed[:2], (self.crop, self.crop),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(fill,) * 3)

    def warp_mask(self, labels: np.ndarray, crop_to_labels: np.ndarray) -> np.ndarray:
        mask = Image.fromarray(labels.astype(np.int32), mode="I")
        out = mask.transform((self.crop, self.crop), Image.AFFINE, tuple(crop_to_labels[:2].ravel()),
                             resample=Image.NEAREST, fillcolor=self.mask_fill)
        return np.asarray(out, dtype=np.int64)

    def photometric(self, image: np.ndarray, p: CropParams) -> np.ndarray:
        """Blur, then colour jitter in its drawn order, on the float (H, W, 3) crop in [0, 1]: torchvision's
        definitions (GaussianBlur, ColorJitter), computed with OpenCV / NumPy (tests/test_augment.py)."""
        if p.blur_sigma is not None:
            image = gaussian_blur(image, p.blur_sigma)
        if p.jitter is not None:
            adjust = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
            for i in p.jitter_order:
                image = adjust[i](image, p.jitter[i])
        return image

    def geometry(self, image: np.ndarray | str | os.PathLike, labels: np.ndarray, g: torch.Generator,
                 centre: tuple[float, float] | None = None) -> tuple[CropParams, np.ndarray, np.ndarray, np.ndarray]:
        """(draws, map from the crop to the `labels` grid, uint8 (crop, crop, 3) crop, int64 (crop, crop) labels)
        before blur and colour. `image`: an RGB array, or a path (then decoded at reduced scale where the crop
        allows); `labels`: any grid covering the image."""
        h, w = image_size(image) if not isinstance(image, np.ndarray) else image.shape[:2]
        p = self.sample(g, h, w, centre)
        if not isinstance(image, np.ndarray):
            image = load_rgb(image, min_size=(p.resized[1], p.resized[0]))
        crop_to_source = self.crop_to_source(p, h, w)
        rgb = self.warp_image(image, np.diag([image.shape[1] / w, image.shape[0] / h, 1.0]) @ crop_to_source)
        crop_to_labels = scaled_to(labels, h, w) @ crop_to_source
        return p, crop_to_labels, rgb, self.warp_mask(labels, crop_to_labels)

    def __call__(self, image: np.ndarray | str | os.PathLike, labels: np.ndarray, g: torch.Generator,
                 centre: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, crop, crop) float in [0, 1] and (crop, crop) int64 labels (see `geometry`)."""
        p, _, rgb, mask = self.geometry(image, labels, g, centre)
        return to_tensor(self.photometric(rgb.astype(np.float32) / 255.0, p)), torch.from_numpy(mask)


def scaled_to(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """3 x 3 map from an (h, w) image's coordinates to those of a `grid` covering the same image."""
    return np.diag([grid.shape[1] / w, grid.shape[0] / h, 1.0])


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float -> (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


def augment(transform: CropAugment, image: np.ndarray | str | os.PathLike, labels: np.ndarray, seed: int,
            epoch: int, index: int, centre: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `transform` with randomness that depends only on (seed, epoch, index); the global RNG is left
    untouched."""
    return transform(image, labels, sample_generator(seed, epoch, index), centre)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()[:7], "little")
