"""Why does a transferred segmentation module hurt on the demo? Fine-tunes one model on a few datasets from
ImageNet init and from a pre-trained model under changes of one factor each (what is transferred, BatchNorm,
the auxiliary branch, the backbone's lr, the fresh classifier's lr and initial scale, the fine-tuning length),
with the DAG's own settings otherwise, over several seeds; prints and writes mIoU and the first step's loss per
run, then each start's gain over ImageNet init with its paired 95% interval. `--lr-grid` adds the paper's
protocol: every init fine-tuned at each lr of `finetune.lr_grid`, the lr chosen on val per init, cell and seed.
`--in-domain` adds a VOC-Aug whose classes take the pre-training looks (the pre-training's own task on new
scenes).

Before fine-tuning it measures what each starting point knows, on each dataset's images (resized to a square
of twice the crop):
- head dimension: how many dimensions the features entering the fresh classifier span (participation ratio of
  their singular values), for a fresh head on the ImageNet backbone and for each pre-trained one;
- linear probe: val mIoU (at the features' resolution) of a multinomial logistic regression fitted to those
  features on the train images (L-BFGS, up to 200 iterations): what a classifier on them can reach when
  fitted rather than trained for a few SGD steps;
- zero-shot: the pre-trained model's own classifier on val, scored on the downstream classes whose demo look
  is a pre-training class (mean of their IoU): whether pre-training learned to segment what it was shown.

  python benchmarks/transfer_diagnosis.py --run /path/to/demo/clone --model pspnet_resnet10t \\
      --datasets camvid cityscapes --seeds 0 1 2 --out transfer_diagnosis.csv

`--run`: the clone where the demo ran (config.yaml, workflow/schemas, results/, data/demo); `--config
key=value ...`: the `--config` values that run was given. Pre-trained models are read from
<results>/pretrain/<model>/<variant>/final.pt (`--variants main oracle`: every variant that exists is used).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F

from pssl.config import load_config
from pssl.data.downstream import DATASETS, IGNORE, SegmentationSet
from pssl.demo.make import scene_look, wnid, write_downstream
from pssl.demo.scenes import DemoScenes
from pssl.eval.classify import load_model
from pssl.eval.metrics import confusion_matrix, scores
from pssl.layout import PRETRAINED
from pssl.models.segmenter import build_segmenter
from pssl.models.weights import init_backbone_from, init_from_pretrained
from pssl.progress import Progress
from pssl.report.stats import paired_difference
from pssl.settings import demo_settings, finetune_settings
from pssl.train.finetune import finetune

# factor -> (transfer, changes of TrainSettings, whether ImageNet init runs under it too): each row changes one
# thing against "as the DAG runs it" (a value the run's config already has changes nothing: the demo's
# classifier_lr_mult is 10, so `--config finetune='{classifier_lr_mult: 1}'` measures the paper's one lr). A
# change of the fine-tuning protocol applies to every init, and each init is compared with ImageNet init under
# the same protocol; a change of what or how the pre-trained model is transferred is compared with ImageNet
# init as the DAG runs it.
FACTORS = {
    "as the DAG runs it": ("full", {}, False),
    "backbone only": ("backbone", {}, False),
    "BatchNorm frozen (running statistics)": ("full", {"freeze_bn": True}, False),
    "no auxiliary branch": ("full", {"aux_weight": 0.0}, False),
    "backbone lr x 0.1 (the paper's)": ("full", {"backbone_lr_mult": 0.1}, False),
    "fresh classifier at lr x 10 (DeepLab's)": ("full", {"classifier_lr_mult": 10.0}, True),
    "fresh classifier from N(0, 0.01^2) (mmsegmentation's)": ("full", {"classifier_init_std": 0.01}, True),
    "5x the fine-tuning epochs": ("full", {"epochs": 5}, True),  # a multiplier, applied below
}
BEST_LR = "best lr of the grid, chosen on val (the paper's protocol)"


class Target(NamedTuple):
    """A downstream set to fine-tune on: a registered dataset's files at `root`, drawn by `scenes` (which of its
    classes share a pre-training look)."""
    dataset: str
    root: str
    scenes: DemoScenes
    name: str


def demo_target(run_dir: Path, config: dict, dataset: str) -> Target:
    """A dataset of the run's demo data."""
    return Target(dataset, str(run_dir / config["demo"]["root"]), DATASETS[dataset].demo, dataset)


