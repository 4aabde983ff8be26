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


# ADE20K names its splits differently on disk; its test release has no annotations.
ADE20K_SPLITS = {"train": "training", "val": "validation"}


def layout(dataset: str, root: str | Path, split: str) -> list[Path]:
    """The documented folders and list files one split of `dataset` needs under `root` (cheap to check)."""
    root = Path(root)
    if dataset == "camvid":
        base = root / "CamVid"
        return [base / split, base / f"{split}annot"]
    if dataset == "voc_aug":
        base = root / "VOCdevkit" / "VOC2012"
        return [base / "JPEGImages", base / "SegmentationClassAug",
                base / "ImageSets" / "Segmentation" / ("train_aug.txt" if split == "train" else f"{split}.txt")]
    if dataset == "pascal_context":
        base = root / "VOCdevkit" / "VOC2010"
        return [base / "JPEGImages", base / "SegmentationClassContext",
                base / "ImageSets" / "SegmentationContext" / f"{split}.txt"]
    if dataset == "ade20k":
        if split not in ADE20K_SPLITS:
            raise ValueError(f"ade20k has no annotated {split!r} split; use one of {', '.join(ADE20K_SPLITS)}")
        base = root / "ADEChallengeData2016"
        return [base / "images" / ADE20K_SPLITS[split], base / "annotations" / ADE20K_SPLITS[split]]
    if dataset == "cityscapes":
        base = root / "cityscapes"
        return [base / "leftImg8bit" / split, base / "gtFine" / split]
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


def missing_paths(dataset: str, root: str | Path, splits) -> list[Path]:
    """Paths of the documented layout that do not exist, for every split in `splits`."""
    return [p for split in dict.fromkeys(splits) for p in layout(dataset, root, split) if not p.exists()]


def _from_list(list_file: Path, image_dir: Path, label_dir: Path, image_suffix: str) -> list[tuple[Path, Path]]:
    stems = [s for s in list_file.read_text().split() if s]
    pairs = [(image_dir / f"{s}{image_suffix}", label_dir / f"{s}.png") for s in stems]
    for image, label in pairs[:1] + pairs[-1:]:  # spot-check: a list pointing at missing files fails early
        _need(image), _need(label)
    return pairs


def list_pairs(dataset: str, root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image path, label path) pairs of `split` ('train', 'val', 'test') for `dataset` under `root`."""
    paths = [_need(p) for p in layout(dataset, root, split)]
    if dataset == "camvid":
        images, labels = paths
        return [(p, _need(labels / p.name)) for p in sorted(images.glob("*.png"))]
    if dataset in ("voc_aug", "pascal_context"):
        images, labels, list_file = paths
        return _from_list(list_file, images, labels, ".jpg")
    if dataset == "ade20k":
        images, labels = paths
        return [(p, _need(labels / f"{p.stem}.png")) for p in sorted(images.glob("*.jpg"))]
    images, labels = paths  # cityscapes
    return [(p, _need(labels / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")))
            for p in sorted(images.glob("*/*_leftImg8bit.png"))]


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
