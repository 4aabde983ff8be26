"""The embedded demo data: an ImageNet-layout classification set and every registered downstream dataset
(each drawn as its spec's `demo` says and written by its own `write_demo`).

Everything is deterministic from the seed: each image draws from its own generator seeded with
(seed, dataset, split, index), so a file's bytes never depend on what else was generated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pssl.data.downstream import DATASETS, IGNORE, DatasetSpec
from pssl.data.pool import DEMO_TRUTH, pool_dir, truth_path
from pssl.demo import synth
from pssl.demo.scenes import object_borders
from pssl.errors import InputError
from pssl.io import atomic_dir
from pssl.progress import Progress
from pssl.settings import DemoSettings

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
                         max_side: int, progress: Progress, val_images_per_class: int = 0) -> dict:
    """`imagenet/train/<wnid>/<wnid>_<n>.JPEG`, `imagenet/masks/<wnid>/<wnid>_<n>.png`, the synset mapping, and
    held-out `imagenet/val/<wnid>/<wnid>_val_<n>.JPEG` (their own random stream: the train files do not
    depend on how many there are)."""
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
        for n in range(val_images_per_class):
            (root / "imagenet/val" / wnid(k)).mkdir(parents=True, exist_ok=True)
            pixels, _ = synth.classification_image(app, image_rng(seed, 2, k, n), min_side, max_side)
            Image.fromarray(pixels).save(root / "imagenet/val" / wnid(k) / f"{wnid(k)}_val_{n + 1}.JPEG", quality=90)
            progress.update()
    (root / "imagenet/LOC_synset_mapping.txt").write_text("\n".join(synsets) + "\n")
    return {"classes": num_classes, "images": total, "val_images": num_classes * val_images_per_class,
            "odd_files": {f"{wnid(i // images_per_class)}_{i % images_per_class + 1}.JPEG": kind
                          for i, kind in sorted(odd_kind.items())}}


def scene_look(appearance_id: int, num_classes: int) -> int:
    """The appearance a downstream class's demo id draws: below 1000 the look of classification class
    id % num_classes (a category shared with pre-training), from 1000 a look of its own."""
    return appearance_id % num_classes if appearance_id < 1000 else appearance_id


def write_downstream(root: Path, spec: DatasetSpec, seed: int, num_classes: int, counts: dict[str, int],
                     progress: Progress, dataset_key: int, pool_images: int = 0) -> dict:
    """One downstream dataset as its spec's `demo` describes it, written in its real layout, and its
    unlabelled pool (`pool_dir`) with the pool's hidden truth in train ids (`pool_truth/<dataset>/`)."""
    scenes = spec.demo
    classes = [synth.SceneClass(spec.classes.index(name), synth.appearance(scene_look(a, num_classes)), stuff)
               for name, stuff, a in scenes.classes]
    background = IGNORE if scenes.background is None else spec.classes.index(scenes.background)
    lut = np.full(256, scenes.ignore_raw, dtype=np.uint8)
    for train_id, raw in spec.encode().items():
        lut[train_id] = raw

    def scene(split_key: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = image_rng(seed, 1 + dataset_key, split_key, i)
        pixels, label = synth.scene_image(*scenes.size(rng), classes, background, rng)
        if scenes.border_ignore:
            label = np.where(object_borders(label) & (label != background), IGNORE, label)
        return pixels, label

    for split_key, split in enumerate(scenes.splits):
        for i in range(counts[split]):
            pixels, label = scene(split_key, i)
            spec.write_demo(root, split, i, Image.fromarray(pixels), Image.fromarray(lut[label]))
            progress.update()
    pool, truth = pool_dir(spec.name, root), root / DEMO_TRUTH / spec.name
    for i in range(pool_images):
        pixels, label = scene(len(scenes.splits), i)  # the pool's own random stream
        name = spec.pool_file(i)
        for path in (pool / name, truth_path(truth, name)):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(pool / name, quality=92)
        Image.fromarray(label.astype(np.uint8)).save(truth_path(truth, name))
        progress.update()
    return {"classes_drawn": [name for name, _, _ in scenes.classes],
            "images": {split: counts[split] for split in scenes.splits}, "pool_images": pool_images}


def make_demo_data(out: str | Path, settings: DemoSettings = DemoSettings()) -> dict:
    """Write the whole demo tree to `out` (atomically) and return its manifest (also `out/manifest.json`)."""
    s = settings
    if s.min_side > s.max_side:
        raise InputError(f"min_side ({s.min_side}) must not exceed max_side ({s.max_side})")
    counts = {"train": s.downstream_train, "val": s.downstream_val, "test": s.downstream_val}
    total = s.num_classes * (s.images_per_class + s.val_images_per_class) + sum(
        sum(counts[split] for split in spec.demo.splits) + s.pool_images for spec in DATASETS.values())
    manifest = {"seed": s.seed, "imagenet": {}, "downstream": {}}
    with atomic_dir(out) as root, Progress(total, "demo data") as progress:
        manifest["imagenet"] = write_classification(root, s.seed, s.num_classes, s.images_per_class, s.min_side,
                                                    s.max_side, progress, s.val_images_per_class)
        for key, spec in enumerate(DATASETS.values()):
            manifest["downstream"][spec.name] = write_downstream(root, spec, s.seed, s.num_classes, counts,
                                                                 progress, key, s.pool_images)
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
