"""The classifier zoo: M timm classifiers whose explanations are ensembled.

Each zoo entry is saved as `zoo/<name>.pt` in one format whatever its source, so the explain stage loads
every classifier the same way:
  {"name", "arch", "kwargs", "num_classes", "classes", "mean", "std", "source", "state_dict"}
`classes` names the outputs in order (pssl.classes). Sources: `timm` (pretrained ImageNet weights from timm's
cache; no network on compute nodes) and `train` (trained from scratch on the indexed classification set: the
demo).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pssl.classes import timm_classes
from pssl.data.images import UnreadableImage, load_square
from pssl.device import resolve_device
from pssl.errors import InputError
from pssl.io import atomic_file
from pssl.settings import ZooSettings
from pssl.tables import read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierSpec:
    """One zoo entry: `name` (file name), the timm `arch`, extra timm kwargs (e.g. a small ViT), and an
    optional training input size (source train) for architectures that need one (HRNet: multiples of 32)."""
    name: str
    arch: str
    kwargs: dict = field(default_factory=dict)
    image_size: int | None = None


def parse_spec(entry: str | dict) -> ClassifierSpec:
    """A config entry: a timm name, or {name, arch, kwargs}."""
    if isinstance(entry, str):
        return ClassifierSpec(entry, entry)
    return ClassifierSpec(entry["name"], entry.get("arch", entry["name"]), dict(entry.get("kwargs", {})),
                          entry.get("image_size"))


class Normalized(nn.Module):
    """A classifier that takes pixels in [0, 1] and applies its own input normalisation first."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _data_config(model: nn.Module) -> tuple[list[float], list[float]]:
    import timm.data
    cfg = timm.data.resolve_model_data_config(model)
    return list(cfg["mean"]), list(cfg["std"])


def save_classifier(path, spec: ClassifierSpec, model: nn.Module, classes: list[str], source: str) -> None:
    """`classes`: the wnid of each output, in order."""
    if len(classes) != model.num_classes:
        raise InputError(f"{spec.name}: {len(classes)} class names for {model.num_classes} outputs")
    mean, std = _data_config(model)
    with atomic_file(path) as tmp:
        torch.save({"name": spec.name, "arch": spec.arch, "kwargs": spec.kwargs, "num_classes": len(classes),
                    "classes": list(classes), "mean": mean, "std": std, "source": source,
                    "state_dict": model.state_dict()}, tmp)


def load_classifier(path, device: torch.device | str = "cpu") -> tuple[Normalized, dict]:
    """A frozen, eval-mode classifier taking [0, 1] pixels, and its zoo record (without weights)."""
    import timm
    record = torch.load(path, map_location="cpu", weights_only=True)  # plain data: never runs code from a file
    model = timm.create_model(record["arch"], pretrained=False, num_classes=record["num_classes"],
                              **record["kwargs"])
    model.load_state_dict(record.pop("state_dict"))
    wrapped = Normalized(model, record["mean"], record["std"]).eval().to(device)
    for p in wrapped.parameters():
        p.requires_grad_(False)  # explanations need input gradients only
    return wrapped, record


@torch.no_grad()
def ensemble_softmax(classifiers: list[nn.Module], images: torch.Tensor,
                     columns: list[torch.Tensor | None]) -> torch.Tensor:
    """Mean softmax of [0, 1]-input classifiers on clean images, on the run's K classes: the zoo as one
    teacher. Each classifier's softmax spans all its outputs; `columns[i]` picks its outputs of the K classes
    (pssl.classes.columns; None: all, in order), so classifiers with other class lists agree by name. (B, K)."""
    probs = [c(images).float().softmax(dim=1) for c in classifiers]
    return torch.stack([p if cols is None else p[:, cols] for p, cols in zip(probs, columns)]).mean(0)


def weights_missing_message(arch: str, cache_dir) -> str:
    return (f"pretrained weights for timm model {arch!r} are not in the weights cache "
            f"({cache_dir or 'timm/huggingface default'}) and this node has no network. Fill the cache from a "
            f"machine with network access (a login node): `snakemake --cores 1 fill_weights_cache "
            f"--configfile <your config>` or `pssl zoo-fetch --arch {arch} --cache-dir <cache>`.")


