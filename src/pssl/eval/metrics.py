"""Confusion-matrix segmentation metrics: mIoU, per-class IoU, pixel accuracy; ignore 255.

IoU_c = TP_c / (TP_c + FP_c + FN_c); classes absent from both prediction and ground truth (union 0) are left
out of the mean (NaN per class), as in the usual mmseg / torchvision evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from pssl.data.downstream import IGNORE


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE) -> torch.Tensor:
    """(C, C) int64 counts, rows = ground truth, columns = prediction."""
    valid = target != ignore_index
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def scores(confusion: torch.Tensor) -> dict:
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return {"miou": float(np.nanmean(iou.numpy())) if (union > 0).any() else float("nan"),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou.tolist()],
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan")}
