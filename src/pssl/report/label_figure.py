"""Rows of image | label maps panels (self-training's pseudo labels and truth, the fused labels and the D9
labels): every class a fixed colour, ignored pixels white."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pssl.io import atomic_file
from pssl.report.figure3 import class_colours

IGNORED = (1.0, 1.0, 1.0)


def colour(labels: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    """(H, W, 3) colours of a label map; `ignore` (and any value outside the classes) white."""
    palette = np.vstack([class_colours(num_classes), IGNORED])
    return palette[np.where((labels >= 0) & (labels < num_classes) & (labels != ignore), labels, num_classes)]


def label_rows_figure(rows: list[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]], num_classes: int,
                      ignore: int, out: str | Path, title: str) -> Path:
    """One row per (name, RGB image, [(panel title, label map)]); PNG at `out`."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures selects it on import

    cols = 1 + max(len(maps) for _, _, maps in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.2 * len(rows) + 0.5), squeeze=False,
                             layout="constrained")
    for (name, rgb, maps), ax_row in zip(rows, axes):
        ax_row[0].imshow(rgb)
        ax_row[0].set_title(name, fontsize=7)
        for ax, (panel, labels) in zip(ax_row[1:], maps):
            ax.imshow(colour(labels, num_classes, ignore), interpolation="nearest")
            ax.set_title(panel, fontsize=7)
        for ax in ax_row:
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out)
