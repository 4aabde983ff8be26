"""The paper's other tables as experiments: one model's pre-training variants, each fine-tuned on datasets
(Table 1: background weight x images; Table 2: images vs ImageNet init; the D8 ablation; Table 4's epochs).

Rows: ImageNet init (if the experiment has it) and each variant, labelled with its overrides; columns: each
dataset's mIoU (mean ± sd over seeds) and, with ImageNet init, each variant's paired gain over it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pssl.data.downstream import DATASETS
from pssl.errors import InputError
from pssl.io import atomic_file
from pssl.report.html import html_page, html_table
from pssl.report.stats import mean_sd, paired_difference
from pssl.report.table3 import CI, SD, SEEDS, collect, formatted, shown_columns
from pssl.settings import MAIN, MULTI_DATASET, pssl_init

TOP1 = "ImageNet val top-1 (%)"


def variant_label(variant: str, overrides: dict | None) -> str:
    if variant == MAIN:
        return "PSSL (main pre-training)"
    if variant in MULTI_DATASET:
        return f"{variant.upper()} (labelled multi-dataset pre-training)"
    changes = ", ".join(f"{k} {v}" for k, v in (overrides or {}).items())
    return f"PSSL {variant}" + (f" ({changes})" if changes else "")


def experiment_table(cells: pd.DataFrame, variants: dict[str, dict | None], datasets: list[str],
                     imagenet: bool, top1: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows: ImageNet (if `imagenet`) then the variants in order; per dataset the mean mIoU, with several seeds
    its sd, and with ImageNet init each variant's mean paired gain (and its 95% interval). `top1`: init name
    -> ImageNet val top-1 (%) of the row's model used as a classifier, as a first column (Table 4)."""
    rows = (["imagenet"] if imagenet else []) + [pssl_init(v) for v in variants]
    labels = (["ImageNet init"] if imagenet else []) + [variant_label(v, o) for v, o in variants.items()]
    several = bool((cells.groupby(["dataset", "init"]).size() > 1).any())
    out = pd.DataFrame(index=labels)
    if top1:
        out[TOP1] = [top1.get(r, np.nan) for r in rows]
    for d in datasets:
        title = DATASETS[d].title if d in DATASETS else d
        part = cells[cells["dataset"] == d]
        stats = [mean_sd(part.loc[part["init"] == r, "miou"]) for r in rows]
        out[title] = [m for m, _, _ in stats]
        if several:
            out[title + SD] = [sd for _, sd, _ in stats]
        if imagenet:
            gains = [paired_difference(part, r, "imagenet", ["dataset"]) for r in rows]
            out[f"{title} diff"] = [g["diff"].iloc[0] if len(g) and r != "imagenet" else np.nan
                                    for g, r in zip(gains, rows)]
            if several:
                out[f"{title} diff{CI}"] = [g["ci95"].iloc[0] if len(g) and r != "imagenet" else np.nan
                                           for g, r in zip(gains, rows)]
                out[f"{title} diff{SEEDS}"] = [g["pairs"].iloc[0] if len(g) else 0 for g in gains]
    out.index.name = "initialisation"
    return out


def experiment_markdown(table: pd.DataFrame, title: str, seeds: list[int], top1_input: str | None = None) -> str:
    cols = shown_columns(table)
    lines = [f"## {title}", "", "| initialisation | " + " | ".join(cols) + " |",
             "|---|" + "|".join("---:" for _ in cols) + "|"]
    lines += [f"| {name} | " + " | ".join(row) + " |" for name, row in formatted(table).iterrows()]
    return "\n".join(lines) + "\n\n" + experiment_note(seeds, top1_input) + "\n"


def experiment_note(seeds: list[int], top1_input: str | None = None) -> str:
    spread = (f"mean ± standard deviation over seeds {', '.join(map(str, seeds))}; diff: the mean paired gain "
              f"over ImageNet init ± its 95% t half-width, * where the interval excludes zero"
              if len(seeds) > 1 else f"one seed ({seeds[0]})")
    top1 = f" {TOP1}: every row's model on the same input ({top1_input})." if top1_input else ""
    return f"mIoU (%) on each dataset's evaluation split, {spread}; – : no result.{top1}"


def top1_protocol(results: list[dict]) -> str | None:
    """The one input protocol of the top-1 column (pssl eval-classify's `input`); a column mixing protocols,
    e.g. the segmenters at their pre-training crop and the classifier at its own size, is refused."""
    inputs = sorted({r["input"] for r in results})
    if len(inputs) > 1:
        raise InputError(f"the top-1 column would compare {len(inputs)} input protocols ({'; '.join(inputs)}): "
                         f"rerun eval-classify with one classify setting for every row")
    return inputs[0] if inputs else None


def write_experiment(name: str, title: str, cell_files: list[str], variants: dict[str, dict | None],
                     datasets: list[str], imagenet: bool, out_dir: str | Path, classify: list[str] = ()) -> Path:
    """<out_dir>/<name>.csv (the table), <name>_runs.csv (every run), <name>.md and <name>.html. `classify`:
    classify/<model>/<init>.json files (pssl eval-classify) for the top-1 column."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = collect(cell_files)
    results = {Path(f).stem: json.loads(Path(f).read_text()) for f in classify}
    top1_input = top1_protocol(list(results.values()))
    table = experiment_table(cells, variants, datasets, imagenet, {k: 100 * r["top1"] for k, r in results.items()})
    seeds = sorted(set(cells["seed"]))
    with atomic_file(out / f"{name}.csv") as tmp:
        table.to_csv(tmp, float_format="%.2f")
    with atomic_file(out / f"{name}_runs.csv") as tmp:
        cells.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_file(out / f"{name}.md") as tmp:
        tmp.write_text(experiment_markdown(table, title, seeds, top1_input))
    with atomic_file(out / f"{name}.html") as tmp:
        tmp.write_text(html_page(title, html_table(formatted(table).reset_index(), title,
                                                    experiment_note(seeds, top1_input), index=False)))
    return out / f"{name}.csv"
