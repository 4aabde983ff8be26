"""The paper's Table 3: per dataset and model, mIoU with ImageNet init, with PSSL init, and the gain, on each
dataset's evaluation split (the paper: CamVid test, val elsewhere).

Columns grow with the cells that exist: a pre-training variant's init (PSSL-fused) with its gain over
ImageNet, and self-training students (ImageNet+ST, PSSL+ST, the control ImageNet+dup) with their gain over
their teacher's init.

Also: a figure of the gains, Figure 4 and the controls beside it (the page around them: pssl.report.page).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pssl.data.downstream import DATASETS
from pssl.io import atomic_file
from pssl.layout import cell_of
from pssl.report.controls import write_controls
from pssl.report.figure4 import write_figure4
from pssl.report.html import html_page, html_table
from pssl.report.stats import mean_sd, paired_difference
from pssl.settings import MDP, MS3, init_transfer


def collect(cells: list[str]) -> pd.DataFrame:
    """One row per cell's metrics.json (select_lr's: its `cell` names dataset, model, init and seed): miou,
    pixel_acc, lr, how many lrs it tried (every run is kept: the statistics are computed from these rows)."""
    rows = []
    for path in map(Path, cells):
        r = json.loads(path.read_text())
        rows.append({**cell_of(r, str(path)),
                     "split": r["eval"]["split"], "miou": 100 * r["miou"], "pixel_acc": 100 * r["pixel_acc"],
                     "lr": r["lr"], "lrs_tried": len(r.get("lrs_tried", {})) or 1})
    return pd.DataFrame(rows)


SD, CI, SEEDS = " sd", " ci95", " seeds"  # suffixes of the statistics columns (present with several seeds)
DIFFERENCES = ("diff", "gain")  # column endings of paired differences: PSSL - ImageNet, a student - its init


def init_title(init: str) -> str:
    """imagenet -> ImageNet, pssl -> PSSL, pssl-fused -> PSSL-fused, pssl~backbone -> PSSL backbone,
    imagenet+st -> ImageNet+ST, +dup -> +dup."""
    base, _, suffix = init.partition("+")
    base, transfer = init_transfer(base)
    title = {"imagenet": "ImageNet", "pssl": "PSSL", MDP: "MDP", MS3: "MS3"}.get(base, "PSSL-" + base.removeprefix("pssl-"))
    title += " backbone" if transfer == "backbone" else ""
    return title + {"": "", "st": "+ST", "dup": "+dup"}.get(suffix, "+" + suffix)


def init_order(inits) -> list[str]:
    """ImageNet, PSSL, the variants, then the students: each init's +ST before its +dup."""
    def key(init: str):
        base, _, suffix = init.partition("+")
        return (bool(suffix), base != "imagenet", base != "pssl", base, {"st": 0, "dup": 1}.get(suffix, 2), suffix)
    return sorted(set(inits), key=key)


def comparisons(inits: list[str]) -> list[tuple[str, str, str]]:
    """(treated, control, column suffix) of every paired difference the present inits allow: each PSSL init
    against ImageNet ("diff" for the main one), each student against its teacher's init ("gain")."""
    present, pairs = set(inits), []
    for init in inits:
        base, _, suffix = init.partition("+")
        if suffix and base in present:
            pairs.append((init, base, f"{init_title(init)} gain"))
        elif not suffix and init != "imagenet" and "imagenet" in present:
            pairs.append((init, "imagenet", "diff" if init == "pssl" else f"{init_title(init)} diff"))
    return pairs


def is_difference(column: str) -> bool:
    return column.endswith(DIFFERENCES)


def with_seed(cells: pd.DataFrame) -> pd.DataFrame:
    return cells if "seed" in cells else cells.assign(seed=0)