def in_domain_voc(out: Path, config: dict) -> Target:
    """VOC-Aug drawn as the demo draws it (as many images, its own random stream), except that its thing
    classes take the pre-training looks 0..n-1, one each (n: the demo's class count, at most VOC-Aug's 8 demo
    classes; the others are left out). The downstream task is then the pre-training's own on new scenes: what
    pre-training with perfect labels gives when it has seen every downstream look, on 6x the images."""
    demo = demo_settings(config)
    spec = copy.copy(DATASETS["voc_aug"])
    kept = spec.demo.classes[:min(len(spec.demo.classes), demo.num_classes)]
    spec.demo = dataclasses.replace(spec.demo, classes=tuple((name, stuff, look)
                                                             for look, (name, stuff, _) in enumerate(kept)))
    counts = {"train": demo.downstream_train, "val": demo.downstream_val, "test": demo.downstream_val}
    made_by = json.dumps({"demo": dataclasses.asdict(demo), "classes": spec.demo.classes})
    if not (out / "done").exists() or (out / "done").read_text() != made_by:  # written for other settings
        shutil.rmtree(out, ignore_errors=True)
        with Progress(counts["train"] + counts["val"], "in-domain VOC-Aug") as progress:
            write_downstream(out, spec, demo.seed, demo.num_classes, counts, progress, dataset_key=len(DATASETS))
        (out / "done").write_text(made_by)
    return Target("voc_aug", str(out), spec.demo, "voc_aug (in-domain)")


def run(config: dict, root: str, model: str, dataset: str, init: str, init_from: str | None, seed: int,
        transfer: str, changes: dict, lr: float | None = None) -> dict:
    geometry, train = finetune_settings(config, dataset, model, lr=lr, seed=seed)
    if "epochs" in changes:
        changes = {**changes, "epochs": train.epochs * changes["epochs"]}
    train = dataclasses.replace(train, **changes)
    spec = config["pretrain"]["models"][model]
    with tempfile.TemporaryDirectory() as out:
        metrics = finetune(dataset, root, out, head=spec["head"], backbone=spec["backbone"], init=init,
                           init_from=init_from, settings=geometry, train=train, device="cpu", transfer=transfer)
        first_loss = float(pd.read_csv(Path(out) / "log.csv")["loss"].iloc[0])
    return {"miou": 100 * metrics["miou"], "val_miou": 100 * metrics["selection"]["miou"], "first_loss": first_loss,
            "lr": train.lr}


def best_of_grid(config: dict, *args) -> dict:
    """The run whose val mIoU is highest over finetune.lr_grid (ties: the lr listed first)."""
    runs = [run(config, *args, lr=lr) for lr in config["finetune"]["lr_grid"]]
    return max(runs, key=lambda r: r["val_miou"])


def square_set(data: SegmentationSet, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image and label map of `data` resized to size x size (labels nearest): (N, 3, S, S), (N, S, S)."""
    images, labels = [], []
    for i in range(len(data)):
        rgb, label = data.read(i)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        images.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0])
        labels.append(F.interpolate(torch.from_numpy(label.astype("int64"))[None, None].float(), size=(size, size),
                                    mode="nearest")[0, 0].long())
    return torch.stack(images), torch.stack(labels)


@torch.no_grad()
def head_features(model, images: torch.Tensor) -> torch.Tensor:
    """The features entering the main classifier, BatchNorm on the batch's statistics (as fine-tuning sees
    them) and no dropout."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()
    return model.features(images)


def feature_dimension(features: torch.Tensor) -> float:
    """Participation ratio (sum s^2)^2 / sum s^4 of the centred per-pixel features."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    power = torch.linalg.svdvals(flat - flat.mean(0)) ** 2
    return float(power.sum() ** 2 / (power ** 2).sum())


def pixels(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel features and labels at the features' resolution (labels nearest), ignore dropped."""
    small = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
    flat, target = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), small.reshape(-1)
    keep = target != IGNORE
    return flat[keep], target[keep]


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, weight_decay: float = 1e-4, steps: int = 200) -> float:
    """Val mIoU (%) of a multinomial logistic regression fitted (L-BFGS) on standardised train pixels."""
    x, y = pixels(*train)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    vx, vy = pixels(*val)
    with torch.no_grad():
        pred = (((vx - mean) / std) @ w + b).argmax(1)
    return 100 * scores(confusion_matrix(pred, vy, num_classes))["miou"]


