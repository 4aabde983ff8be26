"""Teacher inference: a fine-tuned segmentation model labels one part of its dataset's unlabelled pool (one or
several folders, pssl.data.pool).

Per image: the probabilities of the dataset's evaluation (its scales, flip, base size and sliding window),
the argmax as a hard label (Zhu et al.'s choice), pixels below `confidence` set to ignore (off by default),
written as `labels/<image path>.png` (train ids, 255 ignore), and the class centroids per tile (the student's
sampler). Resumable: a written PNG is a finished image, so a killed or requeued job continues where it
stopped; the outputs' identity (the teacher's bytes, the settings, the pool) is kept in identity.json and a
different identity starts over. Unreadable images are recorded in the table, not fatal.

Outputs (out_dir): labels/, pseudo.parquet (one row per image: status, size, ignored share, with the
settings in its metadata) and centroids.parquet (image, class, y, x, pixels).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pssl.data.downstream import IGNORE
from pssl.data.images import UnreadableImage, load_rgb
from pssl.data.pool import list_pool, pool_base, pool_part
from pssl.data.student_set import CENTROID_COLUMNS
from pssl.device import allocation, autocast, precision_for, resolve_device
from pssl.errors import InputError
from pssl.eval.inference import probabilities
from pssl.io import atomic_file, fingerprint
from pssl.job_state import read_identity, resumable, write_identity
from pssl.models.segmenter import build_segmenter
from pssl.progress import Progress
from pssl.selftrain.centroids import class_centroids
from pssl.settings import FinetuneSettings, TeacherSettings
from pssl.tables import write_table
from pssl.time_limit import TimeLimit

log = logging.getLogger(__name__)


def selected_weights(selection: str, runs: list[str]) -> Path:
    """The final.pt of the lr run a cell selected (select_lr's metrics.json names its lr)."""
    chosen = json.loads(Path(selection).read_text())["lr"]
    for run in map(Path, runs):
        if json.loads(run.read_text())["lr"] == chosen:
            return run.parent / "final.pt"
    raise InputError(f"{selection} selected lr {chosen}, which none of the runs {', '.join(runs)} has")


def load_finetuned(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("kind") != "pssl-finetune":
        raise InputError(f"{path}: a teacher must be a fine-tuned model (finetune/.../final.pt)")
    cfg = record["config"]
    model = build_segmenter(cfg["head"], cfg["backbone"], cfg["num_classes"])
    model.load_state_dict(record["model"])
    return model.eval().to(device), cfg


def pseudo_label(model, rgb: np.ndarray, num_classes: int, geometry: FinetuneSettings, confidence: float,
                 device: torch.device, precision: str) -> np.ndarray:
    """uint8 (H, W) train ids of one image; IGNORE where the top probability is below `confidence`."""
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255).to(device)
    with autocast(device, precision):
        probs = probabilities(model, x, num_classes, geometry.scales, geometry.flip, crop=geometry.window,
                              base_size=geometry.base_size)[0]
    top, labels = probs.max(dim=0)
    labels[top < confidence] = IGNORE
    return labels.to(torch.uint8).cpu().numpy()


def start_or_resume(out_dir: Path, identity: dict) -> None:
    """Keep the finished label tables of a run with the same identity (pssl.job_state); start over otherwise."""
    if not resumable(read_identity(out_dir), identity, f"{out_dir}/labels"):
        shutil.rmtree(out_dir / "labels", ignore_errors=True)
    write_identity(out_dir, identity)


def label_pool(teacher: str, dataset: str, pool: list[str], out_dir: str | Path, *, geometry: FinetuneSettings,
               settings: TeacherSettings, part: int = 0, parts: int = 1, images: int = 0, seed: int = 0,
               device: str = "auto", requeue_margin_min: float = 15.0, cell: dict | None = None) -> pd.DataFrame:
    """Label part `part` of `parts` of the pool's folders (their first `images` of a fixed order by `seed`, 0:
    all). The tables' `pool` is the folders' common parent, which the image paths are relative to;
    `teacher_cell` names the teacher's cell (`cell`, from its metrics.json) for the reports."""
    out_dir, dev, base = Path(out_dir), resolve_device(device), pool_base(pool)
    relpaths = pool_part(list_pool(pool, images, seed), part, parts)
    model, cfg = load_finetuned(teacher, dev)
    if cfg["dataset"] != dataset:
        raise InputError(f"{teacher} was fine-tuned on {cfg['dataset']}, not {dataset}")
    identity = {"teacher": fingerprint(teacher), "dataset": dataset, "pool": [str(Path(f).resolve()) for f in pool],
                "images": relpaths, "geometry": asdict(geometry), "settings": asdict(settings)}
    start_or_resume(out_dir, identity)
    precision = precision_for(dev, "auto", training=False)
    log.info(f"teacher {Path(teacher).parent.parent.name}/{Path(teacher).parent.name} on {dataset}: part {part} of "
             f"{parts}, {len(relpaths)} pool images, {precision} on {dev}, {allocation()}")
    time_limit = TimeLimit(requeue_margin_min)
    rows, centroids = [], []
    resumed = 0
    with Progress(len(relpaths), f"teacher {dataset} part {part}/{parts}") as progress:
        for relpath in relpaths:
            png = out_dir / "labels" / Path(relpath).with_suffix(".png")
            row = {"relpath": relpath, "label": str(png.relative_to(out_dir)), "status": "done", "error": "",
                   "height": 0, "width": 0, "ignored": 0.0}
            try:
                if png.exists():
                    labels = np.asarray(Image.open(png))
                    resumed += 1
                else:
                    labels = pseudo_label(model, load_rgb(base / relpath), cfg["num_classes"], geometry,
                                          settings.confidence, dev, precision)
                    png.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_file(png) as tmp:
                        Image.fromarray(labels).save(tmp, format="PNG")
                    time_limit.advance()
            except UnreadableImage as e:
                row.update(status="unreadable", error=str(e), label="")
                log.warning("%s: %s (recorded, skipped)", relpath, e)
            else:
                row.update(height=labels.shape[0], width=labels.shape[1], ignored=float((labels == IGNORE).mean()))
                centroids += [(relpath, *c) for c in class_centroids(labels, settings.tile, IGNORE)]
            rows.append(row)
            progress.update()
            if time_limit.expiring():
                time_limit.requeue_and_wait()  # the written PNGs are the saved state
    table = pd.DataFrame(rows)
    meta = {"dataset": dataset, "classes": cfg["classes"], "num_classes": cfg["num_classes"],
            "pool": str(base), "folders": identity["pool"], "teacher": str(teacher),
            "teacher_sha256": identity["teacher"], "teacher_cell": cell,
            "part": part, "parts": parts,
            "geometry": asdict(geometry), "settings": asdict(settings), "precision": precision}
    write_table(pd.DataFrame(centroids, columns=CENTROID_COLUMNS), out_dir / "centroids.parquet", meta)
    write_table(table, out_dir / "pseudo.parquet", meta)
    bad = int((table["status"] != "done").sum())
    log.info(f"{dataset} part {part}/{parts}: {len(table) - bad} images labelled ({resumed} from an earlier run), "
             f"{bad} unreadable, {len(centroids)} class centroids, {100 * table['ignored'].mean():.1f}% ignored")
    return table
