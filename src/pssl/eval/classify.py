"""ImageNet top-1 / top-5 of a model on the ImageNet validation set (the paper's Table 4).

A pre-trained *segmentation* model is used as a classifier: its softmax over the K + 1 outputs is averaged
over every pixel of the image, the background channel is dropped, and the argmax over the K classes is the
prediction (background excluded: an image's class is never "background"). A zoo classifier (the ImageNet-init
row) predicts directly. Every model is scored on the index's classes, found by name among its outputs
(pssl.classes): a model pre-trained on an ImageNet subset and a 1000-class classifier are both asked "which of
these classes", and a class a model does not know stops the job before any image is read.

One input protocol for every row of the table (`ClassifySettings`; the paper: single scale): the shorter
side resized to `resize` (bilinear), the central `crop` x `crop` classified, whatever the model. Reading a
segmenter at its pre-training crop and the classifier at its own size would compare two protocols.

Validation layouts: class folders (`<root>/<wnid>/*.JPEG`, as after the usual valprep script), or flat files
(`<root>/*.JPEG`) with the Kaggle solution table `LOC_val_solution.csv` (`ImageId,PredictionString`, the
first token of PredictionString being the wnid), found in the root or beside it. Unreadable images are
counted and named, not fatal.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pssl.classes import ClassSpaceError, columns, record_classes
from pssl.data.images import UnreadableImage, load_rgb
from pssl.device import resolve_device
from pssl.errors import InputError, MissingInput
from pssl.io import atomic_file
from pssl.progress import Progress
from pssl.settings import ClassifySettings
from pssl.tables import read_meta

log = logging.getLogger(__name__)
SOLUTION = "LOC_val_solution.csv"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def val_images(root: str | Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, class index) of every validation image whose class is one of `classes`."""
    root = Path(root)
    index = {wnid: k for k, wnid in enumerate(classes)}
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in index]
    if folders:
        return [(p, index[d.name]) for d in folders for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    solution = next((p for p in (root / SOLUTION, root.parent / SOLUTION) if p.exists()), None)
    if solution is None:
        raise MissingInput(f"{root}: no class folders named by the index's wnids and no {SOLUTION} in it or "
                                f"beside it: the ImageNet val set must be in one of those two layouts")
    files = {p.stem: p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    with open(solution, newline="") as f:
        for row in csv.DictReader(f):
            wnid = row["PredictionString"].split()[0]
            if row["ImageId"] in files and wnid in index:
                pairs.append((files[row["ImageId"]], index[wnid]))
    return sorted(pairs)


def centre_crop(rgb: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Shorter side resized to `resize` (bilinear), then the central crop x crop."""
    if crop > resize:
        raise InputError(f"classify crop {crop} is larger than the resized shorter side {resize}")
    h, w = rgb.shape[:2]
    scale = resize / min(h, w)
    nh, nw = max(resize, round(h * scale)), max(resize, round(w * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR)) if (nh, nw) != (h, w) else rgb
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return resized[top:top + crop, left:left + crop]


def protocol(settings: ClassifySettings) -> str:
    return f"shorter side {settings.resize}, centre crop {settings.crop} x {settings.crop}, single scale"


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, str, list[str]]:
    """(model, kind, classes of its outputs): a pre-trained segmentation model (its classes without the
    background) or a zoo classifier."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("kind") == "pssl-pretrain":
        from pssl.models.segmenter import build_segmenter
        cfg = record["config"]
        if "classes" not in cfg:
            raise ClassSpaceError(f"{path} names no classes (pre-trained by an older version): pre-train it again")
        model = build_segmenter(cfg["head"], cfg["backbone"], cfg["num_classes"])
        model.load_state_dict(record["model"])
        return model.eval().to(device), "segmenter", cfg["classes"]
    from pssl.models.zoo import load_classifier
    model, zoo_record = load_classifier(path, device)
    return model, "classifier", record_classes(zoo_record)


@torch.no_grad()
def class_scores(model: torch.nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    """(B, K) class probabilities: a segmenter's per-pixel softmax averaged over the image, background (the
    last of its K + 1 outputs) dropped; a classifier's softmax."""
    if kind == "segmenter":
        return model(x)["out"].float().softmax(dim=1).mean(dim=(2, 3))[:, :-1]
    return model(x).float().softmax(dim=1)


def evaluate_classification(model_path: str, index: str, root: str, out: str, settings: ClassifySettings,
                            device: str = "auto", batch_size: int = 32) -> dict:
    dev = resolve_device(device)
    classes = read_meta(index)["classes"]
    model, kind, model_classes = load_model(model_path, dev)
    cols = torch.from_numpy(columns(classes, model_classes, str(model_path))).to(dev)
    items = val_images(root, classes)
    if not items:
        raise InputError(f"{root}: no validation image of the index's {len(classes)} classes")
    hits1 = hits5 = done = 0
    unreadable = {}
    with Progress(len(items), f"classify {Path(model_path).parent.name}") as progress:
        for start in range(0, len(items), batch_size):
            pixels, labels = [], []
            for path, label in items[start:start + batch_size]:
                try:
                    pixels.append(centre_crop(load_rgb(path, min_size=(settings.resize, settings.resize)),
                                              settings.resize, settings.crop))
                    labels.append(label)
                except UnreadableImage as e:
                    unreadable[str(path)] = str(e)
            if pixels:
                x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255.0).to(dev)
                top = class_scores(model, kind, x)[:, cols].topk(min(5, len(classes)), dim=1).indices.cpu()
                truth = torch.tensor(labels)[:, None]
                hits1 += int((top[:, :1] == truth).sum())
                hits5 += int((top == truth).any(dim=1).sum())
                done += len(labels)
            progress.update(len(items[start:start + batch_size]))
    result = {"model": str(model_path), "kind": kind, "input": protocol(settings),
              "prediction": "per-pixel softmax averaged over the image, background excluded, argmax"
              if kind == "segmenter" else "softmax argmax",
              "images": done, "unreadable": unreadable, "classes": len(classes),
              "class_space": f"the index's {len(classes)} classes, by name among the model's {len(model_classes)}",
              "top1": hits1 / max(done, 1), "top5": hits5 / max(done, 1)}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info(f"{model_path}: top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}% on {done} images")
    return result
