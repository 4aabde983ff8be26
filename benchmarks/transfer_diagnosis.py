"""Why does a transferred segmentation module hurt on the demo? Fine-tunes one model on a few datasets from
ImageNet init and from a pre-trained model under changes of one factor each (what is transferred, BatchNorm,
the auxiliary branch, the backbone's lr, the fine-tuning length), with the DAG's own settings otherwise, over
several seeds; prints and writes mIoU and the first step's loss per run.

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
