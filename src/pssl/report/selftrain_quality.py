"""Self-training's pseudo labels against the demo pool's hidden truth (a diagnostic; training never reads it).

Per teacher (dataset, model, init, seed; all parts of its pool): mIoU and pixel accuracy of the pseudo labels
over the pixels they label, the share they leave ignored, and the teacher's own mIoU on the dataset's
evaluation split for comparison. A figure shows image | pseudo label | truth for a few pool images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pssl.data.downstream import DATASETS, IGNORE
from pssl.data.images import load_rgb
from pssl.data.pool import truth_path
from pssl.errors import InputError
from pssl.eval.metrics import confusion_matrix, scores
from pssl.io import atomic_file
from pssl.layout import CELL_KEYS, cell_of
from pssl.report.label_figure import label_rows_figure
from pssl.tables import read_table

log = logging.getLogger(__name__)


def teacher_of(table: Path) -> dict:
    """A pseudo-label table's teacher cell (recorded in its metadata by the teacher job)."""
    meta = read_table(table)[1]
    if "teacher_cell" not in meta:
        raise InputError(f"{table} names no teacher cell (written by an older version): rerun its teacher job")
    return meta["teacher_cell"]


def teacher_scores(tables: list[Path], truth_root: Path) -> dict:
    meta = read_table(tables[0])[1]
    num_classes = meta["num_classes"]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    labelled = total = images = 0
    for path in tables:
        frame = read_table(path)[0]
        for relpath, label in zip(*frame[frame["status"] == "done"][["relpath", "label"]].to_numpy().T):
            pseudo = np.asarray(Image.open(path.parent / label)).astype(np.int64)
            truth = np.asarray(Image.open(truth_path(truth_root, relpath))).astype(np.int64)
            counted = pseudo != IGNORE
            confusion += confusion_matrix(torch.from_numpy(pseudo[counted]), torch.from_numpy(truth[counted]),
                                          num_classes)
            labelled, total, images = labelled + int(counted.sum()), total + pseudo.size, images + 1
    result = scores(confusion)
    return {"images": images, "pseudo_miou": 100 * result["miou"], "pseudo_pixel_acc": 100 * result["pixel_acc"],
            "labelled_share": 100 * labelled / max(total, 1)}


def write_pseudo_quality(tables: list[str], truth: list[str], teachers: list[str], out: str, figure: str,
                         examples: int = 4) -> pd.DataFrame:
    """`truth`: dataset=folder pairs; `teachers`: the teacher cells' metrics.json (their own mIoU)."""
    roots = dict(item.split("=", 1) for item in truth)
    grouped: dict[tuple, list[Path]] = {}
    for path in map(Path, tables):
        grouped.setdefault(tuple(teacher_of(path)[k] for k in CELL_KEYS), []).append(path)
    own = {}
    for path in map(Path, teachers):  # the teacher cells' metrics.json
        metrics = json.loads(path.read_text())
        cell = cell_of(metrics, str(path))
        own[tuple(cell[k] for k in CELL_KEYS)] = 100 * metrics["miou"]
    rows = []
    for key, paths in grouped.items():
        if key[0] not in roots:
            raise InputError(f"no hidden truth given for {key[0]} (--truth {key[0]}=<folder>)")
        rows.append({**dict(zip(CELL_KEYS, key)), "teacher_miou": own.get(key, np.nan),
                     **teacher_scores(sorted(paths), Path(roots[key[0]]))})
    table = pd.DataFrame(rows)
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.2f")
    log.info("\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    first = next(iter(grouped.values()))
    example_figure(sorted(first), Path(roots[teacher_of(first[0])["dataset"]]), figure, examples)
    return table


def example_figure(tables: list[Path], truth_root: Path, out: str, count: int) -> None:
    """image | pseudo label | hidden truth for `count` pool images of one teacher."""
    table, meta = read_table(tables[0])
    done = table[table["status"] == "done"]
    picks = done.iloc[np.linspace(0, len(done) - 1, min(count, len(done))).round().astype(int)]
    teacher = teacher_of(tables[0])
    rows = [(relpath, load_rgb(Path(meta["pool"]) / relpath),
             [("teacher's pseudo label", np.asarray(Image.open(tables[0].parent / label))),
              ("hidden truth", np.asarray(Image.open(truth_path(truth_root, relpath))))])
            for relpath, label in zip(picks["relpath"], picks["label"])]
    title = (f"Self-training: {DATASETS[teacher['dataset']].title} pool labelled by {teacher['model']} "
             f"({teacher['init']} init, seed {teacher['seed']}); white: ignored")
    label_rows_figure(rows, meta["num_classes"], IGNORE, out, title)
