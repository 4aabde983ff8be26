"""The one-line summary `make demo` ends with: which stage outputs exist and where."""

from __future__ import annotations

from pathlib import Path

STAGE_OUTPUTS = (("index", "index.parquet"), ("shards", "shards/shard-*.parquet"))


def summarize(results: str | Path) -> str:
    results = Path(results)
    parts = []
    for stage, pattern in STAGE_OUTPUTS:
        found = sorted(results.glob(pattern))
        if found:
            parts.append(f"{stage}: {len(found)}" if len(found) > 1 or "*" in pattern else stage)
    return f"outputs under {results}/ -> " + (", ".join(parts) if parts else "none yet")
