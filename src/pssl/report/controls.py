"""The controls beside Table 3: where PSSL falls between pre-training on labels with no information about the
image (shuffled), a prior without explanations (centre), and perfect labels of the same images (oracle), and
what the transferred segmentation module adds (PSSL backbone-only). Each init's paired difference to ImageNet
init per cell, with its 95% interval over the seeds; one sentence per model.

Read from the same fine-tune cells as Table 3 (pssl.report.table3.collect); an init that did not run is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pssl.data.downstream import DATASETS
from pssl.io import atomic_file
from pssl.report.stats import paired_difference

# The columns, from no information to perfect labels; each a fine-tune init (pssl-<variant> of a control
# variant, pssl~backbone: the main pre-training's backbone alone).
CONTROLS = {"pssl-shuffled": "shuffled", "pssl-centre": "centre", "pssl": "PSSL", "pssl~backbone": "PSSL backbone",
            "pssl-oracle": "oracle"}
CAPTION = "Controls: each init's mIoU gain over ImageNet init (points, paired over seeds, ± 95% interval)"


def controls_table(cells: pd.DataFrame, model_titles: dict[str, str]) -> pd.DataFrame:
    """One row per (model, dataset): ImageNet's mIoU, then per present control its diff, ci95 and whether the
    interval excludes zero."""
    present = [i for i in CONTROLS if i in set(cells["init"])]
    rows = []
    for model, mine in cells.groupby("model", sort=False):
        diffs = {i: paired_difference(mine, i, "imagenet", ["dataset"]).set_index("dataset") for i in present}
        for dataset in dict.fromkeys(mine["dataset"]):
            row = {"model": model_titles.get(model, model),
                   "dataset": DATASETS[dataset].title if dataset in DATASETS else dataset,
                   "ImageNet": mine[(mine["dataset"] == dataset) & (mine["init"] == "imagenet")]["miou"].mean()}
            for init in present:
                d = diffs[init]
                found = dataset in d.index
                row[CONTROLS[init]] = d["diff"].get(dataset, np.nan) if found else np.nan
                row[CONTROLS[init] + " ci95"] = d["ci95"].get(dataset, np.nan) if found else np.nan
                row[CONTROLS[init] + " excludes 0"] = bool(d["excludes_zero"].get(dataset, False)) if found else False
            rows.append(row)
    return pd.DataFrame(rows)


def _columns(table: pd.DataFrame) -> list[str]:
    return [c for c in CONTROLS.values() if c in table]


def verdicts(table: pd.DataFrame) -> list[str]:
    """One sentence per model: PSSL's place between the controls, cell by cell (means), and how many of the
    oracle's and PSSL's gains over ImageNet have an interval excluding zero."""
    sentences = []
    for model, part in table.groupby("model", sort=False):
        n, parts = len(part), []
        if "PSSL" not in part:
            continue
        for control, word in (("shuffled", "above"), ("centre", "above"), ("oracle", "below")):
            if control in part:
                beats = (part["PSSL"] > part[control]) if word == "above" else (part["PSSL"] < part[control])
                parts.append(f"{word} {control} in {int(beats.sum())}/{n}")
        for column in ("oracle", "PSSL"):
            if column in part:
                up = int((part[column + " excludes 0"] & (part[column] > 0)).sum())
                down = int((part[column + " excludes 0"] & (part[column] < 0)).sum())
                parts.append(f"{column} beats ImageNet with an interval excluding zero in {up}/{n} cells "
                             f"(loses so in {down})")
        sentences.append(f"{model}: PSSL is " + ", ".join(parts) + ".")
    if "oracle" in table:
        sentences += [s for model, part in table.groupby("model", sort=False) if (s := positive_control(model, part))]
    return sentences


def positive_control(model: str, part: pd.DataFrame) -> str | None:
    """Whether this model's cells can show a gain from pre-training at all: the oracle (perfect labels of the same
    images) must beat ImageNet init with an interval excluding zero in most (more than half) of the cells where
    it ran. With one seed there is no interval, so no verdict."""
    ran = part["oracle"].notna()
    n = int(ran.sum())
    if not n:
        return None
    if part.loc[ran, "oracle ci95"].isna().all():
        return (f"{model}: the positive control cannot be judged with one seed (paired intervals need at least 2; "
                f"make demo-controls runs 3).")
    up = int((part["oracle excludes 0"] & (part["oracle"] > 0)).sum())
    if 2 * up > n:
        return (f"{model}: the positive control holds: the oracle beats ImageNet init with an interval excluding "
                f"zero in {up} of the {n} cells where it ran, so these cells can measure a gain from pre-training.")
    return (f"{model}: the positive control fails: the oracle beats ImageNet init with an interval excluding zero "
            f"in only {up} of the {n} cells where it ran, so these cells do not show that pre-training can gain "
            f"here (a gain may also be too small for the seeds to resolve), and PSSL's differences cannot tell a "
            f"defect from the method (docs/experiments.md, the controls).")


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    out = table[["model", "dataset"]].copy()
    out["ImageNet"] = [f"{v:.2f}" for v in table["ImageNet"]]
    for c in _columns(table):
        out[c] = ["–" if pd.isna(v) else f"{v:+.2f}" + ("" if pd.isna(e) else f" ± {e:.2f}") + (" *" if x else "")
                  for v, e, x in zip(table[c], table[c + " ci95"], table[c + " excludes 0"])]
    return out


def markdown(table: pd.DataFrame) -> str:
    shown = formatted(table)
    lines = [f"## {CAPTION}", "", "| " + " | ".join(shown.columns) + " |",
             "|---|---|" + "|".join("---:" for _ in shown.columns[2:]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in shown.astype(str).to_numpy()]
    return "\n".join(lines) + "\n\n" + NOTE + "\n\n" + "\n".join(f"- {s}" for s in verdicts(table)) + "\n"


NOTE = ("ImageNet: mIoU (%) of ImageNet init. Other columns: init - ImageNet init, mean of the per-seed paired "
        "differences ± half-width of its 95% t interval; * where the interval excludes zero. shuffled: "
        "pre-trained on another image's D9 region (each image keeps its class); centre: on a centred ellipse "
        "of the D9 region's area; oracle: on the true object masks; PSSL backbone: the main pre-training's "
        "backbone with a fresh head.")


def controls_figure(table: pd.DataFrame, out: str | Path) -> None:
    """Per model, grouped bars of each control's gain over ImageNet per dataset with 95% intervals."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures (imported by table3) selects it

    columns, models = _columns(table), list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(max(6.0, 1.8 * table["dataset"].nunique() + 2),
                                                      3.2 * len(models)), squeeze=False, layout="constrained")
    for ax, model in zip(axes[:, 0], models):
        part = table[table["model"] == model]
        x = np.arange(len(part))
        width = 0.8 / max(1, len(columns))
        for b, c in enumerate(columns):
            ax.bar(x - 0.4 + (b + 0.5) * width, np.nan_to_num(part[c].to_numpy(float)), width,
                   yerr=np.nan_to_num(part[c + " ci95"].to_numpy(float)), capsize=2, label=c)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, list(part["dataset"]))
        ax.set_ylabel("mIoU - ImageNet init")
        ax.set_title(model, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncols=len(columns))
    out = Path(out)
    for path, kind in ((out, "png"), (out.with_suffix(".svg"), "svg")):
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=kind, dpi=130)
    plt.close(fig)


def controls_section(csv: str | Path) -> tuple[str, str]:
    """The written controls (controls.csv beside controls.md and .png) as HTML for the report, and Markdown."""
    from pssl.report.html import html_table
    csv = Path(csv)
    table = pd.read_csv(csv)
    sentences = "".join(f"<li>{s}</li>" for s in verdicts(table))
    body = (html_table(formatted(table), CAPTION, NOTE, index=False) + f"\n<ul>{sentences}</ul>\n"
            f'<img src="{csv.with_suffix(".png").name}" alt="controls">')
    return body, csv.with_suffix(".md").read_text()


def write_controls(cells: pd.DataFrame, out_dir: str | Path, model_titles: dict[str, str]) -> str | None:
    """controls.csv, controls.md and controls.png when any control ran beside ImageNet init; the Markdown."""
    table = controls_table(cells, model_titles)
    if not len(table) or not [c for c in _columns(table) if c != "PSSL"]:
        return None
    out = Path(out_dir)
    with atomic_file(out / "controls.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")
    md = markdown(table)
    with atomic_file(out / "controls.md") as tmp:
        tmp.write_text(md)
    controls_figure(table, out / "controls.png")
    return md
