"""MDP pre-training (Gao et al., "MDP: multi-dataset pixel-to-prototype pre-training"; README, "MDP") on the
multi-dataset frame (pssl.train.multi_dataset): head 1 embeds for the class term, head 2 for the consistency
term. Each step:
1. the key encoder embeds view 2 (head 1) and view 1's colour-only twin (head 2), without gradient;
2. view 2's per-image class means (eq. 2, Mixup's pixels weighted by lambda) are summed over the global
   batch (all-reduced across ranks) and pushed into the prototype memory (pssl.train.prototypes);
3. both views' query embeddings (head 1) against the prototypes: L_class (eq. 3, eq. 6), averaged over the
   labelled pixels of both views; view 1's head-2 embeddings against the key's: L_con (eq. 7-8);
4. the loss L_class + alpha L_con; after the optimizer step the key encoder moves toward the query's weights.

final.pt also keeps "prototypes": (K, D) eq. 2's P, normalised, and "present": which classes the memory holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from pssl.data.downstream import SegmentationSet
from pssl.data.multi_dataset import MultiDatasetViews
from pssl.device import autocast
from pssl.distributed import DistInfo, all_reduce_sum
from pssl.settings import MdpSettings
from pssl.train.multi_dataset import Method, MultiDatasetModel
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


def global_share(parts: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """(the global sums of this rank's [weight_1, sum_1, weight_2, sum_2, ...] (no gradient), this rank's share
    of each term's global mean: sum_k / global weight_k, with its gradient)."""
    glob = all_reduce_sum(parts.detach().clone(), info)  # in place: `parts` must keep this rank's values
    weights = glob[0::2].clamp_min(1e-12)
    return glob, parts[1::2] / weights


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
        model: MultiDatasetModel = net.module if isinstance(net, DistributedDataParallel) else net
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
        glob, share = global_share(torch.stack([class_weight, class_sum, con_count, con_sum]), info)
        self.last_parts = (float(glob[1] / glob[0].clamp_min(1e-12)), float(glob[3] / glob[2].clamp_min(1e-12)))
        loss = share[0] + s.consistency_weight * share[1]
        return loss, loss.new_tensor(float(info.main)), n

    def after_step(self, model: MultiDatasetModel) -> None:
        model.update_key(self.s.key_momentum)


class Mdp(Method):
    name = "mdp"

    def views(self, sets: list[SegmentationSet], seed: int) -> MultiDatasetViews:
        s = self.s
        return MultiDatasetViews(sets, self.space, s.crop, seed, cutmix=s.cutmix, mixup=s.mixup, mix_prob=s.mix_prob)

    def heads(self) -> tuple[int, int]:
        return self.s.embed_dim, self.s.embed_dim

    def slots(self) -> int:
        return max(1, self.s.memory_images // self.train.batch_size)

    def memory(self) -> PrototypeMemory:
        return PrototypeMemory(len(self.space.classes), self.s.embed_dim, self.slots())

    def objective(self, info: DistInfo) -> MdpObjective:
        return MdpObjective(self.s, len(self.space.classes), info)

    def outputs(self, model: MultiDatasetModel) -> dict:
        prototypes, present = model.memory.prototypes()
        return {"prototypes": F.normalize(prototypes, dim=1).cpu(), "present": present.cpu()}

    def describe(self, model: MultiDatasetModel) -> str:
        return f"prototype memory of {self.slots()} batches ({self.slots() * self.train.batch_size} images)"
