"""SmoothGrad (Smilkov et al. 2017) through captum: NoiseTunnel over Saliency, signed gradients averaged.

captum's Saliency defaults to abs=True, which averages |gradient| over the noisy samples; SmoothGrad
averages the signed gradients and takes the magnitude afterwards, so abs=False is passed explicitly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from captum.attr import NoiseTunnel, Saliency

from pssl.device import autocast
from pssl.explain.deciles import minmax_normalize


class TargetScore(nn.Module):
    """The explained output of a [0, 1]-input classifier: softmax probabilities (paper) or logits."""

    def __init__(self, classifier: nn.Module, output: str = "prob"):
        super().__init__()
        if output not in ("prob", "logit"):
            raise ValueError(f"explain output must be 'prob' or 'logit', got {output!r}")
        self.classifier, self.output = classifier, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x).float()
        return logits.softmax(dim=1) if self.output == "prob" else logits


def smoothgrad(scorer: nn.Module, images: torch.Tensor, targets: torch.Tensor, n_samples: int,
               noise_level: float, sample_chunk: int | None = None, bf16: bool = False) -> torch.Tensor:
    """Signed SmoothGrad gradients (B, 3, H, W) of `scorer`'s `targets` column w.r.t. `images` in [0, 1].

    Noise: N(0, noise_level^2) added in [0, 1] pixel space (before the classifier's normalisation), drawn by
    captum from torch's global generator. `sample_chunk` noisy copies of every image go through the model at
    once (captum's nt_samples_batch_size).
    """
    tunnel = NoiseTunnel(Saliency(scorer))
    with autocast(images.device, "bf16" if bf16 else "fp32"):
        grads = tunnel.attribute(images, nt_type="smoothgrad", nt_samples=n_samples,
                                 nt_samples_batch_size=sample_chunk, stdevs=float(noise_level),
                                 target=targets, abs=False)
    return grads.float()


def saliency_map(grads: torch.Tensor) -> torch.Tensor:
    """One channel per image: |g| summed over RGB, min-max normalised per image. (B, 3, H, W) -> (B, H, W)."""
    return minmax_normalize(grads.abs().sum(dim=1))
