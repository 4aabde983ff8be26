"""Eq. 3: weighted cross entropy, background weight w_bg (0.1 in the paper), 1 for every other class; and
OHEM's pixel selection (`Ohem`, the self-training students' loss option).

The loss is returned as (weighted sum, weight sum) so the training loop can normalise by the weight sum of
the *global* batch: with DDP averaging gradients over ranks, that makes N ranks train exactly like one
process with the whole batch, which a per-rank mean would not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def class_weights(num_outputs: int, background: int | None, w_bg: float) -> torch.Tensor:
    w = torch.ones(num_outputs)
    if background is not None:
        w[background] = w_bg
    return w


def weighted_ce_sums(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                     ignore_index: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i w_{y_i} CE_i, sum_i w_{y_i}) over the non-ignored pixels."""
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=ignore_index)
    valid = target != ignore_index
    w = torch.zeros_like(per_pixel)
    w[valid] = weight.to(logits.device)[target[valid]]
    return (w * per_pixel).sum(), w.sum()


@dataclass(frozen=True)
class Ohem:
    """Online hard example mining (the self-training student's loss, Zhu et al.), as the common segmentation
    implementations select pixels (OCNet / CCNet's OhemCrossEntropy2d): a pixel is kept when the predicted
    probability of its label is at most `threshold`, the threshold raised to the `min_kept`-th smallest
    probability where fewer pixels would be kept; all are kept where there are no more than `min_kept`.

    Selected per image (the implementations count per GPU's batch): an image's loss then does not depend on
    which images share its rank, so N ranks train as one process with the whole batch."""
    threshold: float
    min_kept: int

    def select(self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """`target` (B, H, W) with the pixels not kept set to `ignore_index`."""
        valid = target != ignore_index
        with torch.no_grad():
            prob = torch.softmax(logits.float(), dim=1)
            truth = prob.gather(1, torch.where(valid, target, 0)[:, None])[:, 0]
        kept = torch.zeros_like(valid)
        for i in range(target.shape[0]):
            p = truth[i][valid[i]]
            if p.numel() <= self.min_kept:
                kept[i] = valid[i]
                continue
            threshold = self.threshold
            if self.min_kept > 0:
                threshold = max(threshold, float(p.kthvalue(self.min_kept).values))
            kept[i] = valid[i] & (truth[i] <= threshold)
        return torch.where(kept, target, ignore_index)
