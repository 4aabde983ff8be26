"""The pre-trained models against the demo's hidden object masks (pretrain_quality.csv): each model's
prediction, next to the D9 pseudo labels it learned from, the control variants' labels and, for a model
pre-trained on fused labels, the fused labels at its end (fused_labels.png)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pssl import store
from pssl.classes import columns
from pssl.errors import InputError
from pssl.explain.quality import foreground_scores, mask_at
from pssl.io import atomic_file
from pssl.tables import read_table

log = logging.getLogger(__name__)


def pretrain_quality(checkpoints: list[str], stores: list[str], index: str, masks_root: str, out: str,
                     device: str = "auto", figure: str | None = None) -> pd.DataFrame:
    """Foreground (not background) predicted by pre-trained models vs the hidden object masks, next to the
    D9 pseudo labels themselves: pixel accuracy and IoU of the foreground, averaged over images. A model
    pre-trained on fused labels also gets a row for the fused labels it would train on at its end (its own
    prediction fused with the prior, pssl.train.fusion), and `figure` shows image | D9 | fused | object."""
    import torch

    from pssl.data.images import load_square
    from pssl.data.pseudo import prior_strength
    from pssl.device import resolve_device
    from pssl.models.segmenter import build_segmenter
    from pssl.train.fusion import fuse

    dev = resolve_device(device)
    frame, meta = read_table(index)
    relpath = dict(zip(frame["image_id"], frame["relpath"]))
    items = []
    for path in stores:
        group = store.open_store(path)
        ids, status, deciles, targets = group["image_id"][:], group["status"][:], group["deciles"][:], \
            group["target"][:]
        per_model = group["model_deciles"] if "model_deciles" in group else None
        classes = group.attrs["classes"]  # items carry the explained class by name (pssl.classes)
        items += [(int(ids[i]), deciles[i], classes[targets[i]], None if per_model is None else per_model[i])
                  for i in np.flatnonzero(status == store.DONE)]
    size = items[0][1].shape[0]

    # Every image and mask is decoded once, at the store's resolution, and shared by all models.
    masks = [mask_at(Path(masks_root), relpath[item[0]], size) for item in items]
    images = torch.from_numpy(np.stack([load_square(Path(meta["root"]) / relpath[item[0]], size)[0]
                                        for item in items])).permute(0, 3, 1, 2)
    rows = [("D9 pseudo labels", *foreground_scores(item[1] == 9, mask)) for item, mask in zip(items, masks)]
    shown, sources = None, {"deciles"}
    for ckpt in checkpoints:
        record = torch.load(ckpt, map_location="cpu", weights_only=True)
        cfg = record["config"]
        source = cfg.get("label_source", "deciles")
        if source not in sources:  # a control's labels, scored once however many models learned from them
            sources.add(source)
            rows += control_label_scores(source, items, masks, cfg["decile_threshold"])
        model = build_segmenter(cfg["head"], cfg["backbone"], cfg["num_classes"])
        model.load_state_dict(record["model"])
        model.eval().to(dev)
        model_dir, variant = Path(ckpt).parent.parent.name, Path(ckpt).parent.name  # pretrain/<model>/<variant>
        name = model_dir if variant == "main" else f"{model_dir} {variant}"
        fusion = cfg.get("fusion")
        for start in range(0, len(items), 32):
            batch = items[start:start + 32]
            x = images[start:start + 32].float().div(255).to(dev)
            with torch.no_grad():
                logits = model(x)["out"].float()
            pred = logits.argmax(1).cpu().numpy() != cfg["background"]
            rows += [(name, *foreground_scores(p, mask)) for p, mask in zip(pred, masks[start:start + 32])]
            if fusion:
                strength = torch.from_numpy(np.stack([prior_strength(fusion["prior"], d, m)
                                                      for _, d, _, m in batch])).to(dev)
                labels = torch.from_numpy(columns([t for _, _, t, _ in batch], cfg["classes"], ckpt)).to(dev)
                # models fused before the calibration was a setting: the decoder's RMS alone
                fused = fuse(logits, strength, labels, cfg["background"], fusion["gamma"], fusion["temperature"],
                             fusion.get("calibration", "decoder")).argmax(1).cpu().numpy()
                rows += [(f"{name}: its fused labels", *foreground_scores(f != cfg["background"], mask))
                         for f, mask in zip(fused, masks[start:start + 32])]
                if shown is None:
                    shown = (name, images[start:start + 4], batch[:4], labels[:4].tolist(), fused[:4],
                             masks[start:start + 4], cfg["background"])
    table = pd.DataFrame(rows, columns=["source", "pixel_acc", "fg_iou"]).groupby("source", sort=False).agg(
        images=("pixel_acc", "size"), pixel_acc=("pixel_acc", "mean"), fg_iou=("fg_iou", "mean")).reset_index()
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if figure:
        if shown is None:
            raise InputError("a fused-labels figure needs a model pre-trained with label_mode fused")
        fused_figure(*shown, figure)
    return table


def control_label_scores(source: str, items: list, masks: list[np.ndarray], threshold: int) -> list[tuple]:
    """Foreground scores of a control's label maps (pssl.data.label_sources) on the same images: shuffled
    pairs them by a derangement of their own (the run's pairing differs, its statistics do not), oracle is the
    masks themselves."""
    from pssl.data.label_sources import derangement, foreground
    partner = derangement(len(items), 0) if source == "shuffled" else None
    rows = []
    for i, ((_, deciles, _, _), mask) in enumerate(zip(items, masks)):
        fg = foreground(source, deciles, threshold, mask=mask.astype(np.int8),
                        partner_deciles=None if partner is None else items[partner[i]][1])
        rows.append((f"{source} labels (control)", *foreground_scores(fg == 1, mask)))
    return rows


def fused_figure(name: str, images, items, labels: list[int], fused: np.ndarray, masks: list[np.ndarray],
                 background: int, out: str) -> None:
    """image | D9 label | fused label | hidden object, for a few images (classes in colour, background grey);
    `labels`: each image's class among the model's outputs."""
    from pssl.report.label_figure import label_rows_figure

    rows = []
    for rgb, (_, deciles, wnid, _), target, f, mask in zip(images, items, labels, fused, masks):
        rows.append((wnid, rgb.permute(1, 2, 0).numpy(),
                     [("D9 label", np.where(deciles == 9, target, background)), ("fused label", f),
                      ("hidden object", np.where(mask, target, background))]))
    label_rows_figure(rows, background + 1, -1, out,
                      f"PseudoSeg fusion at the end of pre-training: {name} (its prediction fused with the prior)")
