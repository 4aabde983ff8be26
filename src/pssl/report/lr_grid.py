"""The best learning rate of a grid per Table 3 cell (one small job per cell, so only the standard library)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pssl.io import atomic_file


def select_best_lr(runs: list[str], out: str) -> dict:
    """The run with the best val mIoU; records every lr's mIoU so the report can say which lr won."""
    results = [json.loads(Path(r).read_text()) for r in runs]
    best = max(results, key=lambda m: -1.0 if math.isnan(m["miou"]) else m["miou"])
    best = {**best, "lr_grid": {str(m["lr"]): m["miou"] for m in results}}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(best, indent=2) + "\n")
    print(f"best lr {best['lr']} (val mIoU {best['miou']:.4f}) of {sorted(best['lr_grid'])}")
    return best
