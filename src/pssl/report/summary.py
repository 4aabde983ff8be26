"""What `make demo` ends with: one line saying which stage outputs exist and where, then Table 3."""

from __future__ import annotations

from pathlib import Path

STAGE_OUTPUTS = (("index", "index.parquet"), ("shards", "shards/shard-*.parquet"), ("zoo", "zoo/*.pt"),
                 ("explain", "explain/shard-*.zarr"), ("labels", "labels/shard-*.parquet"),
                 ("pretrain", "pretrain/*/*/final.pt"), ("finetune", "finetune/*/*/*/seed*/metrics.json"),
                 ("self-training", "pseudo/*/*/*/seed*/pool-*/pseudo.parquet"), ("report", "report/table3.md"))


def summarize(results: str | Path) -> str:
    results = Path(results)
    parts = []
    for stage, pattern in STAGE_OUTPUTS:
        found = sorted(results.glob(pattern))
        if found:
            parts.append(f"{stage} {pattern.split('/')[0]}/ ({len(found)})" if "*" in pattern else pattern)
    line = f"outputs under {results}/: " + (", ".join(parts) if parts else "none yet")
    table = results / "report" / "table3.md"
    if not table.exists():
        return line
    controls = results / "report" / "controls.md"  # written with Table 3 when a control ran
    return (f"{line}\nall tables and figures on one page: {results / 'report' / 'index.html'}\n\n{table.read_text()}"
            + (f"\n{controls.read_text()}" if controls.exists() else ""))