def table3(cells: pd.DataFrame, model_titles: dict[str, str]) -> pd.DataFrame:
    """Paper layout: rows = datasets; per model the ImageNet mIoU, the PSSL mIoU and the difference, each the
    mean over the seeds. With several seeds also each init's standard deviation, and the paired difference's
    95% interval half-width and number of seed pairs.

    Reports what exists: a run of one init has that init's columns and no difference; a missing cell is NaN.
    Differences are paired over seeds: "diff" a PSSL init - ImageNet, "gain" a student - its init.
    """
    cells = with_seed(cells)
    datasets = list(dict.fromkeys(cells["dataset"]))
    out = pd.DataFrame(index=[DATASETS[d].title if d in DATASETS else d for d in datasets])
    splits = cells.groupby("dataset")["split"].agg(lambda v: "/".join(sorted(set(v))))
    out["split"] = [splits[d] for d in datasets]  # the split each row's mIoU was measured on
    several = bool((cells.groupby(["dataset", "model", "init"]).size() > 1).any())
    stats = {key: mean_sd(part["miou"]) for key, part in cells.groupby(["dataset", "model", "init"])}
    for m in dict.fromkeys(cells["model"]):
        title = model_titles.get(m, m)
        mine = cells[cells["model"] == m]
        inits = init_order(mine["init"])
        for i in inits:
            out[f"{title} {init_title(i)}"] = [stats.get((d, m, i), (np.nan,) * 3)[0] for d in datasets]
            if several:
                out[f"{title} {init_title(i)}{SD}"] = [stats.get((d, m, i), (np.nan,) * 3)[1] for d in datasets]
        for treated, control, name in comparisons(inits):
            diffs = paired_difference(mine, treated, control, ["dataset"]).set_index("dataset")
            out[f"{title} {name}"] = [diffs["diff"].get(d, np.nan) for d in datasets]
            if several:
                out[f"{title} {name}{CI}"] = [diffs["ci95"].get(d, np.nan) for d in datasets]
                out[f"{title} {name}{SEEDS}"] = [diffs["pairs"].get(d, 0) for d in datasets]
    out.index.name = "dataset"
    return out


def _value(column: str, value, spread=np.nan) -> str:
    if pd.isna(value):
        return "–"
    text = f"{value:+.2f}" if is_difference(column) else f"{value:.2f}"
    if pd.notna(spread):
        text += f" ± {spread:.2f}"
        if is_difference(column) and abs(value) > spread:
            text += " *"  # the 95% interval excludes zero
    return text


