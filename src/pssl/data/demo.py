"""The embedded demo data: an ImageNet-layout classification set and five downstream segmentation sets.

Everything is deterministic from the seed: each image draws from its own generator seeded with
(seed, dataset, split, index), so a file's bytes never depend on what else was generated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pssl.data import synth
from pssl.data.downstream import DATASETS, IGNORE, encode_lut
from pssl.io import atomic_dir
from pssl.progress import Progress

HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta",
             "rose")
# Real ImageNet has 22 CMYK JPEGs, grayscale JPEGs and one PNG named .JPEG; the demo has a few of each.
ODD_CMYK, ODD_GRAY, ODD_PNG = 3, 3, 1


def wnid(k: int) -> str:
    return f"n9{k:07d}"


def class_name(app: synth.Appearance) -> str:
    return f"{HUE_NAMES[int(app.hue * 12 + 0.5) % 12]} {app.texture} {app.shape}"


def image_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def write_classification(root: Path, seed: int, num_classes: int, images_per_class: int, min_side: int,
                         max_side: int, progress: Progress) -> dict:
    """`imagenet/train/<wnid>/<wnid>_<n>.JPEG`, `imagenet/masks/<wnid>/<wnid>_<n>.png`, the synset mapping."""
    total = num_classes * images_per_class
    odd_rng = image_rng(seed, 99)
    odd = odd_rng.choice(total, size=min(total, ODD_CMYK + ODD_GRAY + ODD_PNG), replace=False)
    odd_kind = {int(i): kind for i, kind in zip(odd, ["cmyk"] * ODD_CMYK + ["gray"] * ODD_GRAY + ["png"] * ODD_PNG)}
    synsets = []
    for k in range(num_classes):
        app = synth.appearance(k)
        synsets.append(f"{wnid(k)} {class_name(app)}")
        (root / "imagenet/train" / wnid(k)).mkdir(parents=True)
        (root / "imagenet/masks" / wnid(k)).mkdir(parents=True)
        for n in range(images_per_class):
            rng = image_rng(seed, 0, k, n)
            pixels, mask = synth.classification_image(app, rng, min_side, max_side)
            name = f"{wnid(k)}_{n + 1}"
            img = Image.fromarray(pixels)
            kind = odd_kind.get(k * images_per_class + n)
            path = root / "imagenet/train" / wnid(k) / f"{name}.JPEG"
            if kind == "png":
                img.save(path, format="PNG")
            else:
                img = img.convert({"cmyk": "CMYK", "gray": "L"}.get(kind, "RGB"))
                img.save(path, format="JPEG", quality=90)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "imagenet/masks" / wnid(k) / f"{name}.png")
            progress.update()
    (root / "imagenet/LOC_synset_mapping.txt").write_text("\n".join(synsets) + "\n")
    return {"classes": num_classes, "images": total,
            "odd_files": {f"{wnid(i // images_per_class)}_{i % images_per_class + 1}.JPEG": kind
                          for i, kind in sorted(odd_kind.items())}}


@dataclass(frozen=True)
class DemoScenes:
    """How one downstream dataset's demo scenes look and where its files go.

    classes: (class name, is stuff, appearance id). Appearance ids below 1000 are classification classes
    (taken modulo the demo's class count: categories shared with pre-training), ids from 1000 are new.
    background: the class shown where only clutter remains, or None for the dataset's ignore value.
    """
    dataset: str
    classes: tuple[tuple[str, bool, int], ...]
    background: str | None
    ignore_raw: int
    size: Callable[[np.random.Generator], tuple[int, int]]
    splits: tuple[str, ...]
    write: Callable[[Path, str, int, Image.Image, Image.Image], None]


def _voc_borders(label: np.ndarray) -> np.ndarray:
    """VOC marks a band around every object as 255: pixels whose 3x3 neighbourhood holds another label."""
    pad = np.pad(label, 1, mode="edge")
    h, w = label.shape
    differs = np.zeros_like(label, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            differs |= pad[dy:dy + h, dx:dx + w] != label
    return differs


def _write_camvid(root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
    base = root / "CamVid"
    name = f"demo{split[:2]}_{i:05d}.png"
    for d in (split, f"{split}annot"):
        (base / d).mkdir(parents=True, exist_ok=True)
    img.save(base / split / name)
    lab.save(base / f"{split}annot" / name)
    with open(base / f"{split}.txt", "a") as f:
        f.write(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")


def _voc_like(year: str, label_dir: str, list_dir: str, list_names: dict[str, str]):
    def write(root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
        base = root / "VOCdevkit" / f"VOC{year}"
        stem = f"{year}_{i + (0 if split == 'train' else 500000):06d}"
        for d in ("JPEGImages", label_dir, f"ImageSets/{list_dir}"):
            (base / d).mkdir(parents=True, exist_ok=True)
        img.save(base / "JPEGImages" / f"{stem}.jpg", quality=92)
        lab.save(base / label_dir / f"{stem}.png")
        with open(base / "ImageSets" / list_dir / f"{list_names[split]}.txt", "a") as f:
            f.write(stem + "\n")
    return write


def _write_ade(root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
    base = root / "ADEChallengeData2016"
    sub, prefix = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}[split]
    for d in (f"images/{sub}", f"annotations/{sub}"):
        (base / d).mkdir(parents=True, exist_ok=True)
    img.save(base / "images" / sub / f"{prefix}_{i + 1:08d}.jpg", quality=92)
    lab.save(base / "annotations" / sub / f"{prefix}_{i + 1:08d}.png")


def _write_cityscapes(root: Path, split: str, i: int, img: Image.Image, lab: Image.Image) -> None:
    city = {"train": ("aachen", "bochum")[i % 2], "val": "frankfurt"}[split]
    stem = f"{city}_{i // 2:06d}_{19 + i % 2:06d}"
    for d in (f"leftImg8bit/{split}/{city}", f"gtFine/{split}/{city}"):
        (root / "cityscapes" / d).mkdir(parents=True, exist_ok=True)
    img.save(root / "cityscapes/leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    lab.save(root / "cityscapes/gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def _size(h: tuple[int, int], w: tuple[int, int]) -> Callable[[np.random.Generator], tuple[int, int]]:
    return lambda rng: (int(rng.integers(h[0], h[1] + 1)), int(rng.integers(w[0], w[1] + 1)))


DEMO_SCENES = (
    DemoScenes("camvid", (("sky", True, 1000), ("building", True, 1001), ("road", True, 1002),
                          ("pavement", True, 1003), ("tree", True, 1004), ("pole", False, 7), ("car", False, 1),
                          ("pedestrian", False, 1005), ("bicyclist", False, 2), ("signsymbol", False, 1006)),
               None, 11, _size((90, 90), (120, 120)), ("train", "val", "test"), _write_camvid),
    DemoScenes("voc_aug", (("aeroplane", False, 0), ("bird", False, 3), ("cat", False, 6), ("dog", False, 4),
                           ("car", False, 1), ("bus", False, 1007), ("person", False, 1005), ("boat", False, 1008)),
               "background", IGNORE, _size((96, 160), (120, 200)), ("train", "val"),
               _voc_like("2012", "SegmentationClassAug", "Segmentation", {"train": "train_aug", "val": "val"})),
    DemoScenes("pascal_context", (("sky", True, 1000), ("grass", True, 1009), ("wall", True, 1001),
                                  ("road", True, 1002), ("cat", False, 6), ("dog", False, 4),
                                  ("bird", False, 3), ("person", False, 1005), ("bottle", False, 1010),
                                  ("tvmonitor", False, 1011)),
               "background", IGNORE, _size((96, 160), (120, 200)), ("train", "val"),
               _voc_like("2010", "SegmentationClassContext", "SegmentationContext",
                         {"train": "train", "val": "val"})),
    DemoScenes("ade20k", (("wall", True, 1001), ("sky", True, 1000), ("floor", True, 1012), ("tree", True, 1004),
                          ("person", False, 1005), ("car", False, 1), ("lamp", False, 5), ("clock", False, 8),
                          ("bed", False, 1013), ("flag", False, 9)),
               None, 0, _size((96, 192), (96, 192)), ("train", "val"), _write_ade),
    DemoScenes("cityscapes", (("road", True, 1002), ("sidewalk", True, 1003), ("building", True, 1001),
                              ("vegetation", True, 1004), ("sky", True, 1000), ("person", False, 1005),
                              ("car", False, 1), ("pole", False, 7), ("traffic sign", False, 1006),
                              ("bicycle", False, 2)),
               None, 0, _size((128, 128), (256, 256)), ("train", "val"), _write_cityscapes),
)


def write_downstream(root: Path, scenes: DemoScenes, seed: int, num_classes: int, counts: dict[str, int],
                     progress: Progress, dataset_key: int) -> dict:
    spec = DATASETS[scenes.dataset]
    classes = [synth.SceneClass(spec.classes.index(name), synth.appearance(a % num_classes if a < 1000 else a),
                                stuff)
               for name, stuff, a in scenes.classes]
    background = IGNORE if scenes.background is None else spec.classes.index(scenes.background)
    lut = np.full(256, scenes.ignore_raw, dtype=np.uint8)
    for train_id, raw in encode_lut(spec).items():
        lut[train_id] = raw
    for split_key, split in enumerate(scenes.splits):
        for i in range(counts[split]):
            rng = image_rng(seed, 1 + dataset_key, split_key, i)
            h, w = scenes.size(rng)
            pixels, label = synth.scene_image(h, w, classes, background, rng)
            if scenes.dataset == "voc_aug":
                label = np.where(_voc_borders(label) & (label != background), IGNORE, label)
            scenes.write(root, split, i, Image.fromarray(pixels), Image.fromarray(lut[label]))
            progress.update()
    return {"classes_drawn": [name for name, _, _ in scenes.classes],
            "images": {split: counts[split] for split in scenes.splits}}


def make_demo_data(out: str | Path, seed: int = 0, num_classes: int = 10, images_per_class: int = 40,
                   min_side: int = 80, max_side: int = 200, downstream_train: int = 60,
                   downstream_val: int = 20) -> dict:
    """Write the whole demo tree to `out` (atomically) and return its manifest (also `out/manifest.json`)."""
    if min_side > max_side:
        raise ValueError(f"min_side ({min_side}) must not exceed max_side ({max_side})")
    counts = {"train": downstream_train, "val": downstream_val, "test": downstream_val}
    total = num_classes * images_per_class + sum(
        sum(counts[s] for s in scenes.splits) for scenes in DEMO_SCENES)
    manifest = {"seed": seed, "imagenet": {}, "downstream": {}}
    with atomic_dir(out) as root, Progress(total, "demo data") as progress:
        manifest["imagenet"] = write_classification(root, seed, num_classes, images_per_class, min_side,
                                                    max_side, progress)
        for key, scenes in enumerate(DEMO_SCENES):
            manifest["downstream"][scenes.dataset] = write_downstream(root, scenes, seed, num_classes, counts,
                                                                      progress, key)
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