def shared_look_iou(pred: torch.Tensor, labels: torch.Tensor, target: Target, classes: list[str],
                    demo_classes: int) -> float | None:
    """Mean IoU (%) over the classes of `target` whose demo look is a pre-training class, each predicted where
    `pred` (indices into the pre-training `classes`) says that class; None when no such class is in `labels`.
    `demo_classes`: the demo's class count, which decides the looks (pssl.demo.make.scene_look)."""
    spec, valid, ious = DATASETS[target.dataset], labels != IGNORE, []
    for name, _, appearance_id in target.scenes.classes:
        look = wnid(scene_look(appearance_id, demo_classes)) if appearance_id < 1000 else None
        if look not in classes:
            continue
        truth, said = (labels == spec.classes.index(name)) & valid, (pred == classes.index(look)) & valid
        if truth.any():
            ious.append(float((truth & said).sum() / (truth | said).sum()))
    return 100 * sum(ious) / len(ious) if ious else None


@torch.no_grad()
def zero_shot(checkpoint: Path, target: Target, images: torch.Tensor, labels: torch.Tensor,
              demo_classes: int) -> float | None:
    """The pre-trained model's own classifier (BatchNorm on its running statistics) scored by shared_look_iou."""
    model, _, classes = load_model(checkpoint, torch.device("cpu"))
    return shared_look_iou(model(images)["out"].argmax(1), labels, target, classes, demo_classes)


def pretrained(run_dir: Path, config: dict, model: str, variant: str) -> Path:
    """A pre-training's final.pt in the run's results folder."""
    return run_dir / config["results"] / PRETRAINED.format(model=model, variant=variant) / "final.pt"


def zoo_classifier(run_dir: Path, config: dict, model: str) -> str:
    """The ImageNet-init classifier of a segmentation model's backbone."""
    return str(run_dir / config["results"] / "zoo" / f"{config['pretrain']['models'][model]['init']}.pt")


def starting_points(run_dir: Path, config: dict, model_name: str, target: Target, variants: list[str]
                    ) -> pd.DataFrame:
    """Head dimension, linear probe and zero-shot per starting point (ImageNet init, each pre-trained variant)."""
    size = 2 * config["finetune"]["datasets"][target.dataset]["crop"]
    train = square_set(SegmentationSet(target.dataset, target.root, "train"), size)
    val = square_set(SegmentationSet(target.dataset, target.root, "val"), size)
    spec = config["pretrain"]["models"][model_name]
    num_classes = DATASETS[target.dataset].num_classes
    rows = []
    for variant in ["imagenet", *variants]:
        ckpt = pretrained(run_dir, config, model_name, variant)
        if variant != "imagenet" and not ckpt.exists():
            continue
        torch.manual_seed(0)
        model = build_segmenter(spec["head"], spec["backbone"], num_classes)
        if variant == "imagenet":
            init_backbone_from(model, zoo_classifier(run_dir, config, model_name))
        else:
            init_from_pretrained(model, str(ckpt))
        features = (head_features(model, train[0]), head_features(model, val[0]))
        own = None if variant == "imagenet" else zero_shot(ckpt, target, *val, config["demo"]["num_classes"])
        rows.append({"start": variant, "head dimension": round(feature_dimension(features[0]), 1),
                     "linear probe mIoU": round(linear_probe((features[0], train[1]), (features[1], val[1]),
                                                             num_classes), 2),
                     "zero-shot mIoU (shared looks)": None if own is None else round(own, 2)})
    return pd.DataFrame(rows)


