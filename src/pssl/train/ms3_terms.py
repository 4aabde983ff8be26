"""MS3's formulas (Zhang et al., "MS3"; README, "MS3"): the pixel-to-class InfoNCE with the cross-modal
multi-label positives (eq. 1-2, 7-9), the momentum visual class embeddings (eq. 4) and the multi-label mapping
(eq. 5-6).

Embeddings are (N, D, h, w), L2-normalised along D; labels (N, h, w) union class ids, -1 for none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_sums(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per class the sum of its pixels' embeddings (K, D), its pixel count (K,))."""
    hot = F.one_hot(labels.clamp_min(0), num_classes).float() * (labels >= 0).unsqueeze(-1)  # N x h x w x K
    return torch.einsum("nhwk,ndhw->kd", hot, embeddings), hot.sum(dim=(0, 1, 2))


def visual_embeddings(sums: torch.Tensor, counts: torch.Tensor, previous: torch.Tensor, has_previous: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 over a memory of per-batch class sums (B, K, D) and pixel counts (B, K): V_j = sum_b W_bj S_bj /
    sum_b N_bj, each stored batch's pixels of class j weighted by W_bj, the cosine of their mean with the
    previous V_j (1 where class j has none yet). Returns (V (K, D), the classes the memory holds (K,))."""
    means = F.normalize(sums / counts.clamp_min(1e-12).unsqueeze(-1), dim=-1)       # B x K x D
    cosine = torch.einsum("bkd,kd->bk", means, F.normalize(previous, dim=-1))
    usable = has_previous & (previous.norm(dim=-1) > 0)  # a V of all zeros would zero every later weight
    weight = torch.where(usable.unsqueeze(0), cosine, torch.ones_like(cosine))
    total = counts.sum(0)
    return (weight.unsqueeze(-1) * sums).sum(0) / total.clamp_min(1e-12).unsqueeze(-1), total > 0


def multi_label_positives(language_means: torch.Tensor, text: torch.Tensor, seen: torch.Tensor,
                          same_dataset: torch.Tensor) -> torch.Tensor:
    """Eq. 5-6: S_y^{y'} = the mean over class y's pixels of F . T_{y'} (= their mean embedding . T_{y'});
    y' of another dataset is a positive of y where S_y^{y'} >= S_y^y. Directional: (K, K) bool, row y. Only
    classes whose pixels were `seen` have positives; the diagonal (each class itself) is True."""
    similarity = language_means @ text.T                                                # K x K
    positives = (similarity >= similarity.diagonal().unsqueeze(1)) & ~same_dataset & seen.unsqueeze(1)
    return positives | torch.eye(len(text), dtype=torch.bool, device=text.device)


def multi_positive_nll_sums(logits: torch.Tensor, labels: torch.Tensor, positives: torch.Tensor,
                            present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7-8 (eq. 1-2 when `positives` is the identity): (sum over the labelled pixels of -log((exp(l_j) +
    sum_k Y~_j^k exp(l_k)) / sum_k exp(l_k)), their count); a pixel whose class is not `present` (no target
    yet) counts for nothing."""
    valid = (labels >= 0) & present[labels.clamp_min(0)]
    rows = positives[labels.clamp_min(0)].permute(0, 3, 1, 2)                         # N x K x h x w
    nll = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~rows, float("-inf")), dim=1)
    return nll[valid].sum(), valid.sum().to(logits.dtype)
