"""The two VOC layouts: VOC-Aug (SegmentationClassAug, 21 classes) and Pascal-Context (60 classes)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pssl.data.downstream.base import DatasetSpec, lookup_table, pairs_from_list, register_dataset
from pssl.demo.scenes import DemoScenes, size_range

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
CONTEXT_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed",
    "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door", "fence", "floor",
    "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign",
    "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree", "truck", "wall",
    "water", "window", "wood")


class VOCLayout(DatasetSpec):
    """VOCdevkit/VOC<year>/{JPEGImages, <label_dir>, ImageSets/<list_dir>/<list>.txt}."""
    year: str
    label_dir: str
    list_dir: str
    list_names: dict[str, str]  # split -> list file stem

    def layout(self, root: Path, split: str) -> list[Path]:
        base = root / "VOCdevkit" / f"VOC{self.year}"
        return [base / "JPEGImages", base / self.label_dir,
                base / "ImageSets" / self.list_dir / f"{self.list_names[split]}.txt"]

    def pairs(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        images, labels, list_file = paths
        return pairs_from_list(list_file, images, labels, ".jpg")

    def write_demo(self, root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
        base = root / "VOCdevkit" / f"VOC{self.year}"
        stem = f"{self.year}_{i + (0 if split == 'train' else 500000):06d}"
        for d in ("JPEGImages", self.label_dir, f"ImageSets/{self.list_dir}"):
            (base / d).mkdir(parents=True, exist_ok=True)
        img.save(base / "JPEGImages" / f"{stem}.jpg", quality=92)
        lab.save(base / self.label_dir / f"{stem}.png")
        with open(base / "ImageSets" / self.list_dir / f"{self.list_names[split]}.txt", "a") as f:
            f.write(stem + "\n")


@register_dataset
class VOCAug(VOCLayout):
    name, title = "voc_aug", "VOC-Aug"
    classes = VOC_CLASSES
    # SegmentationClassAug: 0 background, 1..20 objects, 255 object borders / difficult.
    decode = lookup_table({i: i for i in range(21)})
    documented_ignore = frozenset({255})
    train_images = 10582
    year, label_dir, list_dir = "2012", "SegmentationClassAug", "Segmentation"
    list_names = {"train": "train_aug", "val": "val"}
    demo = DemoScenes((("aeroplane", False, 0), ("bird", False, 3), ("cat", False, 6), ("dog", False, 4),
                       ("car", False, 1), ("bus", False, 1007), ("person", False, 1005), ("boat", False, 1008)),
                      background="background", ignore_raw=255, size=size_range((96, 160), (120, 200)),
                      splits=("train", "val"), border_ignore=True)


@register_dataset
class PascalContext(VOCLayout):
    name, title = "pascal_context", "VOC-Context"
    classes = CONTEXT_CLASSES
    # 60 classes; 0 is background (a class). The 59-class variant would be derived by the loader.
    decode = lookup_table({i: i for i in range(60)})
    train_images = 4998
    year, label_dir, list_dir = "2010", "SegmentationClassContext", "SegmentationContext"
    list_names = {"train": "train", "val": "val"}
    demo = DemoScenes((("sky", True, 1000), ("grass", True, 1009), ("wall", True, 1001), ("road", True, 1002),
                       ("cat", False, 6), ("dog", False, 4), ("bird", False, 3), ("person", False, 1005),
                       ("bottle", False, 1010), ("tvmonitor", False, 1011)),
                      background="background", ignore_raw=255, size=size_range((96, 160), (120, 200)),
                      splits=("train", "val"))

