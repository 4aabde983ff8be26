"""Eq. 3: weighted cross entropy, background weight w_bg (0.1 in the paper), 1 for every other class.

The loss is returned as (weighted sum, weight sum) so the training loop can normalise by the weight sum of
the *global* batch: with DDP averaging gradients over ranks, that makes N ranks train exactly like one
process with the whole batch, which a per-rank mean would not.
"""

from __future__ import annotations

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
