"""The five downstream segmentation datasets: class lists and on-disk label encodings.

`decode` maps a raw label-file value to a train id (0..C-1) or IGNORE, as a 256-entry lookup table, so the
demo writer (which encodes) and the loaders (which decode) share one definition per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = 255

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                  "pedestrian", "bicyclist")
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
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# Official cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated classes; all others ignore.
CITYSCAPES_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw, train_id in pairs.items():
        lut[raw] = train_id
    return lut


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    decode: np.ndarray = field(repr=False)  # raw label value -> train id or IGNORE

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {
    # SegNet CamVid: 0..10 are the classes, 11 is void.
    "camvid": DatasetSpec("camvid", CAMVID_CLASSES, _lut({i: i for i in range(11)})),
    # SegmentationClassAug: 0 background, 1..20 objects, 255 object borders / difficult.
    "voc_aug": DatasetSpec("voc_aug", VOC_CLASSES, _lut({i: i for i in range(21)})),
    # Pascal-Context 60 classes: 0 is background (a class). The 59-class variant is derived by the loader.
    "pascal_context": DatasetSpec("pascal_context", CONTEXT_CLASSES, _lut({i: i for i in range(60)})),
    # ADE20K: 0 is "other" (ignored), 1..150 are the classes (reduce_zero_label).
    "ade20k": DatasetSpec("ade20k", ADE20K_CLASSES, _lut({i + 1: i for i in range(150)})),
    # Cityscapes gtFine labelIds, mapped to the 19 train ids.
    "cityscapes": DatasetSpec("cityscapes", CITYSCAPES_CLASSES, _lut(CITYSCAPES_LABELID_TO_TRAINID)),
}


# Train images of the real datasets (sizes SLURM runtimes by; the demo's are far smaller).
TRAIN_IMAGES = {"camvid": 367, "voc_aug": 10582, "pascal_context": 4998, "ade20k": 20210, "cityscapes": 2975}


def encode_lut(spec: DatasetSpec) -> dict[int, int]:
    """train id -> the raw value that represents it on disk (the inverse of `spec.decode`)."""
    return {int(train_id): raw for raw, train_id in enumerate(spec.decode) if train_id != IGNORE}
