"""The best learning rate of the lrs a fine-tune cell tried (one small job per cell, so only the standard library)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pssl.io import atomic_file

log = logging.getLogger(__name__)


def select_best_lr(runs: list[str], out: str, start: float | None = None, cell: dict | None = None) -> dict:
    """The run with the best mIoU on the selection split (val; also when the cell reports test), by the lr
    search's own rule (pssl.lr_search.best_lr: a tie goes to the lr nearer `start`, the cell's own lr, then
    the smaller); records every lr's selection mIoU (`lrs_tried`) so the report can say which lr won, and the
    cell's identity (`cell`: dataset, model, init, seed; pssl.layout), which the reports read."""
    from pssl.lr_search import best_lr
    results = {float(m["lr"]): m for m in (json.loads(Path(r).read_text()) for r in runs)}
    tried = {lr: m["selection"]["miou"] for lr, m in results.items()}
    best = results[best_lr(start or min(tried), tried)]
    best = {**best, "lrs_tried": {str(lr): miou for lr, miou in sorted(tried.items())},
            **({"cell": cell} if cell else {})}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(best, indent=2) + "\n")
    log.info(f"best lr {best['lr']} ({best['selection']['split']} mIoU {100 * best['selection']['miou']:.2f} %) "
             f"of {sorted(tried)}")
    return best
