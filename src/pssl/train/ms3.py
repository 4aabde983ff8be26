"""MS3 pre-training (Zhang et al., "MS3: language- and vision-supervised multi-dataset pre-training"; README,
"MS3") on the multi-dataset frame (pssl.train.multi_dataset): head 1 embeds into the class vectors' space (T,
from `pssl embed-classes`: the text encoder is never needed here), head 2 into the visual space. Each step:
1. the key encoder embeds the view (both heads), without gradient; per class the sums of its pixels'
   embeddings and their counts, all-reduced across ranks, enter two FIFO memories of the last batches;
2. the visual class embeddings V (eq. 4) from the visual memory, each stored batch weighted by the cosine of
   its class mean with the previous V; after `mapping_warmup` of the training, the multi-label positives
   (eq. 5-6) from the language memory's class means against T;
3. the query's head-1 embeddings against T (L_l) and head-2 embeddings against V (L_v), InfoNCE at tau with
   the positives (eq. 7-8); the loss L_l + alpha L_v; after the optimizer step the key encoder moves toward
   the query.

final.pt also keeps "text" (T), "visual" (V), "present" (the classes V holds) and "positives" (the mapping at
the end: row y, the classes y pulls toward).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from pssl.class_embeddings import read_class_embeddings
from pssl.data.downstream import SegmentationSet
from pssl.data.multi_dataset import MultiDatasetViews, UnionLabels
from pssl.device import autocast
from pssl.distributed import DistInfo, all_reduce_sum
from pssl.io import fingerprint
from pssl.settings import Ms3Settings, TrainSettings
from pssl.train.mdp import global_share
from pssl.train.ms3_terms import multi_label_positives, multi_positive_nll_sums, pixel_sums, visual_embeddings
from pssl.train.multi_dataset import Method, MultiDatasetModel
from pssl.train.objectives import Objective, to_device
from pssl.train.prototypes import PrototypeMemory, labels_at, prototype_logits


class Ms3Memory(nn.Module):
    """The fixed class vectors T, the last batches' per-class pixel sums of both heads' key embeddings, and the
    current V (eq. 4's previous V at the next step) and positives; buffers, so a checkpoint resumes them."""

    def __init__(self, text: torch.Tensor, same_dataset: torch.Tensor, visual_dim: int, slots: int):
        super().__init__()
        num_classes = len(text)
        self.register_buffer("text", F.normalize(text.float(), dim=1))
        self.register_buffer("same_dataset", same_dataset)
        self.language = PrototypeMemory(num_classes, text.shape[1], slots)
        self.visual = PrototypeMemory(num_classes, visual_dim, slots)
        self.register_buffer("current_visual", torch.zeros(num_classes, visual_dim))
        self.register_buffer("has_visual", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("positives", torch.eye(num_classes, dtype=torch.bool))

    def update(self, multi_label: bool) -> None:
        """V, and with `multi_label` the positives, from the memories as they now are."""
        visual, present = visual_embeddings(self.visual.sums, self.visual.counts, self.current_visual,
                                            self.has_visual)
        self.current_visual.copy_(visual)
        self.has_visual.copy_(present)
        if multi_label:
            means, seen = self.language.prototypes()
            self.positives.copy_(multi_label_positives(F.normalize(means, dim=1), self.text, seen,
                                                       self.same_dataset))


class Ms3Objective(Objective):
    """One MS3 step (see the module's docstring); this rank's share of the global loss, as MDP's."""
    parts = ("language", "visual")

    def __init__(self, settings: Ms3Settings, num_classes: int, info: DistInfo, warmup_steps: int):
        self.s, self.num_classes, self.info, self.warmup_steps = settings, num_classes, info, warmup_steps
        self.last_parts = (0.0, 0.0)

    def __call__(self, net, batch, dev: torch.device, precision: str):
        s, info, k = self.s, self.info, self.num_classes
        model: MultiDatasetModel = net.module if isinstance(net, DistributedDataParallel) else net
        memory: Ms3Memory = model.memory
        views = to_device(batch["views"][:, 0], dev)
        with torch.no_grad(), autocast(dev, precision):
            key_language, key_visual = model.key(views)
        labels = labels_at(batch["label_a"][:, 0].to(dev), views.shape[-1] // key_visual.shape[-1])
        language_sums, counts = pixel_sums(key_language.float(), labels, k)
        visual_sums, _ = pixel_sums(key_visual.float(), labels, k)
        total = all_reduce_sum(torch.cat([language_sums.flatten(), visual_sums.flatten(), counts]), info)
        split = (language_sums.numel(), visual_sums.numel(), k)
        language_total, visual_total, count_total = torch.split(total, split)
        memory.language.push(language_total.view_as(language_sums), count_total)
        memory.visual.push(visual_total.view_as(visual_sums), count_total)
        memory.update(s.multi_label and int(memory.visual.pushed) > self.warmup_steps)
        with autocast(dev, precision):
            query_language, query_visual = net(views)
        everything = torch.ones(k, dtype=torch.bool, device=dev)
        text_logits = torch.einsum("ndhw,kd->nkhw", query_language.float(), memory.text) / s.temperature
        language_sum, language_count = multi_positive_nll_sums(text_logits, labels, memory.positives, everything)
        visual_logits = prototype_logits(query_visual.float(), memory.current_visual, memory.has_visual, s.temperature)
        visual_sum, visual_count = multi_positive_nll_sums(visual_logits, labels, memory.positives, memory.has_visual)
        glob, share = global_share(torch.stack([language_count, language_sum, visual_count, visual_sum]), info)
        self.last_parts = (float(glob[1] / glob[0].clamp_min(1e-12)), float(glob[3] / glob[2].clamp_min(1e-12)))
        loss = share[0] + s.visual_weight * share[1]
        return loss, loss.new_tensor(float(info.main)), views.shape[0]

    def after_step(self, model: MultiDatasetModel) -> None:
        model.update_key(self.s.key_momentum)


class Ms3(Method):
    name = "ms3"

    def __init__(self, settings: Ms3Settings, train: TrainSettings, space: UnionLabels, class_embeddings: str):
        super().__init__(settings, train, space)
        self.embeddings = class_embeddings
        self.text = torch.from_numpy(read_class_embeddings(class_embeddings, space.classes)).float()

    def views(self, sets: list[SegmentationSet], seed: int) -> MultiDatasetViews:
        data = MultiDatasetViews(sets, self.space, self.s.crop, seed, views=1, colour=False)
        self.total_steps = len(data) // self.train.batch_size * self.train.epochs
        return data

    def heads(self) -> tuple[int, int]:
        return self.text.shape[1], self.s.embed_dim

    def slots(self) -> int:
        return max(1, self.s.memory_images // self.train.batch_size)

    def memory(self) -> Ms3Memory:
        sources = self.space.sources
        same = torch.tensor([[bool(set(a) & set(b)) for b in sources] for a in sources])
        return Ms3Memory(self.text, same, self.s.embed_dim, self.slots())

    def objective(self, info: DistInfo) -> Ms3Objective:
        return Ms3Objective(self.s, len(self.space.classes), info, math.ceil(self.s.mapping_warmup * self.total_steps))

    def job(self) -> dict:
        return {"class_embeddings": fingerprint(self.embeddings)}

    def outputs(self, model: MultiDatasetModel) -> dict:
        m: Ms3Memory = model.memory
        return {"text": m.text.cpu(), "visual": F.normalize(m.current_visual, dim=1).cpu(),
                "present": m.has_visual.cpu(), "positives": m.positives.cpu()}

    def describe(self, model: MultiDatasetModel) -> str:
        return (f"class vectors {self.text.shape[1]}-d from {self.embeddings}, memories of {self.slots()} batches "
                f"({self.slots() * self.train.batch_size} images)")

