"""What a run costs before it runs (`pssl plan`): its jobs and GPU-hours per rule, from a Snakemake dry run
of the configuration (each job's `runtime` and GPUs are what it would ask SLURM for: pssl.cluster), under
each way of choosing the fine-tune lr (finetune.lr_search).

The dry run is taken with lr_search `grid`, so that it lists every lr of every cell and every job after them
(a peak search's later rounds exist only once results do). From that, per cell and seed of a training rule
whose jobs differ only in {lr}:
  grid        every lr of lr_grid;
  fixed       one;
  peak best   the first round only (the cell's lr and its neighbours: 3, or 2 at a ladder end), for the
              seeds that search; one lr for the others (lr_search.seeds: first);
  peak worst  max_values lrs (at most the ladder's length) for the seeds that search, one for the others.
Shard jobs (explain, labels) appear in a dry run only once the index is sharded: before that they are
estimated from the index's size bound (pssl.cluster.indexed_images: ImageNet's, or the slice's).

Like the dry run, the plan prices what is left to run in the working directory: on a fresh one, the whole
plan (the figures the README gives); on a partly run one, the jobs whose outputs are missing (a cell's grid
then counts only its missing lrs, while the peak and fixed columns assume the cell starts afresh).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pssl.config import load_config

SCENARIOS = ("grid", "peak best", "peak worst", "fixed")
SEARCHED_RULES = ("finetune", "self_train")  # one job per {lr}: what the lr search multiplies
SHARD_RULES = ("explain_shard", "label_shard")


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: dict[str, str]
    runtime_min: int
    gpus: int

    @property
    def gpu_hours(self) -> float:
        return self.runtime_min * self.gpus / 60


def parse_dry_run(text: str) -> list[PlannedJob]:
    """Every job block of `snakemake -n` output: its rule, wildcards, runtime (minutes) and GPUs (gpu_slots per
    node x nodes; 0 for a CPU or local job)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:\n)", text)[1:]:
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block).group(1)
        resources = _pairs(block, "resources")
        jobs.append(PlannedJob(rule, _pairs(block, "wildcards"), int(resources.get("runtime", 0)),
                               int(resources.get("gpu_slots", 0)) * int(resources.get("nodes", 1))))
    return jobs


def _pairs(block: str, field: str) -> dict[str, str]:
    line = re.search(rf"^\s+{field}: (.*)$", block, re.MULTILINE)
    return dict(kv.split("=", 1) for kv in line.group(1).split(", ")) if line else {}


def lr_counts(config: dict, job: PlannedJob, grid_size: int) -> dict[str, int]:
    """How many lrs of this job's cell and seed each scenario trains."""
    from pssl.lr_search import first_round
    from pssl.settings import finetune_settings, lr_search_settings
    search, ladder = lr_search_settings(config), config["finetune"]["lr_grid"]
    searches = search.seeds == "each" or int(job.wildcards["seed"]) == config["finetune"]["seeds"][0]
    if len(ladder) < 2 or not searches:
        return {"grid": grid_size, "peak best": 1, "peak worst": 1, "fixed": 1}
    start = finetune_settings(config, job.wildcards["dataset"], job.wildcards["model"])[1].lr
    on_ladder = any(math.isclose(start, v) for v in ladder)
    best = len(first_round(ladder, start)) if on_ladder else 1
    return {"grid": grid_size, "peak best": best, "peak worst": max(best, min(search.max_values, len(ladder))),
            "fixed": 1}


def shard_estimates(config: dict) -> list[PlannedJob]:
    """The explain and label jobs of an index not yet sharded: one each per shard of the size bound."""
    from pssl.cluster import indexed_images, runtime_minutes
    shards = math.ceil(indexed_images(config) / config["shard_size"])
    return [PlannedJob(rule, {"shard": f"shard-{i:05d} (estimated)"}, runtime_minutes(config, rule, {}), 1)
            for rule in SHARD_RULES for i in range(shards)]


def plan_table(jobs: list[PlannedJob], config: dict) -> pd.DataFrame:
    """Per rule: jobs and GPU-hours under each scenario; a total row last."""
    if not any(j.rule in SHARD_RULES for j in jobs) and any(j.rule == "shard_index" for j in jobs):
        jobs = [*jobs, *shard_estimates(config)]
    cells: dict[tuple, list[PlannedJob]] = {}
    for job in jobs:
        if job.rule in SEARCHED_RULES:
            key = (job.rule, *sorted((k, v) for k, v in job.wildcards.items() if k != "lr"))
            cells.setdefault(key, []).append(job)
    rows: dict[str, dict[str, float]] = {}

    def add(rule: str, counts: Callable[[str], float], hours: Callable[[str], float]) -> None:
        row = rows.setdefault(rule, {f"{k} {s}": 0.0 for s in SCENARIOS for k in ("jobs", "GPU-h")})
        for s in SCENARIOS:
            row[f"jobs {s}"] += counts(s)
            row[f"GPU-h {s}"] += hours(s)

    for job in jobs:
        if job.rule not in SEARCHED_RULES:
            add(job.rule, lambda s: 1, lambda s, j=job: j.gpu_hours)
    for (rule, *_), members in cells.items():
        n = lr_counts(config, members[0], len(members))
        per_job = sum(j.gpu_hours for j in members) / len(members)
        add(rule, lambda s, n=n: n[s], lambda s, n=n, h=per_job: n[s] * h)
    table = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    table.loc["total"] = table.sum()
    table.index.name = "rule"
    return table


def dry_run(configfiles: list[str], overrides: list[str], snakefile: str, workdir: str,
            profile: str | None = None) -> str:
    """The text of `snakemake -n -p` of the configuration with lr_search grid (every lr listed)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", snakefile, "--directory", workdir, "--cores", "1",
           *(["--profile", profile] if profile else []), *(["--configfile", *configfiles] if configfiles else []),
           "--config", *overrides, "finetune={lr_search: {mode: grid}}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the dry run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def plan(configfiles: list[str], overrides: list[str], snakefile: str, workdir: str, profile: str | None = None
         ) -> tuple[pd.DataFrame, dict]:
    """(the plan's table, the effective config) of a configuration run in `workdir`."""
    text = dry_run(configfiles, overrides, snakefile, workdir, profile)
    config = load_config(configfiles, overrides, Path(snakefile).resolve().parent)[0]
    if not Path(config["results"]).is_absolute():
        config["results"] = str(Path(workdir) / config["results"])  # where indexed_images looks for the index
    return plan_table(parse_dry_run(text), config), config


def summary_lines(table: pd.DataFrame, mode: str) -> list[str]:
    """The fine-tuning's and the whole plan's GPU-hours under each scenario, the configured one marked."""
    lines = []
    for what, rows in (("Fine-tuning", [r for r in SEARCHED_RULES if r in table.index]), ("Total", ["total"])):
        hours = table.loc[rows].sum() if rows else table.loc["total"] * 0
        grid = hours["GPU-h grid"] or float("nan")
        parts = []
        for s in SCENARIOS:
            share = "" if s == "grid" else f" ({hours['GPU-h ' + s] / grid:.0%})"
            marked = " (configured)" if s.startswith(mode) else ""
            parts.append(f"{s}{marked} {hours['GPU-h ' + s]:,.0f} GPU-h{share}")
        lines.append(f"{what}: " + "; ".join(parts))
    return lines


def format_plan(table: pd.DataFrame, mode: str) -> str:
    """The table as text, then the fine-tuning's and the plan's totals per scenario."""
    text = table.to_string(float_format=lambda v: f"{v:,.1f}")
    return text + "\n\n" + "\n".join(summary_lines(table, mode)) + "\n"
