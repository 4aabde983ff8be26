"""Decoding any image ImageNet throws at us into 8-bit RGB, or a clear reason why not.

Converted: CMYK, grayscale, palette, alpha, 16-bit, PNG bytes behind a .JPEG name (PIL sniffs the format).
Refused (UnreadableImage with the reason): zero bytes, truncated files, bytes that are no image.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class UnreadableImage(Exception):
    """The file cannot be decoded; str(exc) is the reason recorded in the store."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) gray: scale the full range to 8 bits instead of PIL's clipping convert.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo) * 255.0 + 0.5 if hi > lo else np.zeros_like(arr)).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        img = img.convert("RGBA").convert("RGB")  # alpha dropped, palette expanded
    return np.asarray(img.convert("RGB"))


def _open(path: str | os.PathLike, read):
    """`read(img)` on the opened image, with every way a file can fail turned into UnreadableImage."""
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImage("zero-byte file")
        with Image.open(path) as img:
            return read(img)
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (unidentified format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"decode error: {e}") from None


def load_rgb(path: str | os.PathLike, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or raise UnreadableImage. With `min_size` (width, height), a JPEG is decoded at
    the smallest DCT scale (1/2, 1/4, 1/8) that is still at least that large (PIL draft); others in full."""
    return _open(path, lambda img: _decode(img, min_size))


def _decode(img: Image.Image, min_size: tuple[int, int] | None) -> np.ndarray:
    if min_size is not None and img.format == "JPEG":
        img.draft(img.mode, min_size)
    img.load()
    return _to_rgb(img)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the file's header, without decoding."""
    return _open(path, lambda img: (img.height, img.width))


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size without cropping (the explain resolution S), bilinear with antialiasing."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def load_square(path: str | os.PathLike, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image at size x size (the explain resolution S), decoded at reduced scale where a JPEG allows and
    resized without cropping, and its original (H, W)."""
    return _open(path, lambda img: (resize_square(_decode(img, (size, size)), size), (img.height, img.width)))


def long_side_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(H, W) with the longer side `long_side` and the aspect ratio kept, rounded as PyTorch-Encoding does."""
    if h > w:
        return long_side, int(w * long_side / h + 0.5)
    return int(h * long_side / w + 0.5), long_side


def resize_nearest(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize an integer map to (H, W) with nearest neighbour (exact for any label value)."""
    h, w = hw
    rows = np.minimum((np.arange(h) + 0.5) * labels.shape[0] / h, labels.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(w) + 0.5) * labels.shape[1] / w, labels.shape[1] - 1).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]
