"""ADE20K (SceneParsing, ADEChallengeData2016): images/{training,validation}/*.jpg, annotations/<same>/*.png.
Its test release has no annotations."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pssl.data.downstream.base import DatasetSpec, lookup_table, need, register_dataset
from pssl.demo.scenes import DemoScenes, size_range

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")
SPLIT_FOLDERS = {"train": "training", "val": "validation"}


@register_dataset
class ADE20K(DatasetSpec):
    name, title = "ade20k", "ADE20K"
    classes = ADE20K_CLASSES
    decode = lookup_table({i + 1: i for i in range(150)})  # 0 is "other" (ignored): reduce_zero_label
    documented_ignore = frozenset({0})
    train_images = 20210
    demo = DemoScenes((("wall", True, 1001), ("sky", True, 1000), ("floor", True, 1012), ("tree", True, 1004),
                       ("person", False, 1005), ("car", False, 1), ("lamp", False, 5), ("clock", False, 8),
                       ("bed", False, 1013), ("flag", False, 9)),
                      background=None, ignore_raw=0, size=size_range((96, 192), (96, 192)), splits=("train", "val"))

    def layout(self, root: Path, split: str) -> list[Path]:
        base = root / "ADEChallengeData2016"
        return [base / "images" / SPLIT_FOLDERS[split], base / "annotations" / SPLIT_FOLDERS[split]]

    def pairs(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        images, labels = paths
        return [(p, need(labels / f"{p.stem}.png")) for p in sorted(images.glob("*.jpg"))]

    def write_demo(self, root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
        base = root / "ADEChallengeData2016"
        sub, prefix = SPLIT_FOLDERS[split], {"train": "ADE_train", "val": "ADE_val"}[split]
        for d in (f"images/{sub}", f"annotations/{sub}"):
            (base / d).mkdir(parents=True, exist_ok=True)
        img.save(base / "images" / sub / f"{prefix}_{i + 1:08d}.jpg", quality=92)
        lab.save(base / "annotations" / sub / f"{prefix}_{i + 1:08d}.png")
