"""The paper's Table 3: per dataset and model, mIoU with ImageNet init, with PSSL init, and the gain, on each
dataset's evaluation split (the paper: CamVid test, val elsewhere).

Also: a figure of the gains and a gallery of pseudo labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pssl.data.downstream import DATASETS
from pssl.io import atomic_file
from pssl.report.figures import gallery
from pssl.report.html import html_page, html_table


def collect(cells: list[str]) -> pd.DataFrame:
    """One row per finetune/<dataset>/<model>/<init>/metrics.json: miou, pixel_acc, lr, the lr grid size."""
    rows = []
    for path in map(Path, cells):
        dataset, model, init = path.parts[-4:-1]
        r = json.loads(path.read_text())
        rows.append({"dataset": dataset, "model": model, "init": init, "split": r["eval"]["split"],
                     "miou": 100 * r["miou"],
                     "pixel_acc": 100 * r["pixel_acc"], "lr": r["lr"], "lr_grid": len(r.get("lr_grid", {})) or 1})
    return pd.DataFrame(rows)


INIT_TITLES = {"imagenet": "ImageNet", "pssl": "PSSL"}


def table3(cells: pd.DataFrame, model_titles: dict[str, str]) -> pd.DataFrame:
    """Paper layout: rows = datasets; per model the ImageNet mIoU, the PSSL mIoU and the difference.

    Reports what exists: a run of one init has that init's columns and no difference; a missing cell is NaN.
    """
    wide = cells.pivot_table(index="dataset", columns=["model", "init"], values="miou", sort=False)
    out = pd.DataFrame(index=[DATASETS[d].title if d in DATASETS else d for d in wide.index])
    splits = cells.groupby("dataset")["split"].agg(lambda v: "/".join(sorted(set(v))))
    out["split"] = [splits[d] for d in wide.index]  # the split each row's mIoU was measured on
    inits = [i for i in INIT_TITLES if i in set(cells["init"])]
    for m in dict.fromkeys(cells["model"]):
        title = model_titles.get(m, m)
        values = {i: wide[(m, i)].to_numpy() if (m, i) in wide.columns else np.full(len(wide), np.nan)
                  for i in inits}
        for i in inits:
            out[f"{title} {INIT_TITLES[i]}"] = values[i]
        if len(inits) == 2:
            out[f"{title} diff"] = values["pssl"] - values["imagenet"]
    out.index.name = "dataset"
    return out


def _cell(column: str, value) -> str:
    if column == "split":
        return value
    if pd.isna(value):
        return "–"
    return f"{value:+.2f}" if column.endswith("diff") else f"{value:.2f}"


def table3_note(table: pd.DataFrame, cells: pd.DataFrame) -> str:
    """What the numbers are: unit, split, missing cells, and the learning rate behind each column."""
    lrs = cells.groupby(["model", "init"])["lr"].agg(lambda v: ", ".join(sorted({f"{x:g}" for x in v})))
    grid_note = "best of a grid, chosen on val" if (cells["lr_grid"] > 1).any() else "fixed"
    missing = " – : no result for that cell." if table.drop(columns="split").isna().to_numpy().any() else ""
    return (f"mIoU (%) on the split named per row.{missing} Learning rates ({grid_note}): " +
            "; ".join(f"{m} {i}: {v}" for (m, i), v in lrs.items()))


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Table 3 as the text it is printed with: two decimals, signed differences, – for a missing cell."""
    return pd.DataFrame({c: [_cell(c, v) for v in table[c]] for c in table.columns}, index=table.index)


def markdown(table: pd.DataFrame, cells: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| dataset | " + " | ".join(cols) + " |", "|---|" + "|".join("---" if c == "split" else "---:"
                                                                          for c in cols) + "|"]
    for name, row in formatted(table).iterrows():
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n" + table3_note(table, cells) + "\n"


def gain_figure(table: pd.DataFrame, out: str | Path) -> None:
    """Grouped bars of PSSL init - ImageNet init mIoU (points) per dataset and model, each bar labelled with
    its value; PNG at `out` and an SVG beside it (for papers and slides)."""
    import matplotlib.pyplot as plt  # the Agg backend: pssl.report.figures selects it on import

    diffs = table[[c for c in table.columns if c.endswith("diff")]]
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
            bars = ax.bar(x - 0.4 + (b + 0.5) * width, np.nan_to_num(values), width,
                          label=column.removesuffix(" diff"))
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:+.1f}" for v in values], fontsize=7,
                         padding=2)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, list(diffs.index))
        ax.set_ylabel("PSSL init - ImageNet init (mIoU points)")
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
QUALITY_CAPTIONS = {  # demo only: scores against the synthetic images' hidden object masks
    "explain_quality": "Pseudo-label quality against the hidden object masks: precision of the D9 region and "
                       "best IoU over decile thresholds, the ensemble and each classifier",
    "pretrain_quality": "Pre-trained models against the hidden object masks: pixel accuracy and foreground IoU, "
                        "next to the D9 pseudo labels they learned from",
}


def write_report(cell_files: list[str], out_dir: str, model_titles: dict[str, str], stores: list[str],
                 quality_tables: list[str]) -> str:
    """Table 3 (CSV, Markdown, HTML), the gains figure, the gallery, each quality table as HTML, and
    index.html showing all of it; returns the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = collect(cell_files)
    table = table3(cells, model_titles)
    with atomic_file(out / "table3.csv") as tmp:
        table.to_csv(tmp, float_format="%.2f")
    with atomic_file(out / "finetune_cells.csv") as tmp:
        cells.to_csv(tmp, index=False, float_format="%.4f")
    md = f"## {TABLE3_CAPTION}\n\n" + markdown(table, cells)
    table3_html = html_table(formatted(table).reset_index(), TABLE3_CAPTION, table3_note(table, cells), index=False)
    pages = {"table3.html": (TABLE3_CAPTION, table3_html)}
    for q in quality_tables:  # pandas' to_markdown uses tabulate, which snakemake already depends on
        quality, name = pd.read_csv(q), Path(q).stem
        md += f"\n### {name.replace('_', ' ')}\n\n{quality.to_markdown(index=False, floatfmt='.3f')}\n"
        caption = QUALITY_CAPTIONS.get(name, name.replace("_", " "))
        pages[f"{name}.html"] = (caption, html_table(quality.map(_quality_cell), caption, index=False))
    with atomic_file(out / "table3.md") as tmp:
        tmp.write_text(md)
    gain_figure(table, out / "table3_gains.png")
    gallery(stores, out / "pseudo_label_gallery.png")
    for name, (title, body) in pages.items():
        with atomic_file(out / name) as tmp:
            tmp.write_text(html_page(title, body))
    figures = ('<img src="table3_gains.svg" alt="PSSL - ImageNet mIoU per dataset and model">\n'
               '<h3>Pseudo labels</h3>\n<img src="pseudo_label_gallery.png" alt="pseudo-label gallery">')
    quality_html = "\n".join(body for name, (_, body) in pages.items() if name != "table3.html")
    links = " · ".join(f'<a href="{f}">{f}</a>' for f in ("table3.csv", "table3.md", "finetune_cells.csv",
                                                          "table3_gains.svg", "pseudo_label_gallery.pdf"))
    with atomic_file(out / "index.html") as tmp:
        tmp.write_text(html_page("PSSL report", f"<h2>PSSL report</h2>\n{table3_html}\n{figures}\n"
                                                f"{quality_html}\n<p class=\"note\">Files: {links}</p>"))
    return md


def _quality_cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)

