"""Does the peak lr search choose what the full grid chooses? Compares two results folders of the same cells:
one run with `finetune.lr_search.mode: peak`, one with `grid` (same ladder, seeds and settings; the grid run
may reuse the peak run's finished lr runs, which are the same jobs). Per cell (dataset, model, init): the lr
each chose on the first seed's val mIoU, whether they agree, and where not, the val mIoU lost against the
spread of the grid's seeds at the grid's lr (their max - min); then the fine-tune jobs each ran.

  python benchmarks/lr_search_compare.py --peak /tmp/lrcmp/peak/results --grid /tmp/lrcmp/grid/results

Prints the table and the summary (the issue's bars: agreement >= 70% of cells, every disagreement within the
seeds' spread, peak jobs <= 60% of the grid's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pssl.layout import CELL_KEYS, cell_of


def cells(results: Path) -> dict[tuple[str, str, str, int], dict]:
    """(dataset, model, init, seed) -> the cell's selected metrics.json."""
    found = {}
    for path in results.glob("finetune/*/*/*/seed*/metrics.json"):
        metrics = json.loads(path.read_text())
        found[tuple(cell_of(metrics, str(path))[k] for k in CELL_KEYS)] = metrics
    return found


def runs(found: dict) -> int:
    """The fine-tune runs the cells' selections used (every lr each cell and seed tried)."""
    return sum(len(metrics["lrs_tried"]) for metrics in found.values())


def compare(peak: Path, grid: Path) -> tuple[pd.DataFrame, dict]:
    p, g = cells(peak), cells(grid)
    rows = []
    for (dataset, model, init, seed), chosen in sorted(p.items()):
        if seed != min(s for (d, m, i, s) in p if (d, m, i) == (dataset, model, init)):
            continue
        full = g[(dataset, model, init, seed)]
        grid_curve = {float(k): 100 * v for k, v in full["lrs_tried"].items()}
        seeds = [100 * g[k]["lrs_tried"][str(full["lr"])] for k in g if k[:3] == (dataset, model, init)
                 and str(full["lr"]) in g[k]["lrs_tried"]]
        rows.append({"dataset": dataset, "model": model, "init": init, "peak lr": chosen["lr"],
                     "grid lr": full["lr"], "agree": chosen["lr"] == full["lr"],
                     "peak lrs tried": len(chosen["lrs_tried"]),
                     "val mIoU lost": grid_curve[full["lr"]] - grid_curve[chosen["lr"]],
                     "seeds' spread": max(seeds) - min(seeds)})
    table = pd.DataFrame(rows)
    differ = table[~table["agree"]]
    summary = {"cells": len(table), "agree": int(table["agree"].sum()),
               "disagreements within the spread": int((differ["val mIoU lost"] <= differ["seeds' spread"]).sum()),
               "disagreements": len(differ), "peak runs": runs(p), "grid runs": runs(g)}
    summary["agreement"] = summary["agree"] / summary["cells"]
    summary["peak / grid runs"] = summary["peak runs"] / summary["grid runs"]
    return table, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", type=Path, required=True, help="results folder of the peak run")
    parser.add_argument("--grid", type=Path, required=True, help="results folder of the grid run")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = parser.parse_args()
    table, summary = compare(args.peak, args.grid)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\n" + "; ".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()))
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.3f")


if __name__ == "__main__":
    main()
