"""Fine-tuning on a downstream dataset and evaluation on its evaluation split (Table 3 cells).

init imagenet: backbone from the classification weights (zoo entry), head random: the conventional way.
init pssl:     the whole pre-trained model; only the final per-class layers are re-initialised.

The metrics are those of `eval_split` (the paper: CamVid's test split, val elsewhere); the learning rate of a
grid is chosen on val (`selection` in metrics.json), so a test split never picks its own hyper-parameters.

Outputs in out_dir: metrics.json, final.pt (the evaluated weights and their config), log.csv. The resume
checkpoints are removed once both are written.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from pssl.data.pseudo import augment, train_transforms
from pssl.data.segsets import SegmentationSet
from pssl.device import allocation, autocast, precision_for
from pssl.eval.inference import predict
from pssl.eval.metrics import IGNORE, confusion_matrix, scores
from pssl.io import atomic_file
from pssl.models.segmenter import Segmenter, build_segmenter
from pssl.params import TrainParams
from pssl.progress import Progress
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import remove_checkpoints
from pssl.train.distributed import DistInfo, all_reduce_sum, gather_objects, init_distributed, shutdown
from pssl.train.loop import fit
from pssl.train.losses import class_weights
from pssl.train.pretrain import init_backbone_from


class FinetuneDataset(torch.utils.data.Dataset):
    def __init__(self, data: SegmentationSet, crop: int, base_size: int, seed: int):
        self.data, self.seed, self.epoch = data, seed, 0
        self.transform = train_transforms(crop, base_size, mask_fill=IGNORE, heavy=False, long_side=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        rgb, labels = self.data.read(i)
        return augment(self.transform, rgb, labels, self.seed, self.epoch, i)


def init_from_pretrained(model: Segmenter, checkpoint: str) -> str:
    """Load a PSSL pre-trained model except its per-class layers, which stay freshly initialised."""
    record = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = record["config"]
    if (cfg["head"], cfg["backbone"]) != (model.head_name, model.backbone_name):
        raise ValueError(f"{checkpoint} is a {cfg['head']}-{cfg['backbone']}, not a "
                         f"{model.head_name}-{model.backbone_name}")
    fresh = {id(p) for layer in model.classifier_layers() for p in layer.parameters()}
    skip = {name for name, p in model.named_parameters() if id(p) in fresh}
    state = {k: v for k, v in record["model"].items() if k not in skip}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != skip or unexpected:
        raise ValueError(f"{checkpoint}: unexpected checkpoint layout (missing {sorted(set(missing) - skip)}, "
                         f"unexpected {unexpected})")
    return f"{Path(checkpoint).parent.name} ({len(state)} tensors, {len(skip)} re-initialised)"


@torch.no_grad()
def evaluate(model: Segmenter, data: SegmentationSet, info: DistInfo, scales=(1.0,), flip=False,
             window: int | None = None, base_size: int | None = None, precision: str = "fp32") -> dict:
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
            pred = predict(model, x, data.num_classes, scales, flip, crop=window, base_size=base_size)
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


def finetune(dataset: str, root: str, head: str, backbone: str, init: str, init_path: str | None,
             out_dir: str | Path, crop: int, base_size: int, params: TrainParams, scales=(1.0,),
             flip: bool = False, window: int | None = None, eval_split: str = "val", device: str = "auto",
             expect_world: int | None = None, requeue_margin_min: float = 15.0) -> dict:
    started = time.monotonic()
    info = init_distributed(device, expect_world)
    out_dir = Path(out_dir)
    train_set = SegmentationSet(dataset, root, "train")
    eval_sets = {split: SegmentationSet(dataset, root, split) for split in dict.fromkeys(("val", eval_split))}
    torch.manual_seed(params.seed)
    model = build_segmenter(head, backbone, train_set.num_classes)
    if init == "imagenet":
        loaded = init_backbone_from(model, init_path)
    elif init == "pssl":
        loaded = init_from_pretrained(model, init_path)
    else:
        raise ValueError(f"init must be 'imagenet' or 'pssl', got {init!r}")
    if info.main:
        print(f"finetune {dataset} {head}-{backbone} init {init}: {loaded}; {len(train_set)} train, "
              f"{', '.join(f'{len(d)} {k}' for k, d in eval_sets.items())} images, lr {params.lr}, "
              f"{info.world} process(es), {allocation()}", flush=True)
    weight = class_weights(train_set.num_classes, None, 1.0)
    model = fit(model, FinetuneDataset(train_set, crop, base_size, params.seed), weight, params, out_dir, info,
                ignore_index=IGNORE, time_limit=TimeLimit(requeue_margin_min))
    precision = precision_for(info.device, params.precision)
    results = {split: evaluate(model, data, info, scales, flip, window, base_size, precision)
               for split, data in eval_sets.items()}
    notes = label_notes([train_set, *eval_sets.values()], info)
    metrics = {}
    if info.main:
        result = results[eval_split]
        config = {"head": head, "backbone": backbone, "num_classes": train_set.num_classes, "dataset": dataset,
                  "classes": list(train_set.spec.classes), "init": init, "train": asdict(params),
                  "precision": precision, "world_size": info.world}
        metrics = {**result, "classes": config["classes"], "lr": params.lr, "init": init, "init_from": loaded,
                   "epochs": params.epochs, "dataset": dataset, "model": f"{head}-{backbone}",
                   "eval": {"split": eval_split, "scales": list(scales), "base_size": base_size, "flip": flip,
                            "sliding_window": window, "precision": precision, "ranks": info.world},
                   "selection": {"split": "val", "miou": results["val"]["miou"]},
                   "train": config["train"], "label_warnings": notes,
                   "seconds": round(time.monotonic() - started, 1)}
        for note in notes:
            print(note)
        with atomic_file(out_dir / "final.pt") as tmp:
            torch.save({"model": model.state_dict(), "config": config, "kind": "pssl-finetune"}, tmp)
        with atomic_file(out_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        # Finished: final.pt and metrics.json are the job's outputs; resuming needs the checkpoints no more.
        remove_checkpoints(out_dir)
        print(f"{dataset} {head}-{backbone} {init}: {eval_split} mIoU {result['miou']:.4f}, pixel acc "
              f"{result['pixel_acc']:.4f}; val mIoU {results['val']['miou']:.4f}")
    del model
    shutdown(info)
    return metrics
