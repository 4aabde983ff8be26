"""Pseudo-label quality against the demo's hidden object masks (never used for training).

Per image: precision of the D9 region (fraction of D9 pixels on the object) and the best IoU of
{D >= t} with the object over t in 1..9; averaged over images, for the ensemble and each single model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pssl import store
from pssl.io import atomic_file
from pssl.tables import read_table

log = logging.getLogger(__name__)


def mask_at(masks_root: Path, relpath: str, size: int) -> np.ndarray:
    mask = Image.open(masks_root / Path(relpath).with_suffix(".png")).resize((size, size), Image.NEAREST)
    return np.asarray(mask) > 127


def region_scores(deciles: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(D9 precision, best IoU over thresholds) of one decile map against one object mask."""
    d9 = deciles == 9
    precision = float((d9 & mask).sum() / max(1, d9.sum()))
    best = 0.0
    for t in range(1, 10):
        region = deciles >= t
        best = max(best, float((region & mask).sum() / max(1, (region | mask).sum())))
    return precision, best


def foreground_scores(pred: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(pixel accuracy, foreground IoU) of a predicted foreground against an object mask (both bool)."""
    return float((pred == mask).mean()), float((pred & mask).sum() / max(1, (pred | mask).sum()))


def evaluate_stores(stores: list[str], index: str, masks_root: str) -> pd.DataFrame:
    frame, _ = read_table(index)
    relpath = dict(zip(frame["image_id"], frame["relpath"]))
    rows = []
    for path in stores:
        group = store.open_store(path)
        models = [m["name"] for m in group.attrs["models"]]
        size = group["deciles"].shape[1]
        done = np.flatnonzero(group["status"][:] == store.DONE)
        ids = group["image_id"][:]
        ens = group["deciles"][:]
        per_model = group["model_deciles"][:] if "model_deciles" in group else None
        for i in done:
            mask = mask_at(Path(masks_root), relpath[int(ids[i])], size)
            rows.append(("ensemble", *region_scores(ens[i], mask)))
            if per_model is not None:
                rows += [(name, *region_scores(per_model[i, m], mask)) for m, name in enumerate(models)]
    scores = pd.DataFrame(rows, columns=["explainer", "d9_precision", "best_iou"])
    table = scores.groupby("explainer", sort=False).agg(
        images=("d9_precision", "size"), d9_precision=("d9_precision", "mean"), best_iou=("best_iou", "mean"))
    table = table.reset_index()
    single = table[table["explainer"] != "ensemble"]
    order = ["ensemble"] + single.sort_values("best_iou", ascending=False)["explainer"].tolist()
    return table.set_index("explainer").loc[order].reset_index()


def write_quality(stores: list[str], index: str, masks_root: str, out: str) -> pd.DataFrame:
    table = evaluate_stores(stores, index, masks_root)
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    single = table[table["explainer"] != "ensemble"]
    if len(single):
        ens = table.iloc[0]
        beaten = int((single["best_iou"] < ens["best_iou"]).sum())
        log.info(f"ensemble best-IoU {ens['best_iou']:.3f} beats {beaten}/{len(single)} single models "
                 f"(best single: {single['best_iou'].max():.3f})")
    return table
