"""The frame MDP and MS3 share (README, "MDP" and "MS3"): any segmenter of the project learns pixel embeddings
on the union of labelled segmentation sets (pssl.data.multi_dataset).

The segmenter's features before its classifier feed two 3-layer projection heads (L2-normalised pixel
embeddings). A momentum (EMA) copy of the whole query encoder is the key encoder; it runs in the query's mode
without dropout: BatchNorm on batch statistics, as MoCo's key encoder (on its running statistics, a randomly
initialised key gives every pixel nearly the same embedding until EMA brings the query's statistics over,
thousands of steps); with sync_bn (several GPUs) those statistics span the global batch, so N ranks compute one
process's targets. A method (pssl.train.mdp, pssl.train.ms3) adds its memory, its objective and what its
final.pt keeps; one state dict holds the query, the key and the memory, so a checkpoint resumes all of them.

Output: <out_dir>/final.pt = {"model": the segmenter's weights (fine-tuning's init mdp / ms3), "config",
"projection": the heads' weights, the method's own entries, "kind": "<method>-pretrain"}; beside it state.pt
(the last checkpoint) and log.csv (the loss and its terms per step).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pssl.data.downstream import SegmentationSet
from pssl.data.multi_dataset import MultiDatasetViews, UnionLabels, union_labels
from pssl.device import allocation, precision_for
from pssl.distributed import DistInfo, init_distributed, shutdown
from pssl.errors import InputError
from pssl.io import atomic_file, fingerprint
from pssl.models.segmenter import Segmenter, build_segmenter
from pssl.models.weights import init_backbone_from
from pssl.settings import MultiDatasetSettings, TrainSettings, output_identity
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import FINAL_STATE, keep_final_state
from pssl.train.loop import fit
from pssl.train.objectives import Objective

log = logging.getLogger(__name__)


def projection_head(channels: int, dim: int) -> nn.Sequential:
    """3 layers of 1x1 convolutions (the papers' "3-layer projection heads" after the segmentation module)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, dim, 1))


class Embedder(nn.Module):
    """A segmenter's features through the two projection heads: two (N, D_k, h, w) embeddings, L2-normalised."""

    def __init__(self, segmenter: Segmenter, dims: tuple[int, int]):
        super().__init__()
        self.segmenter = segmenter
        channels = segmenter.head.feature_channels
        self.heads = nn.ModuleList([projection_head(channels, dim) for dim in dims])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.segmenter.features(x)
        return tuple(F.normalize(head(features), dim=1) for head in self.heads)


class MultiDatasetModel(nn.Module):
    """The query encoder (trained), its EMA key encoder and a method's memory."""

    def __init__(self, segmenter: Segmenter, dims: tuple[int, int], memory: nn.Module):
        super().__init__()
        self.query = Embedder(segmenter, dims)
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        self.memory = memory

    @property
    def backbone(self) -> nn.Module:  # the query's (the training loop's backbone lr multiplier)
        return self.query.segmenter.backbone

    def train(self, mode: bool = True) -> MultiDatasetModel:
        """The key encoder follows the query's mode for BatchNorm, but never drops out: its targets are the
        whole features' (DeepLabV3's ASPP drops half)."""
        super().train(mode)
        for m in self.key.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(x)

    @torch.no_grad()
    def update_key(self, momentum: float) -> None:
        """key <- m key + (1 - m) query, for the weights and BatchNorm's running statistics."""
        key, query = self.key.state_dict(), self.query.state_dict()
        for name, value in key.items():
            if value.is_floating_point():
                value.mul_(momentum).add_(query[name].detach(), alpha=1.0 - momentum)
            else:
                value.copy_(query[name])


def freeze_unreached(model: MultiDatasetModel, size: int) -> list[str]:
    """Freeze the query's parameters the embeddings do not depend on (the classifiers; the auxiliary branch
    where the head does not use it), found by one backward pass; DDP needs every trained parameter to get a
    gradient. Returns their names."""
    was_training = model.training
    model.eval()
    sample = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    sum(e.sum() for e in model(sample)).backward()
    frozen = [name for name, p in model.query.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.query.named_parameters():
        p.grad = None
        if name in frozen:
            p.requires_grad_(False)
    model.train(was_training)
    return frozen


class Method:
    """What a multi-dataset method adds to the frame (pssl.train.mdp.Mdp, pssl.train.ms3.Ms3)."""
    name: str

    def __init__(self, settings: MultiDatasetSettings, train: TrainSettings, space: UnionLabels):
        self.s, self.train, self.space = settings, train, space

    def views(self, sets: list[SegmentationSet], seed: int) -> MultiDatasetViews:
        raise NotImplementedError

    def heads(self) -> tuple[int, int]:
        """The two projection heads' widths."""
        raise NotImplementedError

    def memory(self) -> nn.Module:
        raise NotImplementedError

    def objective(self, info: DistInfo) -> Objective:
        raise NotImplementedError

    def job(self) -> dict:
        """Inputs beyond the settings that decide the result (a checkpoint of other inputs is not resumed)."""
        return {}

    def outputs(self, model: MultiDatasetModel) -> dict:
        """What final.pt keeps beside the segmenter: the method's own view of its classes."""
        return {}

    def describe(self, model: MultiDatasetModel) -> str:
        return ""


def pretrain_multi(method: type[Method], roots: dict[str, str], out_dir: str | Path, *, head: str, backbone: str,
                   backbone_init: str | None, settings: MultiDatasetSettings, train: TrainSettings,
                   device: str = "auto", expect_world: int | None = None, requeue_margin_min: float = 15.0,
                   **method_inputs) -> Path:
    """`roots`: dataset -> its root, for every dataset of `settings.datasets`; `backbone_init`: the model's
    zoo classifier (used with settings.backbone_start imagenet); `method_inputs`: the method's own files.
    Writes final.pt, state.pt and log.csv."""
    s = settings
    missing = [d for d in s.datasets if d not in roots]
    if missing:
        raise InputError(f"no root for {', '.join(missing)} ({method.name} pre-trains on {', '.join(s.datasets)})")
    if s.backbone_start == "imagenet" and not backbone_init:
        raise InputError("backbone_start imagenet needs the model's zoo classifier (--backbone-init)")
    info = init_distributed(device, expect_world)
    out_dir = Path(out_dir)
    space = union_labels(s.datasets, s.merge_names)
    parts = method(s, train, space, **method_inputs)
    data = parts.views([SegmentationSet(d, roots[d], "train") for d in s.datasets], train.seed)
    torch.manual_seed(train.seed)
    segmenter = build_segmenter(head, backbone, len(space.classes))
    init = init_backbone_from(segmenter, backbone_init) if s.backbone_start == "imagenet" else "random"
    model = MultiDatasetModel(segmenter, parts.heads(), parts.memory())
    frozen = freeze_unreached(model, s.crop)  # also fails at once for a crop the features cannot cover
    if info.main:
        log.info(f"{method.name} {head}-{backbone}: {len(data)} images of {', '.join(s.datasets)}, "
                 f"{len(space.classes)} classes, {parts.describe(model)}, backbone {init}, {len(frozen)} tensors the "
                 f"embeddings do not use frozen, {info.world} process(es) on {info.device}, {allocation()}")
    job = {"model": f"{head}-{backbone}", method.name: output_identity(s), "roots": {d: roots[d] for d in s.datasets},
           "backbone_init": backbone_init and s.backbone_start == "imagenet" and fingerprint(backbone_init),
           **parts.job()}
    model = fit(model, data, torch.ones(1), train, out_dir, info, ignore_index=-1,
                time_limit=TimeLimit(requeue_margin_min), job=job, objective=parts.objective(info))
    final = out_dir / "final.pt"
    if info.main:
        config = {"head": head, "backbone": backbone, "num_classes": len(space.classes), "classes": list(space.classes),
                  "sources": [list(x) for x in space.sources], "datasets": list(s.datasets), "method": method.name,
                  "backbone_init": init, method.name: asdict(s), "train": asdict(train), "world_size": info.world,
                  "images": len(data), "precision": precision_for(info.device, train.precision)}
        with atomic_file(final) as tmp:
            torch.save({"model": model.query.segmenter.state_dict(), "config": config,
                        "projection": model.query.heads.state_dict(), **parts.outputs(model),
                        "kind": f"{method.name}-pretrain"}, tmp)
        keep_final_state(out_dir)
        log.info(f"wrote {final} and {FINAL_STATE}")
    del model
    shutdown(info)
    return final
