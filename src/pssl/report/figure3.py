"""The paper's Figure 3: a pre-trained model segmenting downstream val images (VOC-Aug) into the ImageNet
classes + background, before any fine-tuning. The images are the paper's: "the first (three) images from the
VOC-A validation set, plus the first image that contains 'person'" (section 6.2), a class ImageNet lacks. Four
columns: the image, its ground truth (the dataset's classes), the prediction (per-pixel argmax over the K + 1
outputs, every ImageNet class a colour), and a legend naming the prediction's largest classes (short ImageNet
names) and the ground truth's classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pssl.data.downstream import IGNORE, SegmentationSet
from pssl.device import resolve_device
from pssl.errors import InputError
from pssl.eval.classify import load_model
from pssl.eval.inference import predict
from pssl.io import atomic_file
from pssl.report.figures import class_names
from pssl.tables import read_meta

log = logging.getLogger(__name__)

BACKGROUND = (0.25, 0.25, 0.25)  # the model's background output, and a dataset's own "background" class
IGNORED = (1.0, 1.0, 1.0)        # ground-truth pixels the dataset leaves unlabelled (255)
COLUMNS = ("image", "ground truth", "prediction", "legend")


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 3) distinct colours: the golden-angle hue walk, so neighbouring class ids differ."""
    import matplotlib.colors as mcolors
    hues = (np.arange(num_classes) * 0.618034) % 1.0
    return mcolors.hsv_to_rgb(np.stack([hues, np.full(num_classes, 0.75), np.full(num_classes, 0.95)], axis=1))


def figure_rows(data, first: int, contains: str | None) -> list[int]:
    """Which val images the figure shows: the first `first`, plus the first one whose ground truth has the
    class `contains` (by the dataset's class name), unless it is already among them. `data`: a
    SegmentationSet (read(i) -> (image, train ids); spec.classes)."""
    rows = list(range(min(first, len(data))))
    if contains is None:
        return rows
    if contains not in data.spec.classes:
        raise InputError(f"figure3 contains: {contains!r} is not a class of {data.spec.title} "
                         f"({', '.join(data.spec.classes)})")
    wanted = data.spec.classes.index(contains)  # class k of a dataset is train id k
    for i in range(len(data)):
        if (data.read(i)[1] == wanted).any():
            return rows if i in rows else [*rows, i]
    log.warning(f"no {data.spec.title} val image shows {contains!r}: Figure 3 shows the first {len(rows)} only")
    return rows


@dataclass
class Row:
    rgb: np.ndarray      # (H, W, 3) uint8
    truth: np.ndarray    # (H, W) the dataset's train ids, IGNORE unlabelled
    pred: np.ndarray     # (H, W) 0..K-1 an ImageNet class, K background
    title: str


def truth_colours(classes: tuple[str, ...]) -> np.ndarray:
    """(256, 3): a colour per train id, the dataset's own background grey, unlabelled white."""
    lut = np.tile(np.array(IGNORED), (256, 1))
    lut[:len(classes)] = class_colours(len(classes))
    if "background" in classes:
        lut[classes.index("background")] = BACKGROUND
    return lut


def by_area(labels: np.ndarray, exclude: set[int]) -> list[int]:
    """The label values present, largest area first (ties: smaller value first)."""
    values, area = np.unique(labels, return_counts=True)
    keep = [i for i, v in enumerate(values) if int(v) not in exclude]
    return [int(values[i]) for i in sorted(keep, key=lambda i: (-area[i], values[i]))]


def draw(rows: list[Row], imagenet_names: list[str], dataset_classes: tuple[str, ...], title: str,
         named: int = 3):
    """The figure: one row per image, the four COLUMNS."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures selects it on import
    from matplotlib.patches import Patch

    background = len(imagenet_names)
    pred_colours = np.vstack([class_colours(background), BACKGROUND])
    gt_colours = truth_colours(dataset_classes)
    fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(13, 3.2 * len(rows)), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1, 0.6]})
    for r, row in enumerate(rows):
        image_ax, truth_ax, pred_ax, legend_ax = axes[r]
        image_ax.imshow(row.rgb)
        image_ax.set_title(row.title, fontsize=8)
        truth_ax.imshow(gt_colours[row.truth])
        truth_ax.set_title("ground truth", fontsize=8)
        pred_ax.imshow(pred_colours[row.pred])
        covered = 100 * (row.pred < background).mean()
        pred_ax.set_title(f"prediction: {covered:.0f}% of pixels in an ImageNet class", fontsize=8)
        predicted = by_area(row.pred, {background})[:named]
        first = legend_ax.legend(handles=[Patch(color=pred_colours[c], label=imagenet_names[c]) for c in predicted]
                                 + [Patch(color=BACKGROUND, label="background")],
                                 title="prediction", fontsize=7, title_fontsize=8, loc="upper left")
        legend_ax.add_artist(first)
        legend_ax.legend(handles=[Patch(color=gt_colours[c], label=dataset_classes[c])
                                  for c in by_area(row.truth, {IGNORE})],
                         title="ground truth", fontsize=7, title_fontsize=8, loc="lower left")
        for ax in axes[r]:
            ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


@torch.no_grad()
def figure3(model_path: str, dataset: str, root: str, index: str, out: str | Path, images: int = 3,
            contains: str | None = None, named: int = 3, device: str = "auto") -> Path:
    """Segment the first `images` val images of `dataset`, and the first showing class `contains`, with the
    pre-trained model; PNG at `out` and a PDF beside it."""
    import matplotlib.pyplot as plt

    dev = resolve_device(device)
    model, kind, wnids = load_model(model_path, dev)  # the classes it was pre-trained on
    if kind != "segmenter":
        raise InputError(f"{model_path}: Figure 3 needs a pre-trained segmentation model (pretrain/.../final.pt)")
    names = class_names(read_meta(index)["root"])  # only for the short names beside the wnids
    data = SegmentationSet(dataset, root, "val")
    picks = figure_rows(data, images, contains)
    rows = []
    for i in picks:
        rgb, truth = data.read(i)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255.0).to(dev)
        name = Path(data.pairs[i][0]).name
        extra = i >= images  # the row added for `contains`
        rows.append(Row(rgb, truth, predict(model, x, len(wnids) + 1).cpu().numpy(),
                        f"{name}: the first showing {contains}" if extra else name))
    fig = draw(rows, [names.get(w, w) for w in wnids], data.spec.classes,
               f"Figure 3: {Path(model_path).parent.parent.name} after pre-training, {len(wnids)} ImageNet classes "
               f"+ background, on {data.spec.title} val", named)
    out = Path(out)
    for path, fmt in ((out, "png"), (out.with_suffix(".pdf"), "pdf")):
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
    return out
