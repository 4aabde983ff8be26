"""Readers for the five downstream datasets in their real on-disk layouts.

Each reader lists (image, label) file pairs of a split and decodes label files to train ids with the
dataset's lookup table (pssl.data.downstream), ignore = 255. A wrong or incomplete tree fails at once
naming the missing path; label values outside the dataset's encoding are counted and reported.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from pssl.data.downstream import DATASETS, IGNORE

# Raw label values that legitimately mean "ignore" in each encoding (everything else outside the LUT is odd).
DOCUMENTED_IGNORE = {"camvid": {11}, "voc_aug": {255}, "pascal_context": set(), "ade20k": {0},
                     "cityscapes": set(range(34)) | {255}}


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"dataset path missing: {path}")
    return path


def _from_list(list_file: Path, image_dir: Path, label_dir: Path, image_suffix: str) -> list[tuple[Path, Path]]:
    stems = [s for s in _need(list_file).read_text().split() if s]
    pairs = [(image_dir / f"{s}{image_suffix}", label_dir / f"{s}.png") for s in stems]
    for image, label in pairs[:1] + pairs[-1:]:  # spot-check: a list pointing at missing files fails early
        _need(image), _need(label)
    return pairs


def list_pairs(dataset: str, root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image path, label path) pairs of `split` ('train' or 'val') for `dataset` under `root`."""
    root = Path(root)
    if dataset == "camvid":
        base = _need(root / "CamVid")
        images = sorted(_need(base / split).glob("*.png"))
        return [(p, _need(base / f"{split}annot" / p.name)) for p in images]
    if dataset == "voc_aug":
        base = _need(root / "VOCdevkit" / "VOC2012")
        lists = base / "ImageSets" / "Segmentation"
        return _from_list(lists / ("train_aug.txt" if split == "train" else "val.txt"), _need(base / "JPEGImages"),
                          _need(base / "SegmentationClassAug"), ".jpg")
    if dataset == "pascal_context":
        base = _need(root / "VOCdevkit" / "VOC2010")
        return _from_list(base / "ImageSets" / "SegmentationContext" / f"{split}.txt", _need(base / "JPEGImages"),
                          _need(base / "SegmentationClassContext"), ".jpg")
    if dataset == "ade20k":
        base = _need(root / "ADEChallengeData2016")
        sub = {"train": "training", "val": "validation"}[split]
        images = sorted(_need(base / "images" / sub).glob("*.jpg"))
        return [(p, _need(base / "annotations" / sub / f"{p.stem}.png")) for p in images]
    if dataset == "cityscapes":
        base = _need(root / "cityscapes")
        images = sorted(_need(base / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        return [(p, _need(base / "gtFine" / split / p.parent.name /
                          p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))) for p in images]
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


class SegmentationSet:
    """A split of a downstream dataset: `read(i)` -> (RGB uint8 (H, W, 3), train ids uint8 (H, W), 255 = ignore)."""

    def __init__(self, dataset: str, root: str | Path, split: str):
        self.spec = DATASETS[dataset]
        self.name, self.split = dataset, split
        self.pairs = list_pairs(dataset, root, split)
        if not self.pairs:
            raise FileNotFoundError(f"{dataset} {split}: no images under {root}")
        self.unexpected: Counter = Counter()

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[i]
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        raw = np.asarray(Image.open(label_path))
        if raw.ndim != 2:
            raise ValueError(f"{label_path}: label file must be single-channel, got shape {raw.shape}")
        if raw.shape != rgb.shape[:2]:
            raise ValueError(f"{label_path}: label size {raw.shape} differs from image size {rgb.shape[:2]}")
        labels = self.spec.decode[raw]
        odd = (labels == IGNORE) & ~np.isin(raw, list(DOCUMENTED_IGNORE[self.name]))
        if odd.any():
            self.unexpected.update(np.unique(raw[odd]).tolist())
        return rgb, labels

    def report_unexpected(self) -> str:
        if not self.unexpected:
            return ""
        values = ", ".join(str(v) for v in sorted(self.unexpected))
        return (f"{self.name} {self.split}: label values outside the dataset's classes ({values}) were treated "
                f"as ignore (255), not trained on")
