"""PSSL pre-training: a whole segmentation model (backbone + head) on the pseudo-labelled set, end to end.

Runs as one process, under torchrun (one node) or under srun (one task per GPU across nodes); see
pssl.train.distributed. Output: <out_dir>/final.pt = {"model", "config", "kind": "pssl-pretrain"}.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from pssl.data.imagenet import read_table
from pssl.data.pseudo import PseudoLabelDataset
from pssl.device import allocation, precision_for
from pssl.io import atomic_file
from pssl.models.segmenter import build_segmenter, load_backbone_weights
from pssl.params import TrainParams
from pssl.time_limit import TimeLimit
from pssl.train.distributed import init_distributed, shutdown
from pssl.train.loop import fit
from pssl.train.losses import class_weights


def init_backbone_from(model, classifier_path: str | None) -> str:
    """Load a zoo classifier of the backbone's architecture into the backbone ('ImageNet init')."""
    if not classifier_path:
        return "random"
    record = torch.load(classifier_path, map_location="cpu", weights_only=False)
    loaded, expected = load_backbone_weights(model, record["state_dict"])
    if loaded < 0.9 * expected:
        raise ValueError(f"{classifier_path} ({record['arch']}) fits only {loaded}/{expected} tensors of the "
                         f"{model.backbone_name} backbone: use a classifier of the same architecture")
    return f"{Path(classifier_path).name} ({loaded}/{expected} tensors)"


def pretrain(stores: list[str], labels: list[str], out_dir: str | Path, head: str, backbone: str,
             crop: int, backbone_init: str | None, w_bg: float = 0.1,
             decile_threshold: int = 9, ignore_deciles: tuple[int, ...] = (), params: TrainParams = TrainParams(),
             device: str = "auto", pad_label: str = "ignore", expect_world: int | None = None,
             requeue_margin_min: float = 15.0) -> Path:
    info = init_distributed(device, expect_world)
    out_dir = Path(out_dir)
    torch.manual_seed(params.seed)
    num_classes = read_table(labels[0])[1]["num_classes"]  # K: the teacher's (= classifiers') classes
    dataset = PseudoLabelDataset(stores, labels, num_classes, crop, decile_threshold, ignore_deciles, params.seed,
                                 pad_label)
    model = build_segmenter(head, backbone, num_classes + 1)  # K classes + background
    init = init_backbone_from(model, backbone_init)
    if info.main:
        print(f"pretrain {head}-{backbone}: {num_classes} + 1 classes, backbone init {init}, "
              f"{info.world} process(es) on {info.device}, {allocation()}", flush=True)
    weight = class_weights(num_classes + 1, background=num_classes, w_bg=w_bg)
    model = fit(model, dataset, weight, params, out_dir, info, time_limit=TimeLimit(requeue_margin_min))
    final = out_dir / "final.pt"
    if info.main:
        config = {"head": head, "backbone": backbone, "num_classes": num_classes + 1, "background": num_classes,
                  "crop": crop, "pad_label": pad_label, "backbone_init": init, "w_bg": w_bg,
                  "decile_threshold": decile_threshold, "ignore_deciles": list(ignore_deciles),
                  "train": asdict(params), "world_size": info.world,
                  "precision": precision_for(info.device, params.precision)}
        with atomic_file(final) as tmp:
            torch.save({"model": model.state_dict(), "config": config, "kind": "pssl-pretrain"}, tmp)
        print(f"wrote {final}")
    del model
    shutdown(info)
    return final
