"""PseudoSeg's calibrated fusion (seed 001, eq. 4 as in the authors' code), adapted to an explanation prior.

The prior m has two channels per image: s on the image's class and 1 - s on background (zero elsewhere),
s in [0, 1] from the explain store (D / 9, or the fraction of models whose decile is 9). m is already a
probability, so only the decoder's logits P are calibrated by their RMS r (one scalar over the batch):

    p = gamma * softmax(P / r) + (1 - gamma) * m,   y_c = p_c^(1/T) / sum_j p_j^(1/T)

and y (no gradient) is the soft target of the strong view's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pssl.train.distributed import DistInfo, all_reduce_sum


def prior_channels(strength: torch.Tensor, labels: torch.Tensor, num_outputs: int, background: int) -> torch.Tensor:
    """(B, C, H, W) prior: `strength` (B, H, W) on each image's class `labels` (B,), 1 - strength on background."""
    b, h, w = strength.shape
    prior = strength.new_zeros(b, num_outputs, h, w)
    rows = torch.arange(b, device=strength.device)
    prior[rows, labels.long()] = strength
    prior[:, background] = 1.0 - strength
    return prior


def logit_rms(logits: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
    """r = sqrt(mean(P^2) + 1e-8) over the batch; with `info` (DDP), over every rank's share of it, as one
    process holding the whole batch computes it."""
    sums = torch.stack([logits.float().pow(2).sum(), logits.new_tensor(float(logits.numel()))])
    if info is not None:
        sums = all_reduce_sum(sums, info)
    return torch.sqrt(sums[0] / sums[1] + 1e-8)


def fuse(logits: torch.Tensor, prior: torch.Tensor, gamma: float, temperature: float,
         rms: torch.Tensor | None = None) -> torch.Tensor:
    """Soft labels (B, C, H, W) from decoder logits and a prior (both (B, C, H, W)). `rms`: r of the whole
    batch when `logits` are one rank's share (logit_rms with DistInfo); by default r of `logits`."""
    r = logit_rms(logits) if rms is None else rms
    p = gamma * torch.softmax(logits.float() / r, dim=1) + (1.0 - gamma) * prior
    sharpened = p.clamp_min(0).pow(1.0 / temperature)
    return sharpened / sharpened.sum(dim=1, keepdim=True).clamp_min(1e-12)


def soft_ce_sums(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor, valid: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i w_i CE(y_i, logits_i), sum_i w_i) over valid pixels, w_i = sum_c y_ic w_c."""
    ce = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    w = (target * class_weight[None, :, None, None]).sum(dim=1) * valid
    return (w * ce).sum(), w.sum()
