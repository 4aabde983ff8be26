"""The best learning rate of a grid per Table 3 cell (one small job per cell, so only the standard library)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from pssl.io import atomic_file

log = logging.getLogger(__name__)


def select_best_lr(runs: list[str], out: str) -> dict:
    """The run with the best mIoU on the selection split (val; also when the cell reports test); records every
    lr's selection mIoU so the report can say which lr won."""
    results = [json.loads(Path(r).read_text()) for r in runs]

    def selection_miou(m: dict) -> float:
        miou = m["selection"]["miou"]
        return -1.0 if math.isnan(miou) else miou

    best = max(results, key=selection_miou)
    best = {**best, "lr_grid": {str(m["lr"]): m["selection"]["miou"] for m in results}}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(best, indent=2) + "\n")
    log.info(f"best lr {best['lr']} ({best['selection']['split']} mIoU {100 * best['selection']['miou']:.2f} %) "
             f"of {sorted(best['lr_grid'])}")
    return best