def shown_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not c.endswith((SD, CI, SEEDS))]


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as printed: two decimals, signed differences, – for a missing cell; with several seeds
    'mean ± sd' per init and 'difference ± 95% half-width' (* where the interval excludes zero)."""
    out = {}
    for c in shown_columns(table):
        if c == "split":
            out[c] = list(table[c])
            continue
        spread = table.get(c + (CI if is_difference(c) else SD), pd.Series(np.nan, index=table.index))
        out[c] = [_value(c, v, e) for v, e in zip(table[c], spread)]
    return pd.DataFrame(out, index=table.index)


def table3_note(table: pd.DataFrame, cells: pd.DataFrame) -> str:
    """What the numbers are: unit, split, seeds, missing cells, and the learning rate behind each column."""
    cells = with_seed(cells)
    lrs = cells.groupby(["model", "init"])["lr"].agg(lambda v: ", ".join(sorted({f"{x:g}" for x in v})))
    grid_note = "best of the lrs tried, chosen on val" if (cells["lrs_tried"] > 1).any() else "fixed"
    missing = " – : no result for that cell." if table[shown_columns(table)].drop(columns="split").isna() \
        .to_numpy().any() else ""
    seeds = sorted(set(cells["seed"]))
    seed_note = (f" Mean ± standard deviation over seeds {', '.join(map(str, seeds))}; diff: the mean paired "
                 f"difference PSSL - ImageNet over the seeds ± the half-width of its 95% t interval, * where the "
                 f"interval excludes zero." if len(seeds) > 1 else f" One seed ({seeds[0]}).")
    if cells["init"].str.contains("+", regex=False).any():
        seed_note += (" +ST: a self-training student (real + the teacher's pseudo-labelled pool) from that init, "
                      "whose teacher is the init's own cell; +dup: the control, the real set duplicated to the "
                      "same epoch size; gain: student - its init, paired over seeds.")
    return (f"mIoU (%) on the split named per row.{seed_note}{missing} Learning rates ({grid_note}): " +
            "; ".join(f"{m} {i}: {v}" for (m, i), v in lrs.items()))


def markdown(table: pd.DataFrame, cells: pd.DataFrame) -> str:
    cols = shown_columns(table)
    lines = ["| dataset | " + " | ".join(cols) + " |", "|---|" + "|".join("---" if c == "split" else "---:"
                                                                          for c in cols) + "|"]
    for name, row in formatted(table).iterrows():
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n" + table3_note(table, cells) + "\n"


def gain_figure(table: pd.DataFrame, out: str | Path) -> None:
    """Grouped bars of PSSL init - ImageNet init mIoU (points) per dataset and model, each bar labelled with
    its value; PNG at `out` and an SVG beside it (for papers and slides)."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures selects it on import

    diffs = table[[c for c in table.columns if c.endswith(" diff")]]
    errors = table[[c + CI for c in diffs.columns]] if all(c + CI in table for c in diffs.columns) else None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(diffs.index) + 2), 4.0), layout="constrained")
    if diffs.isna().to_numpy().all():  # one init only, or no pair finished
        ax.text(0.5, 0.5, "no ImageNet / PSSL pair of results to compare", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        x = np.arange(len(diffs.index))
        width = 0.8 / len(diffs.columns)
        for b, column in enumerate(diffs.columns):
            values = diffs[column].to_numpy(dtype=float)
            yerr = None if errors is None else np.nan_to_num(errors[column + CI].to_numpy(dtype=float))
            bars = ax.bar(x - 0.4 + (b + 0.5) * width, np.nan_to_num(values), width, yerr=yerr, capsize=3,
                          label=column.removesuffix(" diff"))  # "<model>" (PSSL) or "<model> PSSL-<variant>"
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:+.1f}" for v in values], fontsize=7,
                         padding=2)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, list(diffs.index))
        ax.set_ylabel("PSSL init - ImageNet init (mIoU points)" + ("" if errors is None else ", 95% CI"))
        ax.set_title("Table 3: gain of PSSL pre-training over ImageNet initialisation")
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
        ax.legend(fontsize=8, ncols=min(3, len(diffs.columns)), loc="best")
    out = Path(out)
    for path, kind in ((out, "png"), (out.with_suffix(".svg"), "svg")):
        with atomic_file(path) as tmp, plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays editable text
            fig.savefig(tmp, format=kind, dpi=150)
    plt.close(fig)


TABLE3_CAPTION = "Table 3: fine-tuning from ImageNet init vs PSSL init"


def write_table3(cell_files: list[str], out_dir: str, model_titles: dict[str, str]) -> str:
    """Table 3 as table3.csv (the table), finetune_cells.csv (every cell), table3.md, table3.html, the gains
    figure and Figure 4 (figure4.csv: every lr tried); returns the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = collect(cell_files)
    table = table3(cells, model_titles)
    with atomic_file(out / "table3.csv") as tmp:
        table.to_csv(tmp, float_format="%.2f")
    with atomic_file(out / "finetune_cells.csv") as tmp:
        cells.to_csv(tmp, index=False, float_format="%.4f")
    md = f"## {TABLE3_CAPTION}\n\n" + markdown(table, cells)
    with atomic_file(out / "table3.md") as tmp:
        tmp.write_text(md)
    body = html_table(formatted(table).reset_index(), TABLE3_CAPTION, table3_note(table, cells), index=False)
    with atomic_file(out / "table3.html") as tmp:
        tmp.write_text(html_page(TABLE3_CAPTION, body))
    gain_figure(table, out / "table3_gains.png")
    md += write_figure4(cell_files, out, model_titles)
    controls = write_controls(cells, out, model_titles)
    if controls is None:
        for stale in ("controls.csv", "controls.md", "controls.png", "controls.svg"):
            (out / stale).unlink(missing_ok=True)
    return md + ("\n" + controls if controls else "")


