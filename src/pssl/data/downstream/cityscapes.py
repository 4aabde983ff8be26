"""Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pssl.data.downstream.base import DatasetSpec, lookup_table, need, register_dataset
from pssl.demo.scenes import DemoScenes, size_range

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# Official cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated classes; all others ignore.
CITYSCAPES_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@register_dataset
class Cityscapes(DatasetSpec):
    name, title = "cityscapes", "Cityscapes"
    classes = CITYSCAPES_CLASSES
    decode = lookup_table(CITYSCAPES_LABELID_TO_TRAINID)
    # every other labelId (0..33; -1, license plate, is stored as 255) is ignored by the benchmark
    documented_ignore = frozenset(set(range(34)) - set(CITYSCAPES_LABELID_TO_TRAINID)) | {255}
    splits = ("train", "val", "test")
    pool = "cityscapes/leftImg8bit/train_extra"  # the coarse set's images (Zhu et al.'s pool)
    pool_size = 19998
    train_images = 2975
    demo = DemoScenes((("road", True, 1002), ("sidewalk", True, 1003), ("building", True, 1001),
                       ("vegetation", True, 1004), ("sky", True, 1000), ("person", False, 1005), ("car", False, 1),
                       ("pole", False, 7), ("traffic sign", False, 1006), ("bicycle", False, 2)),
                      background=None, ignore_raw=0, size=size_range((128, 128), (256, 256)), splits=("train", "val"))

    def layout(self, root: Path, split: str) -> list[Path]:
        return [root / "cityscapes" / "leftImg8bit" / split, root / "cityscapes" / "gtFine" / split]

    def pairs(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        images, labels = paths
        return [(p, need(labels / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")))
                for p in sorted(images.glob("*/*_leftImg8bit.png"))]

    def pool_file(self, i: int) -> str:
        city = ("augsburg", "bayreuth")[i % 2]
        return f"{city}/{city}_{i // 2:06d}_000019_leftImg8bit.png"

    def write_demo(self, root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
        city = {"train": ("aachen", "bochum")[i % 2], "val": "frankfurt"}[split]
        stem = f"{city}_{i // 2:06d}_{19 + i % 2:06d}"
        for d in (f"leftImg8bit/{split}/{city}", f"gtFine/{split}/{city}"):
            (root / "cityscapes" / d).mkdir(parents=True, exist_ok=True)
        img.save(root / "cityscapes/leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        lab.save(root / "cityscapes/gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