def fetch_pretrained(arch: str, cache_dir: str | None) -> None:
    """Download `arch`'s pretrained weights into the cache (run where there is network)."""
    import timm
    timm.create_model(arch, pretrained=True, cache_dir=cache_dir)
    log.info(f"cached pretrained weights of {arch} in {cache_dir or 'the default cache'}")


def zoo_from_timm(spec: ClassifierSpec, out, cache_dir: str | None) -> dict:
    """Save timm's pretrained ImageNet classifier `spec.arch` as a zoo entry, offline."""
    import timm
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # compute nodes: never reach for the network
    try:
        model = timm.create_model(spec.arch, pretrained=True, cache_dir=cache_dir, **spec.kwargs)
    except Exception as e:  # timm raises several kinds (OSError, LocalEntryNotFoundError, RuntimeError)
        raise RuntimeError(weights_missing_message(spec.arch, cache_dir) + f" (timm said: {e})") from None
    classes = timm_classes(model)
    save_classifier(out, spec, model, classes, "timm")
    record = {"name": spec.name, "arch": spec.arch, "source": "timm", "num_classes": len(classes),
              "classes": f"{len(classes)} wnids, {classes[0]} .. {classes[-1]} (timm's ImageNet metadata)"}
    Path(out).with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_labelled_images(index_path, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All labelled, readable images of the index at image_size^2: (uint8 N x 3 x S x S, labels, classes)."""
    frame, meta = read_table(index_path)
    frame = frame[frame["class_idx"] >= 0]
    images, labels = [], []
    for relpath, label in zip(frame["relpath"], frame["class_idx"]):
        try:
            rgb = load_square(Path(meta["root"]) / relpath, image_size)[0].copy()
        except UnreadableImage:
            continue  # the explain stage records unreadable files; training just skips them
        images.append(torch.from_numpy(rgb).permute(2, 0, 1))
        labels.append(int(label))
    return torch.stack(images), torch.tensor(labels), list(meta["classes"])


def split_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class random split: about `fraction` of each class is held out for the accuracy estimate."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = max(1, int(round(fraction * len(idx))))
        held.append(idx[:n_held])
        train.append(idx[n_held:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-sample random flip and random translation (reflect-padded crop) of a float batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=g)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device, batch: int = 64) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device).float() / 255.0
        correct += int((model(x).argmax(1).cpu() == labels[i:i + batch]).sum())
    return correct / max(1, len(images))


def zoo_from_scratch(spec: ClassifierSpec, index_path, out, settings: ZooSettings, device: str = "auto") -> dict:
    """Train `spec.arch` from scratch on the indexed classification set; record held-out accuracy."""
    import timm
    dev = resolve_device(device)
    start = time.monotonic()
    epochs, batch_size, lr, seed = settings.epochs, settings.batch_size, settings.lr, settings.seed
    image_size = spec.image_size or settings.image_size
    images, labels, classes = load_labelled_images(index_path, image_size)
    num_classes = len(classes)
    train_idx, held_idx = split_holdout(labels, settings.holdout, seed)
    torch.manual_seed(seed)
    net = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes, **spec.kwargs)
    mean, std = _data_config(net)
    model = Normalized(net, mean, std).to(dev)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs more than one sample
            x = augment(images[idx].float() / 255.0, g).to(dev)
            loss = F.cross_entropy(model(x), labels[idx].to(dev), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.info(f"{spec.name}: epoch {epoch + 1}/{epochs} loss {total / len(order):.3f}, "
                 f"{time.monotonic() - start:.1f} s")
    acc = accuracy(model, images[held_idx], labels[held_idx], dev)
    save_classifier(out, spec, net.cpu(), classes, "train")
    record = {"name": spec.name, "arch": spec.arch, "kwargs": spec.kwargs, "source": "train",
              "num_classes": num_classes, "image_size": image_size, "epochs": epochs,
              "train_images": len(train_idx), "heldout_images": len(held_idx), "heldout_accuracy": acc,
              "chance_accuracy": 1.0 / num_classes, "seconds": round(time.monotonic() - start, 1),
              "parameters": sum(p.numel() for p in net.parameters())}
    with atomic_file(Path(out).with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    log.info(f"{spec.name}: held-out accuracy {acc:.3f} on {len(held_idx)} images "
             f"(chance {1 / num_classes:.3f}), {record['seconds']} s")
    return record
