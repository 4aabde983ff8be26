"""Teacher inference and the pseudo-label policy: which class the D9 pixels of each image get, and which
images are kept.

Policies (labels.policy):
  gt       the dataset's class (the paper); unlabelled images are dropped
  teacher  the teacher's top-1 (for unlabelled data)
  agree    the dataset's class, kept only if it is among the teacher's top-k (drops noisy labels)
labels.min_conf drops images whose teacher confidence (top-1 probability) is below it, under every policy.

Class numbers in the table index its metadata's `classes` (pssl.classes): the index's classes under gt and
agree, the zoo's under teacher. The teacher's probabilities are its softmax over all its outputs, read at
those classes by name (a subset's probabilities need not sum to 1), so top-1 and top-k are among them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pssl import store
from pssl.classes import columns, remap, run_space
from pssl.data.shard_images import ShardBatches
from pssl.device import allocation, resolve_device
from pssl.errors import InputError
from pssl.models.zoo import ensemble_softmax, load_classifier
from pssl.progress import Progress
from pssl.settings import LabelSettings
from pssl.tables import read_table, write_table

log = logging.getLogger(__name__)

POLICIES = ("gt", "teacher", "agree")
LABEL_COLUMNS = ("image_id", "gt_class", "teacher_class", "teacher_conf", "label", "keep", "fg_fraction")


def apply_policy(gt: np.ndarray, probs: np.ndarray, done: np.ndarray, policy: str, top_k: int,
                 min_conf: float) -> tuple[np.ndarray, np.ndarray]:
    """(label, keep) per image from ground truth, teacher probabilities (N, K) and explain status."""
    if policy not in POLICIES:
        raise InputError(f"labels.policy must be one of {POLICIES}, got {policy!r}")
    teacher = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    keep = done & (conf >= min_conf)
    if policy == "teacher":
        return teacher, keep
    labelled = gt >= 0
    if policy == "agree":
        top = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        keep &= (top == gt[:, None]).any(axis=1)
    return np.where(labelled, gt, -1), keep & labelled


def label_shard(shard: str | Path, explain_store: str | Path, zoo_paths: list[str], out: str | Path,
                settings: LabelSettings = LabelSettings(), device: str = "auto", batch_size: int = 32) -> pd.DataFrame:
    policy, top_k, min_conf = settings.policy, settings.top_k, settings.min_conf
    dev = resolve_device(device)
    frame, meta = read_table(shard)
    group = store.open_store(explain_store)
    if not np.array_equal(group["image_id"][:], frame["image_id"].to_numpy()):
        raise InputError(f"{explain_store} does not hold the images of {shard}")
    size = group["deciles"].shape[1]
    status = group["status"][:]
    loaded = [load_classifier(p, dev) for p in zoo_paths]
    classes = run_space(meta["classes"], [record for _, record in loaded], use_labels=policy != "teacher")
    classifiers = [model for model, _ in loaded]
    cols = [torch.from_numpy(columns(classes, record["classes"], f"classifier {record['name']!r}")).to(dev)
            for _, record in loaded]
    n = len(frame)
    probs = np.zeros((n, len(classes)), dtype=np.float32)
    loader = torch.utils.data.DataLoader(
        ShardBatches(Path(meta["root"]), frame["relpath"].tolist(), batch_size, size,
                     list(range(-(-n // batch_size)))), batch_size=None, num_workers=settings.num_workers)
    with Progress(n, f"label {Path(shard).stem}") as progress:
        for start, stop, images, _, reasons in loader:
            ok = np.array([j not in reasons for j in range(stop - start)])
            if ok.any():
                probs[start:stop][ok] = ensemble_softmax(classifiers, images.to(dev).float() / 255, cols).cpu().numpy()
            progress.update(stop - start)
    done = status == store.DONE
    deciles = group["deciles"]
    fg = np.array([float((deciles[i] >= settings.decile_threshold).mean()) if done[i] else 0.0 for i in range(n)])
    gt = frame["class_idx"].to_numpy().astype(np.int64)  # the index's classes
    if policy == "teacher":  # the table numbers the zoo's classes; a label the zoo does not know is no label
        gt = remap(gt, meta["classes"], classes, None)
    label, keep = apply_policy(gt, probs, done, policy, top_k, min_conf)
    table = pd.DataFrame({"image_id": frame["image_id"].to_numpy(), "gt_class": gt,
                          "teacher_class": probs.argmax(1).astype(np.int64), "teacher_conf": probs.max(1),
                          "label": label.astype(np.int64), "keep": keep, "fg_fraction": fg})
    write_table(table, out, {**meta, "classes": classes, "num_classes": len(classes), "policy": policy, "top_k": top_k,
                             "min_conf": min_conf, "decile_threshold": settings.decile_threshold,
                             "teacher": [Path(p).stem for p in zoo_paths]})
    labelled = gt >= 0
    agree = float((table["teacher_class"][labelled] == gt[labelled]).mean()) if labelled.any() else float("nan")
    log.info(f"{Path(shard).stem}: teacher on {dev}, {allocation()}")
    log.info(f"{Path(shard).stem}: {int(keep.sum())}/{n} kept under policy {policy!r}; "
             f"teacher top-1 agrees with the label on {agree:.3f} of labelled images")
    return table
