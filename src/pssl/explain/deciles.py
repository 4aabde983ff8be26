"""Eq. 1-2 of the PSSL paper: min-max normalisation, ensemble mean, decile quantisation."""

from __future__ import annotations

import torch


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling of (B, H, W) to [0, 1]; a constant map becomes all zeros, never NaN."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def to_deciles(scores: torch.Tensor) -> torch.Tensor:
    """D(x) = floor(10 Z(x) / N), Z(x) = #{y : S(y) < S(x)} (strictly lower: ties share the lower rank).

    scores: (B, H, W) float; returns uint8 (B, H, W) in 0..9.
    """
    flat = scores.reshape(scores.shape[0], -1).float()
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    strictly_lower = torch.searchsorted(ordered, flat.contiguous(), side="left")
    return (10 * strictly_lower // n).to(torch.uint8).reshape(scores.shape)
