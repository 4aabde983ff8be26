"""PSSL pre-training: a whole segmentation model (backbone + head) on the pseudo-labelled set, end to end, on
the D9 label maps (eq. 3) or, with label_mode fused, on PseudoSeg's fused soft labels (pssl.train.fusion).

Runs as one process, under torchrun (one node) or under srun (one task per GPU across nodes); see
pssl.distributed. Output: <out_dir>/final.pt = {"model", "config", "kind": "pssl-pretrain"}; the config's
`classes` names output k < K (the label tables' classes, pssl.classes), output K is background. Beside it
state.pt, the last checkpoint (weights, optimizer, schedule, random streams), from which a pre-training with
`continue_from` trains on (Table 4's 60 epochs: "continue to train ... for another 30 epochs").
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from pssl.data.pseudo import PSEUDO_IGNORE, PseudoLabelDataset
from pssl.device import allocation, precision_for
from pssl.distributed import init_distributed, shutdown
from pssl.errors import InputError
from pssl.io import atomic_file, fingerprint
from pssl.models.segmenter import build_segmenter
from pssl.models.weights import init_backbone_from
from pssl.settings import PretrainSettings, TrainSettings, output_identity
from pssl.tables import read_meta
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import FINAL_STATE, keep_final_state
from pssl.train.loop import Fusion, fit
from pssl.train.losses import class_weights

log = logging.getLogger(__name__)


def label_classes(labels: list[str]) -> list[str]:
    """The pre-training class space: the label tables' `classes`, the same in every table."""
    classes = read_meta(labels[0]).get("classes")
    if not classes:
        raise InputError(f"{labels[0]} names no classes (written by an older version): rerun the label jobs")
    for path in labels[1:]:
        if read_meta(path).get("classes") != classes:
            raise InputError(f"{path} numbers other classes than {labels[0]}: the label tables of one "
                             f"pre-training must share one class space (rerun the label jobs)")
    return classes


def pretrain(stores: list[str], labels: list[str], out_dir: str | Path, *, head: str, backbone: str,
             backbone_init: str | None, settings: PretrainSettings, train: TrainSettings, device: str = "auto",
             expect_world: int | None = None, requeue_margin_min: float = 15.0, masks_root: str | None = None,
             continue_state: str | None = None) -> Path:
    """`masks_root`: the object masks of label_source oracle. `continue_state`: the state.pt of the pre-training
    `settings.continue_from` names, trained on from its last step to `train.epochs`. Writes final.pt and
    state.pt (the last checkpoint: what a continuation of this run starts from)."""
    s = settings
    if bool(s.continue_from) != bool(continue_state):
        raise InputError(f"continue_from ({s.continue_from}) names the pre-training this one continues and "
                         f"continue_state ({continue_state}) its state.pt: give both or neither")
    info = init_distributed(device, expect_world)
    out_dir = Path(out_dir)
    torch.manual_seed(train.seed)
    classes = label_classes(labels)
    num_classes = len(classes)  # K
    fused = s.label_mode == "fused"
    dataset = PseudoLabelDataset(stores, labels, num_classes, s.crop, s.decile_threshold, s.ignore_deciles,
                                 train.seed, s.pad_label, s.images, fused, s.fusion_prior, s.cutout,
                                 s.label_source, masks_root)
    model = build_segmenter(head, backbone, num_classes + 1)  # K classes + background
    init = init_backbone_from(model, backbone_init)
    if info.main:
        if fused:
            labels_used = f"fused soft labels (gamma {s.fusion_gamma}, T {s.fusion_temperature}, prior " \
                          f"{dataset.prior}, calibration {s.fusion_calibration})"
        elif s.label_source == "deciles":
            labels_used = f"D>={s.decile_threshold} label maps"
        else:
            labels_used = f"{s.label_source} label maps (a control)"
        log.info(f"pretrain {head}-{backbone}: {num_classes} + 1 classes, {labels_used}, backbone init {init}, "
                 f"{info.world} process(es) on {info.device}, {allocation()}")
    weight = class_weights(num_classes + 1, background=num_classes, w_bg=s.w_bg)
    fusion = Fusion(num_classes, s.fusion_gamma, s.fusion_temperature, s.fusion_calibration) if fused else None
    job = {"model": f"{head}-{backbone}", "backbone_init": backbone_init and fingerprint(backbone_init),
           "stores": [fingerprint(x) for x in stores], "labels": [fingerprint(x) for x in labels],
           "pretrain": output_identity(s), "masks": masks_root if s.label_source == "oracle" else None,
           "continues": continue_state and fingerprint(continue_state)}
    model = fit(model, dataset, weight, train, out_dir, info, ignore_index=PSEUDO_IGNORE,
                time_limit=TimeLimit(requeue_margin_min), fusion=fusion, job=job, start=continue_state)
    final = out_dir / "final.pt"
    if info.main:
        config = {"head": head, "backbone": backbone, "num_classes": num_classes + 1, "background": num_classes,
                  "classes": classes,
                  "crop": s.crop, "pad_label": s.pad_label, "backbone_init": init, "w_bg": s.w_bg,
                  "decile_threshold": s.decile_threshold, "ignore_deciles": list(s.ignore_deciles),
                  "images": len(dataset), "label_mode": s.label_mode, "label_source": s.label_source,
                  "continue_from": s.continue_from,
                  **({"fusion": {"gamma": s.fusion_gamma, "temperature": s.fusion_temperature,
                                 "prior": dataset.prior, "calibration": s.fusion_calibration,
                                 "cutout": s.cutout}} if fused else {}),
                  "train": asdict(train), "world_size": info.world,
                  "precision": precision_for(info.device, train.precision)}
        with atomic_file(final) as tmp:
            torch.save({"model": model.state_dict(), "config": config, "kind": "pssl-pretrain"}, tmp)
        keep_final_state(out_dir)
        log.info(f"wrote {final} and {FINAL_STATE}")
    del model
    shutdown(info)
    return final
