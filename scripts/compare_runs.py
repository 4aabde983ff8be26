#!/usr/bin/env python
"""Did a refactor change what the pipeline does? Two checks a maintainer runs before and after a change.

  python scripts/compare_runs.py plans BEFORE.txt AFTER.txt
      Two `snakemake -n -p` outputs of the same config: the same jobs with the same shell commands (job ids,
      reasons and the header ignored; the order of jobs does not matter). Prints the jobs of each side that
      the other lacks, by rule.
  python scripts/compare_runs.py results DIR_A DIR_B
      Two finished runs of the same config, seed and machine (e.g. two clones): every file under results/
      and data/ byte-identical, except what records time or place: JSON and log.csv fields that measure time
      or memory, the clone's absolute path, the RNG-free drawing ids of SVG / PDF figures. Those files are
      compared by content (tables and checkpoint weights exactly). Prints every file that differs in
      content; exit status 1 if any.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

VOLATILE = re.compile(r"seconds|timing|time|budget|chunk|per_s|elapsed|speed|measured|date|duration", re.I)
VOLATILE_LOG_COLUMNS = {"images_per_s"}


def plan_jobs(path: Path) -> list[str]:
    """Each job of a dry run as its text without job id and reason."""
    jobs = []
    for block in re.split(r"\n\s*\n", path.read_text()):
        lines = [line for line in block.splitlines() if not re.match(r"\s*(jobid|reason):|\[\w{3} \w{3} ", line)]
        if any(line.startswith(("rule ", "checkpoint ", "localrule ", "localcheckpoint ")) for line in lines):
            jobs.append("\n".join(lines))
    return jobs


def compare_plans(before: Path, after: Path) -> int:
    a, b = Counter(plan_jobs(before)), Counter(plan_jobs(after))
    only_a, only_b = a - b, b - a
    print(f"jobs: {sum(a.values())} before, {sum(b.values())} after; "
          f"{sum(only_a.values())} only before, {sum(only_b.values())} only after")
    for side, jobs in (("only before", only_a), ("only after", only_b)):
        rules = Counter(job.splitlines()[0] for job in jobs.elements())
        for rule, n in sorted(rules.items()):
            print(f"  {side}: {n} x {rule}")
    return 1 if only_a or only_b else 0


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clean(value, roots: tuple[str, str]):
    """JSON without time and memory measurements, the run's folder replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: clean(v, roots) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [clean(v, roots) for v in value]
    if isinstance(value, str):
        return value.replace(roots[0], "<run>").replace(roots[1], "<run>")
    return value


def same_content(a: Path, b: Path, roots: tuple[str, str]) -> bool:
    import pandas as pd
    if a.suffix == ".json":
        return clean(json.loads(a.read_text()), roots) == clean(json.loads(b.read_text()), roots)
    if a.name == "log.csv":
        x, y = pd.read_csv(a), pd.read_csv(b)
        kept = [c for c in x.columns if c not in VOLATILE_LOG_COLUMNS]
        return x[kept].equals(y[kept])
    if a.suffix == ".parquet":
        x = pd.read_parquet(a).replace(roots[0], "<run>", regex=True)
        return x.equals(pd.read_parquet(b).replace(roots[1], "<run>", regex=True))
    if a.suffix == ".pt":
        import torch
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        weights = [k for k in ("model", "ema") if k in x]
        return x.get("step") == y.get("step") and all(
            x[k].keys() == y[k].keys() and all(torch.equal(x[k][n], y[k][n]) for n in x[k]) for k in weights)
    return a.suffix in (".svg", ".pdf")  # drawing ids and creation dates; the figures' data are the tables


def compare_results(dir_a: Path, dir_b: Path) -> int:
    roots = (str(dir_a.resolve()), str(dir_b.resolve()))
    files = sorted(p.relative_to(dir_a) for top in ("results", "data") for p in (dir_a / top).rglob("*")
                   if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts and p.suffix != ".log")
    missing = [f for f in files if not (dir_b / f).is_file()]
    differing = [f for f in files if f not in missing and digest(dir_a / f) != digest(dir_b / f)]
    content = [f for f in differing if not same_content(dir_a / f, dir_b / f, roots)]
    print(f"{len(files)} files: {len(files) - len(differing) - len(missing)} byte-identical, {len(differing)} "
          f"differ in bytes, of which {len(content)} in content; {len(missing)} missing in {dir_b}")
    for f in missing + content:
        print(f"  {f}")
    return 1 if missing or content else 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("plans", "results"):
        print(__doc__)
        return 2
    compare = compare_plans if argv[0] == "plans" else compare_results
    return compare(Path(argv[1]), Path(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
