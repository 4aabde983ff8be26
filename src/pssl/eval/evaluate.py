"""Evaluation of a segmentation model on a downstream split, distributed over the job's ranks."""

from __future__ import annotations

from collections import Counter

import torch

from pssl.data.downstream import SegmentationSet
from pssl.device import autocast
from pssl.distributed import DistInfo, all_reduce_sum, gather_objects
from pssl.eval.inference import predict
from pssl.eval.metrics import confusion_matrix, scores
from pssl.models.segmenter import Segmenter
from pssl.progress import Progress
from pssl.settings import FinetuneSettings


@torch.no_grad()
def evaluate(model: Segmenter, data: SegmentationSet, info: DistInfo, settings: FinetuneSettings,
             precision: str = "fp32") -> dict:
    """Every rank predicts every world-th image; the confusion matrices are summed across the ranks, so N ranks
    finish in 1/N of the time (no rank idles at a barrier past NCCL's timeout) with the counts of one."""
    model.eval().to(info.device)
    confusion = torch.zeros(data.num_classes, data.num_classes, dtype=torch.int64)
    mine = range(info.rank, len(data), info.world)
    progress = Progress(len(mine), f"eval {data.name} {data.split}") if info.main else None
    for i in mine:
        rgb, labels = data.read(i)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255).to(info.device)
        with autocast(info.device, precision):
            pred = predict(model, x, data.num_classes, settings.scales, settings.flip, crop=settings.window,
                           base_size=settings.base_size)
        confusion += confusion_matrix(pred.cpu(), torch.from_numpy(labels.astype("int64")), data.num_classes)
        if progress:
            progress.update()
    if progress:
        progress.close()
    # NCCL reduces device tensors only; gloo takes CPU ones.
    confusion = all_reduce_sum(confusion.to(info.device), info).cpu()
    return scores(confusion)


def label_notes(sets: list[SegmentationSet], info: DistInfo) -> list[str]:
    """Unexpected label values seen by any rank, one note per split."""
    for data in sets:
        merged = Counter()
        for counter in gather_objects(data.unexpected, info):
            merged.update(counter)
        data.unexpected = merged
    return [n for n in (d.report_unexpected() for d in sets) if n]
