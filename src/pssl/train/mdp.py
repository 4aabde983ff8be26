"""MDP pre-training (Gao et al., "MDP: multi-dataset pixel-to-prototype pre-training"; README, "MDP"): any
segmenter of the project learns pixel embeddings on the union of labelled segmentation sets.

The segmenter's features before its classifier feed two 3-layer projection heads (L2-normalised pixel
embeddings: one for the class term, one for the consistency term). A momentum (EMA) copy of the whole query
encoder is the key encoder. Each step:
1. the key encoder embeds view 2 (head 1) and view 1's colour-only twin (head 2), without gradient;
2. view 2's per-image class means (eq. 2, Mixup's pixels weighted by lambda) are summed over the global
   batch (all-reduced across ranks) and pushed into the prototype memory (pssl.train.prototypes);
3. both views' query embeddings (head 1) against the prototypes: L_class (eq. 3, eq. 6), averaged over the
   labelled pixels of both views; view 1's head-2 embeddings against the key's: L_con (eq. 7-8);
4. the loss L_class + alpha L_con; after the optimizer step the key encoder moves toward the query's weights.

The key encoder runs in the query's mode without dropout: BatchNorm on batch statistics, as MoCo's key encoder (on its running
statistics, a randomly initialised key gives every pixel nearly the same embedding until EMA brings the
query's statistics over, thousands of steps); with sync_bn (several GPUs) those statistics span the global
batch, so N ranks compute one process's targets. Output: <out_dir>/final.pt = {"model": the segmenter's weights (fine-tuning's
init `mdp`), "config", "projection": the heads' weights, "prototypes": (K, D) eq. 2's P, "present": which
classes the memory holds, "kind": "mdp-pretrain"}; beside it state.pt (the last checkpoint) and log.csv
(loss, L_class, L_con per step).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from pssl.data.downstream import SegmentationSet
from pssl.data.multi_dataset import MultiDatasetViews, union_labels
from pssl.device import allocation, autocast, precision_for
from pssl.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from pssl.errors import InputError
from pssl.io import atomic_file, fingerprint
from pssl.models.segmenter import Segmenter, build_segmenter
from pssl.models.weights import init_backbone_from
from pssl.settings import MdpSettings, TrainSettings, output_identity
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import FINAL_STATE, keep_final_state
from pssl.train.loop import fit
from pssl.train.objectives import Objective, to_device
from pssl.train.prototypes import (
    PrototypeMemory,
    class_loss_sums,
    class_sums,
    class_weights_map,
    consistency_sums,
    labels_at,
    prototype_logits,
)

log = logging.getLogger(__name__)


def projection_head(channels: int, dim: int) -> nn.Sequential:
    """3 layers of 1x1 convolutions (the paper's "3-layer projection heads" after the segmentation module)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, dim, 1))


class Embedder(nn.Module):
    """A segmenter's features through the two projection heads: (class embeddings, consistency embeddings),
    each (N, D, h, w), L2-normalised."""

    def __init__(self, segmenter: Segmenter, dim: int):
        super().__init__()
        self.segmenter = segmenter
        channels = segmenter.head.feature_channels
        self.heads = nn.ModuleList([projection_head(channels, dim), projection_head(channels, dim)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.segmenter.features(x)
        return tuple(F.normalize(head(features), dim=1) for head in self.heads)


class MdpModel(nn.Module):
    """The query encoder (trained), its EMA key encoder and the prototype memory; one state dict holds all
    three, so a checkpoint resumes all of them."""

    def __init__(self, segmenter: Segmenter, dim: int, num_classes: int, slots: int):
        super().__init__()
        self.query = Embedder(segmenter, dim)
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        self.memory = PrototypeMemory(num_classes, dim, slots)

    @property
    def backbone(self) -> nn.Module:  # the query's (the training loop's backbone lr multiplier)
        return self.query.segmenter.backbone

    def train(self, mode: bool = True) -> MdpModel:
        """The key encoder follows the query's mode for BatchNorm, but never drops out: its prototypes and
        consistency targets are the whole features' (DeepLabV3's ASPP drops half)."""
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


def freeze_unreached(model: MdpModel, size: int) -> list[str]:
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


class MdpObjective(Objective):
    """One MDP step on a batch of pssl.data.multi_dataset items (see the module's docstring). Returns this
    rank's share of the global batch's loss as the loss sum, with weight 1 on the primary rank only, so the
    loop's normalisation leaves it as is and DDP's gradient average makes the global batch's."""
    parts = ("class", "consistency")

    def __init__(self, settings: MdpSettings, num_classes: int, info: DistInfo):
        self.s, self.num_classes, self.info = settings, num_classes, info
        self.last_parts = (0.0, 0.0)

    def __call__(self, net, batch, dev: torch.device, precision: str):
        s, info = self.s, self.info
        model: MdpModel = net.module if isinstance(net, DistributedDataParallel) else net
        views = to_device(batch["views"].flatten(0, 1), dev)        # image 0 view 0, image 0 view 1, ...
        colour = to_device(batch["colour"], dev)
        size = views.shape[-1]
        label_a, label_b = (batch[k].to(dev).flatten(0, 1) for k in ("label_a", "label_b"))
        lam = batch["lam"].to(dev).flatten()
        with torch.no_grad(), autocast(dev, precision):
            keys = model.key(torch.cat([views[1::2], colour]))
        n = colour.shape[0]
        key_class, key_consistency = keys[0][:n].float(), keys[1][n:].float()
        stride = size // key_class.shape[-1]
        a, b = labels_at(label_a, stride), labels_at(label_b, stride)
        sums, counts = class_sums(key_class, class_weights_map(a[1::2], b[1::2], lam[1::2], self.num_classes))
        total = all_reduce_sum(torch.cat([sums.flatten(), counts]), info)
        model.memory.push(total[:sums.numel()].view_as(sums), total[sums.numel():])
        prototypes, present = model.memory.prototypes()
        with autocast(dev, precision):
            class_emb, consistency_emb = net(views)
        logits = prototype_logits(class_emb.float(), prototypes, present, s.temperature)
        class_sum, class_weight = class_loss_sums(logits, a, b, lam, present)
        con_sum, con_count = consistency_sums(consistency_emb[0::2].float(), key_consistency, prototypes, present,
                                              s.temperature_query, s.temperature_key)
        glob = all_reduce_sum(torch.stack([class_weight, con_count, class_sum, con_sum]).detach(), info)
        share = class_sum / glob[0].clamp_min(1e-12) + s.consistency_weight * con_sum / glob[1]
        self.last_parts = (float(glob[2] / glob[0].clamp_min(1e-12)), float(glob[3] / glob[1]))
        return share, share.new_tensor(float(info.main)), n

    def after_step(self, model: MdpModel) -> None:
        model.update_key(self.s.key_momentum)


def pretrain_mdp(roots: dict[str, str], out_dir: str | Path, *, head: str, backbone: str,
                 backbone_init: str | None, settings: MdpSettings, train: TrainSettings, device: str = "auto",
                 expect_world: int | None = None, requeue_margin_min: float = 15.0) -> Path:
    """`roots`: dataset -> its root, for every dataset of `settings.datasets`; `backbone_init`: the model's
    zoo classifier (used with settings.backbone_start imagenet). Writes final.pt, state.pt and log.csv."""
    s = settings
    missing = [d for d in s.datasets if d not in roots]
    if missing:
        raise InputError(f"no root for {', '.join(missing)} (MDP pre-trains on {', '.join(s.datasets)})")
    if s.backbone_start == "imagenet" and not backbone_init:
        raise InputError("backbone_start imagenet needs the model's zoo classifier (--backbone-init)")
    info = init_distributed(device, expect_world)
    out_dir = Path(out_dir)
    space = union_labels(s.datasets, s.merge_names)
    sets = [SegmentationSet(d, roots[d], "train") for d in s.datasets]
    data = MultiDatasetViews(sets, space, s.crop, train.seed, cutmix=s.cutmix, mixup=s.mixup, mix_prob=s.mix_prob)
    torch.manual_seed(train.seed)
    segmenter = build_segmenter(head, backbone, len(space.classes))
    init = init_backbone_from(segmenter, backbone_init) if s.backbone_start == "imagenet" else "random"
    slots = max(1, s.memory_images // train.batch_size)
    model = MdpModel(segmenter, s.embed_dim, len(space.classes), slots)
    frozen = freeze_unreached(model, s.crop)  # also fails at once for a crop the features cannot cover
    if info.main:
        log.info(f"mdp {head}-{backbone}: {len(data)} images of {', '.join(s.datasets)}, {len(space.classes)} "
                 f"classes, memory of {slots} batches ({slots * train.batch_size} images), backbone {init}, "
                 f"{len(frozen)} tensors the embeddings do not use frozen, {info.world} process(es) on "
                 f"{info.device}, {allocation()}")
    job = {"model": f"{head}-{backbone}", "mdp": output_identity(s), "roots": {d: roots[d] for d in s.datasets},
           "backbone_init": backbone_init and s.backbone_start == "imagenet" and fingerprint(backbone_init)}
    objective = MdpObjective(s, len(space.classes), info)
    model = fit(model, data, torch.ones(1), train, out_dir, info, ignore_index=-1,
                time_limit=TimeLimit(requeue_margin_min), job=job, objective=objective)
    final = out_dir / "final.pt"
    if info.main:
        prototypes, present = model.memory.prototypes()
        segmenter = model.query.segmenter
        config = {"head": head, "backbone": backbone, "num_classes": len(space.classes), "classes": list(space.classes),
                  "sources": [list(x) for x in space.sources], "datasets": list(s.datasets), "method": "mdp",
                  "backbone_init": init, "mdp": asdict(s), "train": asdict(train), "world_size": info.world,
                  "images": len(data), "precision": precision_for(info.device, train.precision)}
        with atomic_file(final) as tmp:
            torch.save({"model": segmenter.state_dict(), "config": config,
                        "projection": model.query.heads.state_dict(),
                        "prototypes": F.normalize(prototypes, dim=1).cpu(), "present": present.cpu(),
                        "kind": "mdp-pretrain"}, tmp)
        keep_final_state(out_dir)
        log.info(f"wrote {final} and {FINAL_STATE}")
    del model
    shutdown(info)
    return final
