"""The pseudo-labelled pre-training set: images + label maps derived on the fly from deciles and labels.

Label map: pixels with decile >= decile_threshold get the image's label, the rest the background class K;
deciles listed in ignore_deciles become ignore (-1). The S x S map is resized to the image with nearest
neighbour. Joint image/mask augmentation uses torchvision.transforms.v2 with padding filled as ignore (or,
with pad_label background, as the background class).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from pssl import store
from pssl.data.images import load_rgb, long_side_size
from pssl.data.imagenet import read_table

log = logging.getLogger(__name__)
IGNORE = -1


def label_map(deciles: np.ndarray, label: int, background: int, threshold: int = 9,
              ignore_deciles: tuple[int, ...] = ()) -> np.ndarray:
    """(S, S) deciles -> int64 label map: label where D >= threshold, background elsewhere, -1 for ignored deciles."""
    out = np.where(deciles >= threshold, label, background).astype(np.int64)
    if ignore_deciles:
        out[np.isin(deciles, ignore_deciles)] = IGNORE
    return out


def resize_nearest(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize an integer map to (H, W) with nearest neighbour (exact for any label value)."""
    h, w = hw
    rows = np.minimum((np.arange(h) + 0.5) * labels.shape[0] / h, labels.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(w) + 0.5) * labels.shape[1] / w, labels.shape[1] - 1).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]


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


def train_transforms(crop: int, base_size: int | None = None, mask_fill: int = IGNORE, heavy: bool = True,
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


@dataclass(frozen=True)
class Sample:
    relpath: str
    store: int
    row: int
    label: int


class PseudoLabelDataset(torch.utils.data.Dataset):
    def __init__(self, stores: list[str], labels: list[str], num_classes: int, crop: int,
                 decile_threshold: int = 9, ignore_deciles: tuple[int, ...] = (), seed: int = 0,
                 pad_label: str = "ignore"):
        self.background = num_classes  # class K: the segmentation head has K + 1 outputs
        self.threshold, self.ignore_deciles, self.seed = decile_threshold, tuple(ignore_deciles), seed
        if pad_label not in ("ignore", "background"):
            raise ValueError(f"pad_label must be 'ignore' or 'background', got {pad_label!r}")
        # Padding from the crop and the rotation: ignored, or background as in the authors' code at the paper.
        self.transform = train_transforms(crop, mask_fill=IGNORE if pad_label == "ignore" else self.background)
        self.epoch = 0
        self.store_paths = list(stores)
        self.samples: list[Sample] = []
        roots = set()
        skipped = {"not kept": 0, "not explained": 0}
        for s, (store_path, label_path) in enumerate(zip(stores, labels)):
            table, meta = read_table(label_path)
            group = store.open_store(store_path)
            shard, _ = read_table(group.attrs["shard_table"])
            roots.add(meta["root"])
            if not np.array_equal(table["image_id"].to_numpy(), group["image_id"][:]):
                raise ValueError(f"{label_path} and {store_path} list different images")
            done = group["status"][:] == store.DONE
            for row, (keep, label, relpath) in enumerate(zip(table["keep"], table["label"], shard["relpath"])):
                if not done[row]:
                    skipped["not explained"] += 1
                elif not keep:
                    skipped["not kept"] += 1
                else:
                    self.samples.append(Sample(relpath, s, row, int(label)))
        if len(roots) != 1:
            raise ValueError(f"label tables point at several image roots: {sorted(roots)}")
        self.root = Path(roots.pop())
        self.skipped = skipped
        self._groups = None  # opened lazily, per worker process
        log.info("pseudo-labelled set: %d images used, skipped %s", len(self.samples), skipped)
        print(f"pseudo-labelled set: {len(self.samples)} images, skipped {skipped}", flush=True)
        if not self.samples:
            raise ValueError("no pseudo-labelled image is usable (all dropped by the label policy or unexplained)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, full-resolution label map) of sample i, before augmentation."""
        if self._groups is None:
            self._groups = [store.open_store(p) for p in self.store_paths]
        s = self.samples[i]
        rgb = load_rgb(self.root / s.relpath)
        deciles = self._groups[s.store]["deciles"][s.row]
        labels = label_map(deciles, s.label, self.background, self.threshold, self.ignore_deciles)
        return rgb, resize_nearest(labels, rgb.shape[:2])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, labels = self.target(i)
        return augment(self.transform, rgb, labels, self.seed, self.epoch, i)
