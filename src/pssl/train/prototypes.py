"""MDP's formulas (Gao et al., "MDP"; README, "MDP"): class prototypes from a FIFO memory of per-batch class
embedding sums (eq. 2), the pixel-to-prototype InfoNCE (eq. 3) with Mixup's two labels (eq. 6), and the
pixel-to-prototype consistency term (eq. 7-8).

Embeddings are (N, D, h, w), L2-normalised along D; labels are (N, h, w) union class ids, -1 for none; a
class's `weights` map is lam on label a's pixels plus (1 - lam) on label b's (Mixup; 1 and 0 otherwise).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ABSENT = -1e4  # the logit of a class no stored batch has seen: exp() is 0 in fp32, log-probabilities stay finite


def labels_at(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, H, W) labels at the (N, H / stride, W / stride) feature grid: each cell's centre pixel."""
    return labels[:, stride // 2::stride, stride // 2::stride]


def class_weights_map(label_a: torch.Tensor, label_b: torch.Tensor, lam: torch.Tensor, num_classes: int
                      ) -> torch.Tensor:
    """(N, K, h, w): lam (N,) where label_a is the class, plus 1 - lam where label_b is."""
    def one_hot(labels: torch.Tensor) -> torch.Tensor:
        hot = F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float()
        return hot * (labels >= 0).unsqueeze(1)
    lam = lam.view(-1, 1, 1, 1).float()
    return lam * one_hot(label_a) + (1.0 - lam) * one_hot(label_b)


def class_sums(embeddings: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's part of eq. 2: (sum over its images of m_ij p_ij (K, D), sum of m_ij (K,)), where p_ij is
    the (weighted) mean embedding of image i's pixels of class j and m_ij whether image i contains class j:
    1, or for a Mixup image the class's mean weight on its pixels (lambda or 1 - lambda), so a partner image
    mixed in at 1% counts 1% of an image."""
    mass = weights.sum(dim=(2, 3))                                        # N x K
    pooled = torch.einsum("nkhw,ndhw->nkd", weights, embeddings)          # N x K x D
    p = pooled / mass.clamp_min(1e-12).unsqueeze(2)
    m = mass / (weights > 0).sum(dim=(2, 3)).clamp_min(1)                # 0 where the class is absent
    return (p * m.unsqueeze(2)).sum(0), m.sum(0)


class PrototypeMemory(nn.Module):
    """Eq. 2 over the last `slots` batches: P_j = (sum of p_ij) / (number of images containing j), both summed
    over the stored batches (a FIFO: the oldest batch leaves when a new one comes). Buffers, so a checkpoint
    holds the memory and a resumed run continues with it."""

    def __init__(self, num_classes: int, dim: int, slots: int):
        super().__init__()
        self.register_buffer("sums", torch.zeros(slots, num_classes, dim))
        self.register_buffer("counts", torch.zeros(slots, num_classes))
        self.register_buffer("pushed", torch.zeros((), dtype=torch.long))

    def push(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        slot = int(self.pushed) % self.sums.shape[0]
        self.sums[slot] = sums
        self.counts[slot] = counts
        self.pushed += 1

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P (K, D) as eq. 2, the classes some stored batch has seen (K,) bool)."""
        counts = self.counts.sum(0)
        return self.sums.sum(0) / counts.clamp_min(1e-12).unsqueeze(1), counts > 0


def prototype_logits(embeddings: torch.Tensor, prototypes: torch.Tensor, present: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """(N, K, h, w): f_i . P_k / tau for every class, with the prototypes L2-normalised (a cosine, as the
    pixel embeddings'); classes without a prototype take no part in the softmax."""
    protos = F.normalize(prototypes, dim=1)
    logits = torch.einsum("ndhw,kd->nkhw", embeddings, protos) / temperature
    return logits.masked_fill(~present.view(1, -1, 1, 1), ABSENT)


def class_loss_sums(logits: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor, lam: torch.Tensor,
                    present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 with eq. 6: (sum over pixels of lam x -log softmax_a + (1 - lam) x -log softmax_b, the sum of
    those weights); their ratio is L_class over the labelled pixels. A label whose class has no prototype
    (`present` False: in this view's crop but in no stored batch) has no target and counts for nothing."""
    log_p = F.log_softmax(logits, dim=1)
    lam = lam.view(-1, 1, 1).float()
    total, weight = logits.new_zeros(()), logits.new_zeros(())
    for labels, w in ((label_a, lam), (label_b, 1.0 - lam)):
        valid = (labels >= 0) & present[labels.clamp_min(0)]
        w = w * valid
        nll = -log_p.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1)
        total = total + (w * nll).sum()
        weight = weight + w.sum()
    return total, weight


def consistency_sums(query: torch.Tensor, key: torch.Tensor, prototypes: torch.Tensor, present: torch.Tensor,
                     temperature_query: float, temperature_key: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7-8: (sum over pixels of -sum_j s~_j log s_j, the pixel count), s = softmax over the prototypes of
    the query's similarities at tau_q, s~ the key's (its colour-only twin, no gradient) at tau_k."""
    log_s = F.log_softmax(prototype_logits(query, prototypes, present, temperature_query), dim=1)
    with torch.no_grad():
        target = F.softmax(prototype_logits(key, prototypes, present, temperature_key), dim=1)
    return -(target * log_s).sum(), query.new_tensor(float(query.shape[0] * query.shape[2] * query.shape[3]))
