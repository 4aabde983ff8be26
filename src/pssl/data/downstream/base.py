"""What a downstream segmentation dataset is, and the reader every dataset shares.

A dataset is one small registered class (pssl/data/downstream/<name>.py): its classes and title, how its
label files encode train ids (a 256-entry lookup table), which raw values its documentation calls ignore,
its annotated splits, the documented folders a split needs, how a split's (image, label) files pair up, and
how the demo draws it. `SegmentationSet` reads any of them; a wrong or incomplete tree fails at once naming
the missing path, and label values outside the encoding are counted and reported.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from pssl.errors import InputError, MissingInput

# Train id of pixels no loss or metric counts (the downstream sets' convention; pseudo labels use -1).
IGNORE = 255

DATASETS: dict[str, "DatasetSpec"] = {}


def register_dataset(cls: type[DatasetSpec]) -> type[DatasetSpec]:
    """Class decorator: one instance of `cls` becomes DATASETS[cls.name]."""
    DATASETS[cls.name] = cls()
    return cls


def lookup_table(pairs: dict[int, int]) -> np.ndarray:
    """raw label value -> train id, IGNORE for every raw value not in `pairs`."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw, train_id in pairs.items():
        lut[raw] = train_id
    return lut


def need(path: Path) -> Path:
    if not path.exists():
        raise MissingInput(f"dataset path missing: {path}")
    return path


class DatasetSpec:
    name: ClassVar[str]
    title: ClassVar[str]                     # as Table 3 prints it
    classes: ClassVar[tuple[str, ...]]
    decode: ClassVar[np.ndarray]             # raw label value -> train id or IGNORE
    documented_ignore: ClassVar[frozenset[int]] = frozenset()  # raw values the dataset means as "ignore"
    splits: ClassVar[tuple[str, ...]] = ("train", "val")        # annotated splits
    train_images: ClassVar[int]              # the real train split's size (SLURM runtimes are sized by it)
    demo: ClassVar                           # pssl.demo.scenes.DemoScenes: how the demo draws this dataset
    # The dataset's own unlabelled images under its root (self-training's pool), where its release has them.
    pool: ClassVar[str | None] = None
    pool_size: ClassVar[int] = 0             # its images (SLURM runtimes of teacher inference are sized by it)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def layout(self, root: Path, split: str) -> list[Path]:
        """The documented folders and list files of `split` under `root` (checked before any job runs)."""
        raise NotImplementedError

    def pairs(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        """(image, label) file pairs of a split, from the paths `layout` returned (all exist)."""
        raise NotImplementedError

    def write_demo(self, root: Path, split: str, i: int, image: Image.Image, label: Image.Image) -> None:
        """Write demo image number i of `split` and its encoded label image in this dataset's layout."""
        raise NotImplementedError

    def pool_file(self, i: int) -> str:
        """The name of demo pool image number i inside the pool folder."""
        return f"{self.name}_pool_{i:06d}.jpg"

    def encode(self) -> dict[int, int]:
        """train id -> the raw value that represents it on disk (the inverse of `decode`; the demo writes it)."""
        return {int(train_id): raw for raw, train_id in enumerate(self.decode) if train_id != IGNORE}

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise InputError(f"{self.name} has no annotated {split!r} split; use one of {', '.join(self.splits)}")


def pairs_from_list(list_file: Path, image_dir: Path, label_dir: Path, image_suffix: str
                    ) -> list[tuple[Path, Path]]:
    """Pairs named by a list file of stems (the VOC layouts)."""
    stems = [s for s in list_file.read_text().split() if s]
    pairs = [(image_dir / f"{s}{image_suffix}", label_dir / f"{s}.png") for s in stems]
    for image, label in pairs[:1] + pairs[-1:]:  # spot-check: a list pointing at missing files fails early
        need(image), need(label)
    return pairs


def spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def layout(dataset: str, root: str | Path, split: str) -> list[Path]:
    s = spec(dataset)
    s.check_split(split)
    return s.layout(Path(root), split)


def missing_paths(dataset: str, root: str | Path, splits) -> list[Path]:
    """Paths of the documented layout that do not exist, for every split in `splits`."""
    return [p for split in dict.fromkeys(splits) for p in layout(dataset, root, split) if not p.exists()]


def list_pairs(dataset: str, root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image path, label path) pairs of `split` for `dataset` under `root`."""
    return spec(dataset).pairs([need(p) for p in layout(dataset, root, split)])


class SegmentationSet:
    """A split of a downstream dataset: `read(i)` -> (RGB uint8 (H, W, 3), train ids uint8 (H, W), 255 = ignore)."""

    def __init__(self, dataset: str, root: str | Path, split: str):
        self.spec = spec(dataset)
        self.name, self.split = dataset, split
        self.pairs = list_pairs(dataset, root, split)
        if not self.pairs:
            raise MissingInput(f"{dataset} {split}: no images under {root}")
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
            raise InputError(f"{label_path}: label file must be single-channel, got shape {raw.shape}")
        if raw.shape != rgb.shape[:2]:
            raise InputError(f"{label_path}: label size {raw.shape} differs from image size {rgb.shape[:2]}")
        labels = self.spec.decode[raw]
        odd = (labels == IGNORE) & ~np.isin(raw, list(self.spec.documented_ignore))
        if odd.any():
            self.unexpected.update(np.unique(raw[odd]).tolist())
        return rgb, labels

    def report_unexpected(self) -> str:
        if not self.unexpected:
            return ""
        values = ", ".join(str(v) for v in sorted(self.unexpected))
        return (f"{self.name} {self.split}: label values outside the dataset's classes ({values}) were treated "
                f"as ignore (255), not trained on")
