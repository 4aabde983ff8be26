"""Fine-tuning on a downstream dataset and evaluation on its evaluation split (Table 3 cells).

init imagenet: backbone from the classification weights (zoo entry), head random: the conventional way.
init pssl:     the whole pre-trained model; only the final per-class layers are re-initialised (transfer full,
               the paper's), or its backbone alone with a fresh head (transfer backbone: a control that tells
               what the transferred segmentation module adds).

The metrics are those of `eval_split` (the paper: CamVid's test split, val elsewhere); the learning rate of a
grid is chosen on val (`selection` in metrics.json), so a test split never picks its own hyper-parameters.

A self-training student (`student`, pssl.selftrain) is the same job on another training set: per epoch a random
half of the real set + k x as many centroid-sampled pseudo samples, or the real set repeated to that size (the
control); its loss may be OHEM (`student.loss`).

Outputs in out_dir: metrics.json, final.pt (the evaluated weights and their config), log.csv. The resume
checkpoints are removed once both are written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pssl.data.downstream import IGNORE, SegmentationSet
from pssl.data.finetune_set import FinetuneDataset
from pssl.data.student_set import PseudoPool, StudentDataset
from pssl.device import allocation, precision_for
from pssl.distributed import init_distributed, shutdown
from pssl.errors import InputError
from pssl.eval.evaluate import evaluate, label_notes
from pssl.io import atomic_file, fingerprint
from pssl.models.segmenter import build_segmenter
from pssl.models.weights import init_backbone_from, init_classifier, init_from_pretrained
from pssl.settings import FinetuneSettings, StudentSettings, TrainSettings
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import remove_checkpoints
from pssl.train.loop import fit
from pssl.train.losses import Ohem, class_weights

log = logging.getLogger(__name__)


def training_set(train_set: SegmentationSet, settings: FinetuneSettings, train: TrainSettings,
                 student: StudentSettings | None, pseudo: list[str]) -> torch.utils.data.Dataset:
    if student is None:
        return FinetuneDataset(train_set, settings.crop, settings.base_size, train.seed)
    if (student.data == "pseudo") != bool(pseudo):
        raise InputError(f"a student with data {student.data!r} needs "
                         + ("the teacher's pseudo.parquet tables" if student.data == "pseudo" else "no pseudo labels"))
    pool = PseudoPool(pseudo, train_set.name) if pseudo else None
    return StudentDataset(train_set, pool, student.multiplier, settings.crop, settings.base_size, train.seed)


def finetune(dataset: str, root: str, out_dir: str | Path, *, head: str, backbone: str, init: str,
             init_from: str | None, settings: FinetuneSettings, train: TrainSettings, device: str = "auto",
             expect_world: int | None = None, requeue_margin_min: float = 15.0,
             student: StudentSettings | None = None, pseudo: list[str] = (), transfer: str = "full") -> dict:
    """Fine-tune `head`-`backbone` from `init` (`init_from`: the zoo classifier or the pre-trained model) on
    `dataset`'s train split (a `student`: with the pool of `pseudo` tables, or the duplicated control);
    evaluate on val and on `settings.eval_split`; write out_dir's outputs."""
    started = time.monotonic()
    info = init_distributed(device, expect_world)
    out_dir = Path(out_dir)
    train_set = SegmentationSet(dataset, root, "train")
    eval_sets = {split: SegmentationSet(dataset, root, split)
                 for split in dict.fromkeys(("val", settings.eval_split))}
    torch.manual_seed(train.seed)
    model = build_segmenter(head, backbone, train_set.num_classes)
    if init == "imagenet":
        loaded = init_backbone_from(model, init_from)
    elif init == "pssl":
        loaded = init_from_pretrained(model, init_from, transfer)
    else:
        raise InputError(f"init must be 'imagenet' or 'pssl', got {init!r}")
    if train.classifier_init_std is not None:
        init_classifier(model, train.classifier_init_std)
        loaded += f"; per-class layers from N(0, {train.classifier_init_std}^2)"
    if info.main:
        log.info(f"finetune {dataset} {head}-{backbone} init {init}: {loaded}; {len(train_set)} train, "
                 f"{', '.join(f'{len(d)} {k}' for k, d in eval_sets.items())} images, lr {train.lr}, "
                 f"{info.world} process(es), {allocation()}")
    weight = class_weights(train_set.num_classes, None, 1.0)
    job = {"dataset": dataset, "model": f"{head}-{backbone}", "init": init, "transfer": transfer,
           "init_from": init_from and fingerprint(init_from), "crop": settings.crop, "base_size": settings.base_size,
           "student": asdict(student) if student else None, "pseudo": [fingerprint(x) for x in pseudo]}
    ohem = Ohem(student.ohem_threshold, student.ohem_min_kept) if student and student.loss == "ohem" else None
    model = fit(model, training_set(train_set, settings, train, student, list(pseudo)), weight, train, out_dir, info,
                ignore_index=IGNORE, time_limit=TimeLimit(requeue_margin_min), job=job, ohem=ohem)
    precision = precision_for(info.device, train.precision)
    results = {split: evaluate(model, data, info, settings, precision) for split, data in eval_sets.items()}
    notes = label_notes([train_set, *eval_sets.values()], info)
    metrics = {}
    if info.main:
        result = results[settings.eval_split]
        config = {"head": head, "backbone": backbone, "num_classes": train_set.num_classes, "dataset": dataset,
                  "classes": list(train_set.spec.classes), "init": init, "train": asdict(train),
                  "precision": precision, "world_size": info.world}
        metrics = {**result, "classes": config["classes"], "lr": train.lr, "init": init, "init_from": loaded,
                   "epochs": train.epochs, "dataset": dataset, "model": f"{head}-{backbone}",
                   "eval": {"split": settings.eval_split, "scales": list(settings.scales),
                            "base_size": settings.base_size, "flip": settings.flip,
                            "sliding_window": settings.window, "precision": precision, "ranks": info.world},
                   "selection": {"split": "val", "miou": results["val"]["miou"]},
                   "train": config["train"], "label_warnings": notes,
                   **({"student": {**asdict(student), "pseudo": list(pseudo)}} if student else {}),
                   "seconds": round(time.monotonic() - started, 1)}
        for note in notes:
            log.info(note)
        with atomic_file(out_dir / "final.pt") as tmp:
            torch.save({"model": model.state_dict(), "config": config, "kind": "pssl-finetune"}, tmp)
        with atomic_file(out_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        # Finished: final.pt and metrics.json are the job's outputs; resuming needs the checkpoints no more.
        remove_checkpoints(out_dir)
        log.info(f"{dataset} {head}-{backbone} {init}: {settings.eval_split} mIoU {100 * result['miou']:.2f} %, "
                 f"pixel acc {100 * result['pixel_acc']:.2f} %; val mIoU {100 * results['val']['miou']:.2f} %")
    del model
    shutdown(info)
    return metrics
