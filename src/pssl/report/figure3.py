"""The paper's Figure 3: a pre-trained model segmenting downstream images (VOC val) into the ImageNet classes
+ background, before any fine-tuning. Each row: the image, and the per-pixel argmax over the K + 1 outputs
over it, every class a colour and the largest classes named (short ImageNet names) in a legend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pssl.data.downstream import SegmentationSet
from pssl.device import resolve_device
from pssl.eval.classify import load_model
from pssl.eval.inference import predict
from pssl.io import atomic_file
from pssl.report.figures import class_names
from pssl.tables import read_meta

BACKGROUND = (0.25, 0.25, 0.25)


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 3) distinct colours: the golden-angle hue walk, so neighbouring class ids differ."""
    import matplotlib.colors as mcolors
    hues = (np.arange(num_classes) * 0.618034) % 1.0
    return mcolors.hsv_to_rgb(np.stack([hues, np.full(num_classes, 0.75), np.full(num_classes, 0.95)], axis=1))


@torch.no_grad()
def figure3(model_path: str, dataset: str, root: str, index: str, out: str | Path, images: int = 6,
            named: int = 3, device: str = "auto") -> Path:
    """Segment `images` val images of `dataset` (evenly spread) with the pre-trained model; PNG at `out` and
    a PDF beside it."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures selects it on import
    from matplotlib.patches import Patch

    dev = resolve_device(device)
    model, kind, _, wnids = load_model(model_path, dev, 0)  # the classes it was pre-trained on
    if kind != "segmenter":
        raise ValueError(f"{model_path}: Figure 3 needs a pre-trained segmentation model (pretrain/.../final.pt)")
    names = class_names(read_meta(index)["root"])  # only for the short names beside the wnids
    labels = [names.get(w, w) for w in wnids]
    colours = np.vstack([class_colours(len(wnids)), BACKGROUND])
    data = SegmentationSet(dataset, root, "val")
    picks = np.linspace(0, len(data) - 1, min(images, len(data))).round().astype(int)
    fig, axes = plt.subplots(len(picks), 2, figsize=(8, 3.2 * len(picks)), squeeze=False, layout="constrained")
    for row, i in enumerate(picks):
        rgb, _ = data.read(int(i))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255.0).to(dev)
        pred = predict(model, x, len(wnids) + 1).cpu().numpy()
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title(Path(data.pairs[int(i)][0]).name, fontsize=8)
        axes[row, 1].imshow(colours[pred])
        classes, area = np.unique(pred[pred < len(wnids)], return_counts=True)
        top = classes[np.argsort(-area)][:named]
        covered = 100 * (pred < len(wnids)).mean()
        axes[row, 1].set_title(f"{covered:.0f}% of pixels in an ImageNet class", fontsize=8)
        axes[row, 1].legend(handles=[Patch(color=colours[c], label=labels[c]) for c in top] +
                            [Patch(color=BACKGROUND, label="background")], fontsize=7, loc="lower right")
        for ax in axes[row]:
            ax.set_axis_off()
    fig.suptitle(f"Figure 3: {Path(model_path).parent.parent.name} after pre-training, {len(wnids)} ImageNet "
                 f"classes + background, on {data.spec.title} val", fontsize=10)
    out = Path(out)
    for path, fmt in ((out, "png"), (out.with_suffix(".pdf"), "pdf")):
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
    return out
