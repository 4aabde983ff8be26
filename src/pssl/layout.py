"""The results folder's layout: the path templates of the pipeline's outputs, in one place. The rules fill them
with their wildcards (`{dataset}` ...); the library never parses a path back: a fine-tune cell's identity is
written into its metrics.json (`cell`), a teacher's into its pseudo-label tables (`teacher_cell`).
Torch-free: Snakemake's DAG imports it.
"""

from __future__ import annotations

from pssl.errors import InputError

PRETRAINED = "pretrain/{model}/{variant}"                         # final.pt, state.pt, log.csv
FINETUNE_CELL = "finetune/{dataset}/{model}/{init}/seed{seed}"    # metrics.json: the kept lr's, with `cell`
FINETUNE_RUN = FINETUNE_CELL + "/lr{lr}"                          # metrics.json, final.pt of one lr
LR_SEARCH_ROUND = FINETUNE_CELL + "/lr_search/round{round}"       # .json: one round of the cell's lr search
STUDENT_RUN = FINETUNE_RUN.replace("{init}", "{init}+{data}")     # a self-training student is a cell too
MULTI_PRETRAINED = "{method}/{model}"                  # final.pt, state.pt, log.csv (init mdp or ms3)
PSEUDO_PART = "pseudo/{dataset}/{model}/{init}/seed{seed}/pool-{part}"  # pseudo.parquet, centroids.parquet

# Where each heavy rule's `benchmark:` file goes under <results>/benchmarks (the rules and `pssl runtimes`
# both read this table).
BENCHMARKS = {
    "zoo_model": "zoo_model/{classifier}.tsv",
    "explain_shard": "explain_shard/{shard}.tsv",
    "label_shard": "label_shard/{shard}.tsv",
    "pretrain": PRETRAINED + ".tsv",
    "pretrain_multi": "multi_dataset/" + MULTI_PRETRAINED + ".tsv",
    "finetune": FINETUNE_RUN + ".tsv",
    "teacher_labels": "teacher_labels/" + PSEUDO_PART.removeprefix("pseudo/") + ".tsv",
    "self_train": "self_train/" + STUDENT_RUN.removeprefix("finetune/") + ".tsv",
}

CELL_KEYS = ("dataset", "model", "init", "seed")


def cell_identity(pairs: list[str]) -> dict:
    """dataset=... model=... init=... seed=... (the rule's wildcards) as a cell's identity."""
    cell = dict(pair.split("=", 1) for pair in pairs)
    if sorted(cell) != sorted(CELL_KEYS):
        raise InputError(f"a cell is {' '.join(k + '=...' for k in CELL_KEYS)}, got {' '.join(pairs)}")
    return {**cell, "seed": int(cell["seed"])}


def cell_of(metrics: dict, source: str) -> dict:
    """The identity a cell's metrics.json (select_lr's output) carries."""
    if "cell" not in metrics:
        raise InputError(f"{source} names no cell (select_lr of an older version wrote it): rerun its select_lr")
    return metrics["cell"]
