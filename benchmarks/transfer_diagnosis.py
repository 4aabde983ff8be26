"""Why does a transferred segmentation module hurt on the demo? Fine-tunes one model on a few datasets from
ImageNet init and from a pre-trained model under changes of one factor each (what is transferred, BatchNorm,
the auxiliary branch, the backbone's lr, the fine-tuning length), with the DAG's own settings otherwise, over
several seeds; prints and writes mIoU and the first step's loss per run. Also measures how many dimensions
the head's features span before the classifier (participation ratio of their singular values) on downstream
images, for a fresh head and for each pre-trained one: a head pre-trained on K + 1 classes that spans about
K + 1 dimensions gives the fresh classifier less to work with than a random head does.

  python benchmarks/transfer_diagnosis.py --run /path/to/demo/clone --model pspnet_resnet10t \
      --datasets camvid cityscapes --seeds 0 1 2 --out transfer_diagnosis.csv

`--run`: a directory where the demo ran (config.yaml, results/, data/demo); pre-trained models are read from
results/pretrain/<model>/<variant>/final.pt (`--variants main oracle`: every variant that exists is used).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from pssl.settings import finetune_settings
from pssl.train.finetune import finetune

# factor -> (transfer, changes of TrainSettings): each row changes one thing against "as the DAG runs it"
FACTORS = {
    "as the DAG runs it": ("full", {}),
    "backbone only": ("backbone", {}),
    "BatchNorm frozen (running statistics)": ("full", {"freeze_bn": True}),
    "no auxiliary branch": ("full", {"aux_weight": 0.0}),
    "backbone lr x 0.1 (the paper's)": ("full", {"backbone_lr_mult": 0.1}),
    "5x the fine-tuning epochs": ("full", {"epochs": 5}),  # a multiplier, applied below
}


def run(config: dict, root: str, model: str, dataset: str, init: str, init_from: str | None, seed: int,
        transfer: str, changes: dict) -> dict:
    geometry, train = finetune_settings(config, dataset, model, seed=seed)
    if "epochs" in changes:
        changes = {**changes, "epochs": train.epochs * changes["epochs"]}
    train = dataclasses.replace(train, **changes)
    spec = config["pretrain"]["models"][model]
    with tempfile.TemporaryDirectory() as out:
        metrics = finetune(dataset, root, out, head=spec["head"], backbone=spec["backbone"], init=init,
                           init_from=init_from, settings=geometry, train=train, device="cpu", transfer=transfer)
        first_loss = float(pd.read_csv(Path(out) / "log.csv")["loss"].iloc[0])
    return {"miou": 100 * metrics["miou"], "first_loss": first_loss}


@torch.no_grad()
def feature_dimension(model, images: torch.Tensor) -> float:
    """Participation ratio (sum s^2)^2 / sum s^4 of the centred features entering the main classifier."""
    captured = {}
    hook = model.head.classifier.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    model.train()  # batch statistics, as fine-tuning sees the features
    model(images)
    hook.remove()
    x = captured["x"]
    features = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    power = torch.linalg.svdvals(features - features.mean(0)) ** 2
    return float(power.sum() ** 2 / (power ** 2).sum())


def head_dimensions(run_dir: Path, config: dict, model_name: str, dataset: str, variants: list[str]) -> dict:
    from pssl.data.downstream import SegmentationSet
    from pssl.models.segmenter import build_segmenter
    from pssl.models.weights import init_backbone_from, init_from_pretrained
    data = SegmentationSet(dataset, str(run_dir / config["demo"]["root"]), "train")
    crop = config["finetune"]["datasets"][dataset]["crop"]
    images = torch.stack([torch.nn.functional.interpolate(
        torch.from_numpy(data.read(i)[0].copy()).permute(2, 0, 1)[None].float() / 255, size=(2 * crop, 2 * crop),
        mode="bilinear")[0] for i in range(min(16, len(data)))])
    spec = config["pretrain"]["models"][model_name]
    result = {}
    for variant in ["imagenet", *variants]:
        torch.manual_seed(0)
        model = build_segmenter(spec["head"], spec["backbone"], data.num_classes)
        ckpt = run_dir / f"results/pretrain/{model_name}/{variant}/final.pt"
        if variant == "imagenet":
            init_backbone_from(model, str(run_dir / f"results/zoo/{spec['init']}.pt"))
        elif ckpt.exists():
            init_from_pretrained(model, str(ckpt))
        else:
            continue
        result[variant] = round(feature_dimension(model, images), 1)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a directory where the demo ran")
    p.add_argument("--model", default="pspnet_resnet10t")
    p.add_argument("--datasets", nargs="+", default=["camvid", "cityscapes"])
    p.add_argument("--variants", nargs="+", default=["main", "oracle"], help="pre-training variants to transfer")
    p.add_argument("--factors", nargs="+", default=list(FACTORS), choices=list(FACTORS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="transfer_diagnosis.csv")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_dir = Path(args.run)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    root = str(run_dir / config["demo"]["root"])
    zoo = config["pretrain"]["models"][args.model]["init"]
    print(f"head feature dimension (participation ratio, {args.datasets[0]} train images): "
          f"{head_dimensions(run_dir, config, args.model, args.datasets[0], args.variants)}", flush=True)
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            base = run(config, root, args.model, dataset, "imagenet", str(run_dir / f"results/zoo/{zoo}.pt"), seed,
                       "full", {})
            rows.append({"dataset": dataset, "seed": seed, "init": "imagenet", "factor": "-", **base})
            for variant in args.variants:
                ckpt = run_dir / f"results/pretrain/{args.model}/{variant}/final.pt"
                if not ckpt.exists():
                    continue
                for factor in args.factors:
                    transfer, changes = FACTORS[factor]
                    result = run(config, root, args.model, dataset, "pssl", str(ckpt), seed, transfer, changes)
                    rows.append({"dataset": dataset, "seed": seed, "init": f"pssl {variant}", "factor": factor,
                                 **result})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False, float_format="%.3f")
    print(table.groupby(["dataset", "init", "factor"], sort=False)[["miou", "first_loss"]].mean()
          .round(2).to_string())


if __name__ == "__main__":
    main()
