"""The paper's Figure 4: val mIoU against the initial learning rate of every fine-tune cell that tried more
than one lr (its grid, or the lrs its peak search walked), ImageNet init beside PSSL init; figure4.csv lists
every lr tried with its val mIoU and which one the cell kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pssl.io import atomic_file
from pssl.layout import cell_of

CAPTION = "Figure 4: val mIoU against the initial learning rate (every lr each cell tried; filled: the kept one)"


def lr_curves(cells: list[str]) -> pd.DataFrame:
    """One row per lr tried by a cell and seed: dataset, model, init, seed, lr, val mIoU (%), kept."""
    rows = []
    for path in map(Path, cells):
        metrics = json.loads(path.read_text())
        tried = metrics.get("lrs_tried") or {str(metrics["lr"]): metrics["selection"]["miou"]}
        rows += [{**cell_of(metrics, str(path)), "lr": float(lr), "val_miou": 100 * miou, "kept": np.isclose(float(lr), metrics["lr"])}
                 for lr, miou in tried.items()]
    columns = ["dataset", "model", "init", "seed", "lr", "val_miou", "kept"]
    return pd.DataFrame(rows, columns=columns).sort_values(columns[:5], ignore_index=True)


def searched(curves: pd.DataFrame) -> pd.DataFrame:
    """The rows of the cells and seeds that tried more than one lr."""
    sizes = curves.groupby(["dataset", "model", "init", "seed"])["lr"].transform("size")
    return curves[sizes > 1]


def figure4(curves: pd.DataFrame, out: str | Path, model_titles: dict[str, str]) -> None:
    """One panel per dataset (rows) and model (columns), a line per init and seed (a diverged run, NaN, is a
    gap); written as PNG and SVG."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures (imported by table3) selects it

    shown = searched(curves)
    datasets, models = list(dict.fromkeys(shown["dataset"])), list(dict.fromkeys(shown["model"]))
    fig, axes = plt.subplots(max(1, len(datasets)), max(1, len(models)), squeeze=False, layout="constrained",
                             figsize=(3.6 * max(1, len(models)), 2.8 * max(1, len(datasets))))
    if shown.empty:
        axes[0, 0].text(0.5, 0.5, "every cell trained one lr (finetune.lr_search: fixed)", ha="center",
                        va="center", transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    colours = {init: f"C{i}" for i, init in enumerate(dict.fromkeys(shown["init"]))}
    for (r, dataset), (c, model) in ((d, m) for d in enumerate(datasets) for m in enumerate(models)):
        ax = axes[r, c]
        panel = shown[(shown["dataset"] == dataset) & (shown["model"] == model)]
        if panel.empty:  # this dataset was not fine-tuned with this model
            ax.set_axis_off()
            continue
        for (init, seed), run in panel.groupby(["init", "seed"], sort=False):
            style = {"color": colours[init], "alpha": 1.0 if seed == panel["seed"].min() else 0.45}
            ax.plot(run["lr"], run["val_miou"], "o-", markerfacecolor="white", label=f"{init} seed {seed}", **style)
            kept = run[run["kept"]]
            ax.plot(kept["lr"], kept["val_miou"], "o", **style)
        ax.set_xscale("log")
        lrs = sorted(panel["lr"].unique())
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], fontsize=7)  # the lrs tried, as the config writes them
        ax.minorticks_off()
        ax.set_title(f"{dataset} · {model_titles.get(model, model)}", fontsize=9)
        ax.set_xlabel("initial lr")
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    out = Path(out)
    for path, kind in ((out, "png"), (out.with_suffix(".svg"), "svg")):
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=kind, dpi=130)
    plt.close(fig)


def write_figure4(cells: list[str], out_dir: str | Path, model_titles: dict[str, str]) -> str:
    """figure4.csv (every lr tried) and figure4.png / .svg; the Markdown that shows them."""
    out = Path(out_dir)
    curves = lr_curves(cells)
    with atomic_file(out / "figure4.csv") as tmp:
        curves.to_csv(tmp, index=False, float_format="%.4g")
    figure4(curves, out / "figure4.png", model_titles)
    cells_searched = searched(curves).groupby(["dataset", "model", "init", "seed"]).ngroups
    return (f"\n## {CAPTION}\n\n{cells_searched} of {len(cells)} cells and seeds tried more than one lr; "
            f"{len(curves)} runs in figure4.csv.\n\n![Figure 4](figure4.png)\n")
