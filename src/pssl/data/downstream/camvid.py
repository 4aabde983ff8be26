"""CamVid (SegNet's 11-class version): CamVid/{train,val,test}/*.png with labels in CamVid/<split>annot/."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pssl.data.downstream.base import DatasetSpec, lookup_table, need, register_dataset
from pssl.demo.scenes import DemoScenes, size_range


@register_dataset
class CamVid(DatasetSpec):
    name, title = "camvid", "CamVid"
    classes = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
               "bicyclist")
    decode = lookup_table({i: i for i in range(11)})  # 0..10 are the classes, 11 is void
    documented_ignore = frozenset({11})
    splits = ("train", "val", "test")
    train_images = 367
    demo = DemoScenes((("sky", True, 1000), ("building", True, 1001), ("road", True, 1002),
                       ("pavement", True, 1003), ("tree", True, 1004), ("pole", False, 7), ("car", False, 1),
                       ("pedestrian", False, 1005), ("bicyclist", False, 2), ("signsymbol", False, 1006)),
                      background=None, ignore_raw=11, size=size_range((90, 90), (120, 120)),
                      splits=("train", "val", "test"))

    def layout(self, root: Path, split: str) -> list[Path]:
        return [root / "CamVid" / split, root / "CamVid" / f"{split}annot"]

    def pairs(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        images, labels = paths
        return [(p, need(labels / p.name)) for p in sorted(images.glob("*.png"))]

    def write_demo(self, root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
        base = root / "CamVid"
        name = f"demo{split[:2]}_{i:05d}.png"
        for d in (split, f"{split}annot"):
            (base / d).mkdir(parents=True, exist_ok=True)
        img.save(base / split / name)
        lab.save(base / f"{split}annot" / name)
        with open(base / f"{split}.txt", "a") as f:
            f.write(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
