"""The paper's learning-rate search (section 5.4, Appendix B): "the peak value as the best one from {5, 2, 1} x
10^-n", tuning stopped "when we found a clear peak". Which lrs one fine-tune cell trains, round by round.

The ladder is `finetune.lr_grid` (ascending). Round 0 trains the cell's configured lr and its two neighbours on
the ladder. After each round, the best lr so far (val mIoU) and its *peak*: the best and the tried rungs next
to it, one after another, whose val mIoU is within `margin` points of the best's (margin 0: the best and exact
ties). The peak is clear when the rung just below it and the rung just above it are both tried (so clearly
worse: more than `margin` below the best) or lie beyond the ladder's ends; until then the search trains the
untried one(s), one rung per side and round, i.e. it moves toward the better side. The tried lrs always form
one stretch of the ladder. `max_values` bounds the lrs one cell trains (a flat curve would otherwise walk the
whole ladder); when one rung is left and both sides want it, the side whose peak edge has the higher mIoU gets
it (a tie: the smaller lr).

The best lr (`best_lr`, also what select_lr keeps): the highest val mIoU; ties go to the lr nearer the start
(by ratio), then to the smaller. A run that diverged (NaN) is worse than any and never part of a peak.
Standard library only: Snakemake's DAG imports it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from pssl.errors import InputError
from pssl.io import atomic_file

log = logging.getLogger(__name__)

MODES = ("peak", "grid", "fixed")


@dataclass(frozen=True)
class Round:
    """What one round decided: every lr tried so far with its val mIoU (%), the lrs the next round trains
    (none: the search is over) and the best lr so far."""
    tried: dict[float, float]
    next: tuple[float, ...]
    best: float | None

    @property
    def done(self) -> bool:
        return not self.next


def check_ladder(ladder: list[float], start: float) -> list[float]:
    ladder = [float(v) for v in ladder]
    if len(ladder) < 2 or ladder != sorted(set(ladder)):
        raise InputError(f"lr search: lr_grid must list at least 2 distinct learning rates in ascending order, "
                         f"got {ladder}")
    if not any(math.isclose(start, v) for v in ladder):
        raise InputError(f"lr search: the starting lr {start} is not on the ladder (lr_grid) {ladder}")
    return ladder


def rung(ladder: list[float], lr: float) -> int:
    for i, v in enumerate(ladder):
        if math.isclose(v, lr):
            return i
    raise InputError(f"lr search: lr {lr} is not on the ladder (lr_grid) {ladder}")


def first_round(ladder: list[float], start: float) -> tuple[float, ...]:
    """The configured lr and its neighbours on the ladder (one neighbour at a ladder end)."""
    i = rung(check_ladder(ladder, start), start)
    return tuple(ladder[max(i - 1, 0):i + 2])


def score(miou: float) -> float:
    return -math.inf if math.isnan(miou) else miou


def best_lr(start: float, tried: dict[float, float]) -> float:
    """The highest val mIoU of `tried` (lr -> mIoU); a tie: the lr nearer `start` by ratio, then the smaller."""
    return max(tried, key=lambda lr: (score(tried[lr]), -abs(math.log(lr / start)), -lr))


def decide(ladder: list[float], start: float, tried: dict[float, float], margin: float = 0.0,
           max_values: int = 5) -> Round:
    """The round after the runs in `tried` (lr -> val mIoU in %): which lrs to train next, or none."""
    ladder = check_ladder(ladder, start)
    if not tried:
        return Round({}, first_round(ladder, start), None)
    rungs = sorted(rung(ladder, lr) for lr in tried)
    if rungs != list(range(rungs[0], rungs[-1] + 1)):
        raise InputError(f"lr search: the tried lrs {sorted(tried)} are not one stretch of the ladder {ladder}")
    best = best_lr(start, tried)
    top = score(tried[best])

    def in_peak(i: int) -> bool:  # a tried rung within `margin` of the best (a diverged run never is)
        return ladder[i] in tried and math.isfinite(score(tried[ladder[i]])) and score(tried[ladder[i]]) >= top - margin

    edges = {}  # side -> the peak's last rung on that side
    for side in (-1, 1):
        i = rung(ladder, best)
        while 0 <= i + side < len(ladder) and math.isfinite(top) and in_peak(i + side):
            i += side
        edges[side] = i
    wanted = [edges[side] + side for side in (-1, 1)
              if 0 <= edges[side] + side < len(ladder) and ladder[edges[side] + side] not in tried]
    room = max(max_values - len(tried), 0)
    if len(wanted) > room:
        # one rung left: the side whose peak edge has the higher mIoU gets it (a tie: the smaller lr)
        wanted = sorted(wanted, key=lambda i: (-score(tried[ladder[edges[-1 if i < edges[-1] else 1]]]), i))[:room]
    return Round(dict(tried), tuple(ladder[i] for i in sorted(wanted)), best)


def cell_lrs(mode: str, ladder: list[float], start: float) -> list[float]:
    """The lrs a cell trains when that does not depend on results: fixed, its lr; grid, the whole lr_grid (its
    lr alone when the grid is empty); peak, the first round."""
    if mode == "fixed" or (mode == "grid" and not ladder):
        return [start]
    return list(ladder) if mode == "grid" else list(first_round(ladder, start))


def every_lr(config: dict) -> list[float]:
    """Every lr any fine-tune job of the config may train: lr_grid, finetune.lr and each dataset's and
    per_model lr (the {lr} wildcard's values)."""
    finetune = config["finetune"]
    values = {float(v) for v in finetune["lr_grid"]} | {float(finetune["lr"])}
    for settings in finetune["datasets"].values():
        values |= {float(s["lr"]) for s in [settings, *settings.get("per_model", {}).values()] if "lr" in s}
    return sorted(values)


def selection_miou(metrics: dict) -> float:
    """A run's val mIoU in % (the selection split's), NaN when it diverged."""
    return 100 * metrics["selection"]["miou"]


def write_round(runs: list[str], ladder: list[float], start: float, margin: float, max_values: int,
                out: str) -> Round:
    """One round of a cell's search from the metrics.json of every lr it has trained so far."""
    tried = {}
    for path in runs:
        metrics = json.loads(Path(path).read_text())
        tried[float(metrics["lr"])] = selection_miou(metrics)
    decision = decide(ladder, start, tried, margin, max_values)
    record = {"ladder": ladder, "start": start, "margin": margin, "max_values": max_values,
              "tried": {str(lr): miou for lr, miou in sorted(decision.tried.items())},
              "next": list(decision.next), "best": decision.best}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    what = f"next {list(decision.next)}" if decision.next else f"done: best lr {decision.best}"
    log.info(f"tried {sorted(tried)} (val mIoU {[round(tried[k], 2) for k in sorted(tried)]}): {what}")
    return decision


def read_round(path: str) -> Round:
    record = json.loads(Path(path).read_text())
    return Round({float(k): v for k, v in record["tried"].items()}, tuple(record["next"]), record["best"])