def paired_gains(table: pd.DataFrame) -> pd.DataFrame:
    """Each pre-trained start's mIoU minus ImageNet init's on the same set and seed, under the same factor where
    ImageNet init ran under it, else as the DAG runs it: pssl.report.stats.paired_difference per set, start
    and factor (mean, 95% half-width over the seeds)."""
    imagenet = table[table["init"] == "imagenet"]
    imagenet_factors = set(imagenet["factor"])
    pairs = [pd.DataFrame(columns=[*table.columns, "start"])]  # none when no pre-trained model was found
    for (start, factor), treated in table[table["init"] != "imagenet"].groupby(["init", "factor"], sort=False):
        control = imagenet[imagenet["factor"] == (factor if factor in imagenet_factors else "-")]
        pairs.append(pd.concat([treated.assign(init="treated"), control.assign(init="control")])
                     .assign(start=start, factor=factor))
    return paired_difference(pd.concat(pairs), "treated", "control", ["set", "start", "factor"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a directory where the demo ran")
    p.add_argument("--config", nargs="*", default=[], help="the run's --config values (key=value)")
    p.add_argument("--model", default="pspnet_resnet10t")
    p.add_argument("--datasets", nargs="*", default=["camvid", "cityscapes"])
    p.add_argument("--in-domain", action="store_true",
                   help="also a VOC-Aug whose classes take the pre-training looks (written next to --out)")
    p.add_argument("--variants", nargs="+", default=["main", "oracle"], help="pre-training variants to transfer")
    p.add_argument("--factors", nargs="*", default=list(FACTORS), choices=list(FACTORS))
    p.add_argument("--lr-grid", action="store_true", help="also each init at its best lr of finetune.lr_grid")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="transfer_diagnosis.csv")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_dir = Path(args.run)
    config, _ = load_config([str(run_dir / "config.yaml")], args.config, basedir=run_dir, check=False)
    zoo = zoo_classifier(run_dir, config, args.model)
    targets = [demo_target(run_dir, config, dataset) for dataset in args.datasets]
    if args.in_domain:
        targets.append(in_domain_voc(Path(args.out).resolve().parent / "in_domain_voc", config))
    for target in targets:
        print(f"{target.name}: what each starting point knows (train / val images at twice the crop)\n"
              f"{starting_points(run_dir, config, args.model, target, args.variants).to_string(index=False)}",
              flush=True)
    rows = []
    for target in targets:
        for seed in args.seeds:
            fixed = (target.root, args.model, target.dataset)

            def record(init: str, factor: str, result: dict) -> None:
                rows.append({"set": target.name, "seed": seed, "init": init, "factor": factor, **result})
                print(rows[-1], flush=True)

            record("imagenet", "-", run(config, *fixed, "imagenet", zoo, seed, "full", {}))
            for factor in args.factors:
                transfer, changes, every_init = FACTORS[factor]
                if every_init:
                    record("imagenet", factor, run(config, *fixed, "imagenet", zoo, seed, "full", changes))
            if args.lr_grid:
                record("imagenet", BEST_LR, best_of_grid(config, *fixed, "imagenet", zoo, seed, "full", {}))
            for variant in args.variants:
                ckpt = pretrained(run_dir, config, args.model, variant)
                if not ckpt.exists():
                    continue
                for factor in args.factors:
                    transfer, changes, _ = FACTORS[factor]
                    record(f"pssl {variant}", factor, run(config, *fixed, "pssl", str(ckpt), seed, transfer, changes))
                if args.lr_grid:
                    record(f"pssl {variant}", BEST_LR, best_of_grid(config, *fixed, "pssl", str(ckpt), seed, "full", {}))
    table = pd.DataFrame(rows, columns=["set", "seed", "init", "factor", "miou", "val_miou", "first_loss", "lr"])
    table.to_csv(args.out, index=False, float_format="%.3f")
    print(table.groupby(["set", "init", "factor"], sort=False)[["miou", "first_loss", "lr"]].mean()
          .round(3).to_string())
    print("\nmIoU gain over ImageNet init (paired over seeds; * where the 95% interval excludes zero)")
    gains = paired_gains(table)
    gains["gain"] = [f"{d:+.2f} ± {h:.2f}{' *' if x else ''}"
                     for d, h, x in zip(gains["diff"], gains["ci95"], gains["excludes_zero"])]
    print(gains[["set", "start", "factor", "gain"]].to_string(index=False))


if __name__ == "__main__":
    main()
