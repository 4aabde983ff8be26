"""PseudoSeg's calibrated fusion (Zou et al., ICLR 2021, eq. 4), adapted to an explanation prior.

The prior speaks for two channels of each image: s on the image's class and 1 - s on background, s in [0, 1]
from the explain store (pssl.data.pseudo.prior_strength); the decoder's logits P speak for all K + 1 channels.
Two calibrations (`fusion_calibration`):

shared (eq. 4 as the authors' code computes it, on the prior's two channels): P2 = P at the image's class and
background, m = (s, 1 - s) taken as the prior's logits (as the authors' localisation map, in [0, 1]), one RMS
over both sources and the whole batch, r = sqrt(mean([P2; m]^2) + 1e-8), and

    p = gamma * softmax(P2 / r) + (1 - gamma) * softmax(m / r)   on those two channels, 0 elsewhere.

The restriction keeps the label on the two classes the image can hold: a softmax of the prior over all K + 1
channels would spread it over the K - 1 absent classes, and an RMS over them would measure the absent
classes' logits instead of the two that compete.

decoder (the first adaptation): only P is calibrated, by its RMS over all K + 1 channels, and the prior is
mixed in as a probability: p = gamma * softmax(P / r) + (1 - gamma) * (s, 1 - s). With 1001 channels the
softmax spreads P's confidence over the 999 absent classes (a decoder logit of 10 against -2 +- 1 elsewhere
keeps about 0.15), so the fused label follows the prior.

Both sharpen, y_c = p_c^(1/T) / sum_j p_j^(1/T), and y (no gradient) is the soft target of the strong view.
decoder is the default: on the demo the shared calibration collapsed pre-training to background (its fused
labels' foreground IoU 0.000-0.007 against 0.27-0.28 with decoder; README), as the prior's values in [0, 1],
divided by an r the decoder's logits set, are nearly uniform after the softmax and the decoder's background
confirms itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pssl.distributed import DistInfo, all_reduce_sum
from pssl.errors import InputError

CALIBRATIONS = ("shared", "decoder")


def prior_channels(strength: torch.Tensor, labels: torch.Tensor, num_outputs: int, background: int) -> torch.Tensor:
    """(B, C, H, W): `strength` (B, H, W) on each image's class `labels` (B,), 1 - strength on background, zero
    elsewhere."""
    b, h, w = strength.shape
    prior = strength.new_zeros(b, num_outputs, h, w)
    rows = torch.arange(b, device=strength.device)
    prior[rows, labels.long()] = strength
    prior[:, background] = 1.0 - strength
    return prior


def logit_rms(values: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
    """r = sqrt(mean(v^2) + 1e-8) over the batch; with `info` (DDP), over every rank's share of it, as one
    process holding the whole batch computes it."""
    sums = torch.stack([values.float().pow(2).sum(), values.new_tensor(float(values.numel()))])
    if info is not None:
        sums = all_reduce_sum(sums, info)
    return torch.sqrt(sums[0] / sums[1] + 1e-8)


def mixed(logits: torch.Tensor, strength: torch.Tensor, labels: torch.Tensor, background: int, gamma: float,
          calibration: str, info: DistInfo | None) -> torch.Tensor:
    """p (B, C, H, W) before sharpening (see the module's docstring)."""
    logits, labels = logits.float(), labels.long()
    num_outputs = logits.shape[1]
    if calibration == "decoder":
        r = logit_rms(logits, info)
        return gamma * torch.softmax(logits / r, dim=1) + (1.0 - gamma) * prior_channels(
            strength, labels, num_outputs, background)
    if calibration != "shared":
        raise InputError(f"fusion_calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    rows = torch.arange(logits.shape[0], device=logits.device)
    decoder = torch.stack([logits[rows, labels], logits[:, background]], dim=1)
    prior = torch.stack([strength, 1.0 - strength], dim=1).float()
    r = logit_rms(torch.cat([decoder, prior], dim=1), info)
    two = gamma * torch.softmax(decoder / r, dim=1) + (1.0 - gamma) * torch.softmax(prior / r, dim=1)
    return prior_channels(two[:, 0], labels, num_outputs, background)  # two[:, 1] = 1 - two[:, 0]


def fuse(logits: torch.Tensor, strength: torch.Tensor, labels: torch.Tensor, background: int, gamma: float,
         temperature: float, calibration: str, info: DistInfo | None = None) -> torch.Tensor:
    """Soft labels (B, C, H, W) from the decoder's logits (B, C, H, W), the prior's strength (B, H, W) and the
    images' classes (B,). `info` (DDP): r spans every rank's share of the batch."""
    p = mixed(logits, strength, labels, background, gamma, calibration, info)
    sharpened = p.clamp_min(0).pow(1.0 / temperature)
    return sharpened / sharpened.sum(dim=1, keepdim=True).clamp_min(1e-12)


def soft_ce_sums(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor, valid: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i w_i CE(y_i, logits_i), sum_i w_i) over valid pixels, w_i = sum_c y_ic w_c."""
    ce = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    w = (target * class_weight[None, :, None, None]).sum(dim=1) * valid
    return (w * ce).sum(), w.sum()
