"""What one training step minimises, given a batch: the label-map loss (eq. 3) or PseudoSeg's fused soft labels.

Each objective returns (weighted loss sum, weight sum, images) so the loop normalises by the global batch's
weight sum (see pssl.train.losses). The auxiliary head, where the model has one, gets the same target at
`aux_weight`. An objective with state beside the weights (MDP's key encoder: pssl.train.mdp) updates it in
`after_step`, and may name loss `parts` that log.csv records beside the total.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pssl.device import autocast
from pssl.distributed import DistInfo
from pssl.train.fusion import fuse, soft_ce_sums
from pssl.train.losses import Ohem, weighted_ce_sums


def to_device(images: torch.Tensor, dev: torch.device) -> torch.Tensor:
    images = images.to(dev, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if dev.type == "cuda" else images


class Objective:
    parts: tuple[str, ...] = ()  # log.csv columns of the loss's terms (their values: `last_parts`)
    last_parts: tuple[float, ...] = ()

    def after_step(self, model) -> None:
        """Called after each optimizer step with the bare model."""


@dataclass
class HardLabels(Objective):
    """Batches (images (B, 3, H, W), label maps (B, H, W)): weighted cross entropy (eq. 3); with `ohem`, on the
    hard pixels the main head's prediction selects, for both heads (one weight sum normalises the loss)."""
    weight: torch.Tensor
    ignore_index: int
    aux_weight: float
    ohem: Ohem | None = None

    def __call__(self, net, batch, dev: torch.device, precision: str):
        images, masks = to_device(batch[0], dev), batch[1].to(dev, non_blocking=True)
        with autocast(dev, precision):
            outputs = net(images)
        if self.ohem is not None:
            masks = self.ohem.select(outputs["out"].detach(), masks, self.ignore_index)
        weight = self.weight.to(dev)
        loss_sum, weight_sum = weighted_ce_sums(outputs["out"], masks, weight, self.ignore_index)
        if "aux" in outputs:
            loss_sum = loss_sum + self.aux_weight * weighted_ce_sums(outputs["aux"], masks, weight,
                                                                     self.ignore_index)[0]
        return loss_sum, weight_sum, images.shape[0]


@dataclass
class FusedLabels(Objective):
    """Batches of fused views (pssl.data.pseudo: weak, strong, strength, label, valid): the model's prediction
    on the weak view (no gradient) fused with the explanation prior and sharpened (PseudoSeg eq. 4,
    pssl.train.fusion) is the soft target of the strong view; CutOut and padding are excluded;
    each pixel weighs sum_c y_c w_c (eq. 3's w_bg on the soft label). The calibration's RMS r spans the global
    batch, so N ranks compute the targets of one process with the whole batch."""
    weight: torch.Tensor
    aux_weight: float
    background: int
    gamma: float
    temperature: float
    calibration: str
    info: DistInfo

    def targets(self, net, batch, dev: torch.device, precision: str) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, precision):
            logits = net(to_device(batch["weak"], dev))["out"].float()
        return fuse(logits, batch["strength"].to(dev), batch["label"].to(dev), self.background, self.gamma,
                    self.temperature, self.calibration, self.info)

    def __call__(self, net, batch, dev: torch.device, precision: str):
        target = self.targets(net, batch, dev, precision)
        valid = batch["valid"].to(dev)
        with autocast(dev, precision):
            outputs = net(to_device(batch["strong"], dev))
        weight = self.weight.to(dev)
        loss_sum, weight_sum = soft_ce_sums(outputs["out"], target, weight, valid)
        if "aux" in outputs:
            loss_sum = loss_sum + self.aux_weight * soft_ce_sums(outputs["aux"], target, weight, valid)[0]
        return loss_sum, weight_sum, target.shape[0]
