"""MDP's and MS3's training data: the train splits of several labelled segmentation sets in one label space
(the union Y = Y1 u Y2 ...), each image in augmented views (MDP: two, and a colour-only twin of the first;
MS3: one), with MDP a fraction of them mixed with an image of another dataset (cross-dataset CutMix, eq. 4,
or Mixup, eq. 5).

Every draw depends only on (seed, epoch, index), as fine-tuning's (pssl.data.transforms), so N ranks see the
global batch of one process and a resumed run sees the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pssl.data.downstream import DATASETS, IGNORE, SegmentationSet
from pssl.data.transforms import CropAugment, sample_generator, to_tensor
from pssl.errors import InputError

UNION_IGNORE = -1  # union label of pixels no loss counts (the union can have more than 255 classes)
MOCO_JITTER = (0.4, 0.4, 0.4, 0.1)  # MoCo v2's colour jitter (brightness, contrast, saturation, hue)


@dataclass(frozen=True)
class UnionLabels:
    """The union label space: `classes` ("voc_aug/person", or "person" with merged names), the datasets each
    class comes from, and per dataset a table from its train ids to union ids (IGNORE -> UNION_IGNORE)."""
    datasets: tuple[str, ...]
    classes: tuple[str, ...]
    sources: tuple[tuple[str, ...], ...]
    tables: tuple[np.ndarray, ...]

    def union_ids(self, dataset: int, train_ids: np.ndarray) -> np.ndarray:
        return self.tables[dataset][train_ids]


def union_labels(datasets: list[str] | tuple[str, ...], merge_names: bool = False) -> UnionLabels:
    """Classes kept apart per dataset (the paper's union), or one class per name (`merge_names`)."""
    if len(set(datasets)) != len(datasets) or not datasets:
        raise InputError(f"multi-dataset pre-training needs distinct datasets, got {list(datasets)}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise InputError(f"unknown dataset {unknown[0]!r}; known: {', '.join(DATASETS)}")
    index: dict[str, int] = {}
    sources: list[list[str]] = []
    tables = []
    for name in datasets:
        table = np.full(256, UNION_IGNORE, dtype=np.int64)
        for train_id, cls in enumerate(DATASETS[name].classes):
            key = cls if merge_names else f"{name}/{cls}"
            if key not in index:
                index[key] = len(index)
                sources.append([])
            sources[index[key]].append(name)
            table[train_id] = index[key]
        table[IGNORE] = UNION_IGNORE
        tables.append(table)
    return UnionLabels(tuple(datasets), tuple(index), tuple(map(tuple, sources)), tuple(tables))


def cutmix_keep(g: torch.Generator, size: int, lam: float) -> np.ndarray:
    """CutMix's M (Yun et al. 2019, their rand_bbox): False in a box of side size x sqrt(1 - lam) at a uniform
    centre, clipped to the image; True (the image's own pixels) elsewhere."""
    cut = int(size * np.sqrt(1.0 - lam))
    cy, cx = (int(torch.randint(size, (), generator=g)) for _ in range(2))
    y0, y1 = np.clip([cy - cut // 2, cy + cut // 2], 0, size)
    x0, x1 = np.clip([cx - cut // 2, cx + cut // 2], 0, size)
    keep = np.ones((size, size), dtype=bool)
    keep[y0:y1, x0:x1] = False
    return keep


class MultiDatasetViews(torch.utils.data.Dataset):
    """Item i (the datasets' train images one after another): {"views": (V, 3, c, c) float in [0, 1], "colour"
    (with `colour`): (3, c, c) view 0 with only a new blur and colour draw, "label_a" / "label_b": (V, c, c)
    union ids (UNION_IGNORE: none), "lam": (V,) the weight of label_a (label_b's: 1 - lam), "mixed": 0 none,
    1 CutMix, 2 Mixup}. CutMix mixes the labels (label_b empty, lam 1); Mixup keeps both (eq. 6)."""

    def __init__(self, sets: list[SegmentationSet], space: UnionLabels, crop: int, seed: int, *, cutmix: bool = False,
                 mixup: bool = False, mix_prob: float = 0.0, views: int = 2, colour: bool = True):
        if [s.name for s in sets] != list(space.datasets):
            raise InputError(f"the sets ({[s.name for s in sets]}) are not the label space's {space.datasets}")
        self.sets, self.space, self.crop, self.seed, self.epoch = sets, space, crop, seed, 0
        self.views, self.colour = views, colour
        self.items = [(k, i) for k, s in enumerate(sets) for i in range(len(s))]
        self.starts = np.cumsum([0] + [len(s) for s in sets])  # dataset k's items: starts[k] to starts[k + 1]
        self.mixes = [m for m, on in (("cutmix", cutmix), ("mixup", mixup)) if on]
        self.mix_prob = mix_prob if self.mixes else 0.0
        # MoCo v2's views (random scale and crop, flip, blur, colour jitter), without rotation
        self.transform = CropAugment(crop, mask_fill=UNION_IGNORE, base_size=crop, degrees=0.0, jitter=MOCO_JITTER)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        k, i = self.items[index]
        rgb, train_ids = self.sets[k].read(i)
        return rgb, self.space.union_ids(k, train_ids)

    def partner(self, g: torch.Generator, index: int) -> int:
        """An image of another dataset (with one dataset: another image)."""
        k = self.items[index][0]
        start, end = (self.starts[k], self.starts[k + 1]) if len(self.sets) > 1 else (index, index + 1)
        j = int(torch.randint(len(self.items) - (end - start), (), generator=g))
        return j if j < start else j + (end - start)

    def __getitem__(self, index: int) -> dict:
        g = sample_generator(self.seed, self.epoch, index)
        mix = None
        if float(torch.rand((), generator=g)) < self.mix_prob and len(self.items) > 1:
            mix = self.mixes[int(torch.randint(len(self.mixes), (), generator=g))]
            other = self.read(self.partner(g, index))
            lam = float(torch.rand((), generator=g))
        image, labels = self.read(index)
        views, colour_free, label_a, label_b, weight = [], None, [], [], []
        for _ in range(self.views):
            params, _, rgb, y_a = self.transform.geometry(image, labels, g)
            x = rgb.astype(np.float32) / 255.0
            y_b, w = np.full_like(y_a, UNION_IGNORE), 1.0
            if mix is not None:
                _, _, rgb_j, y_j = self.transform.geometry(*other, g)
                x_j = rgb_j.astype(np.float32) / 255.0
                if mix == "cutmix":  # eq. 4: M x_i + (1 - M) x_j, the labels likewise
                    keep = cutmix_keep(g, self.crop, lam)
                    x, y_a = np.where(keep[..., None], x, x_j), np.where(keep, y_a, y_j)
                else:  # eq. 5: lam x_i + (1 - lam) x_j; both labels kept
                    x, y_b, w = lam * x + (1.0 - lam) * x_j, y_j, lam
            if colour_free is None:
                colour_free = x
            views.append(to_tensor(self.transform.photometric(x, params)))
            label_a.append(torch.from_numpy(y_a))
            label_b.append(torch.from_numpy(y_b))
            weight.append(w)
        item = {"views": torch.stack(views), "label_a": torch.stack(label_a), "label_b": torch.stack(label_b),
                "lam": torch.tensor(weight, dtype=torch.float32),
                "mixed": torch.tensor({None: 0, "cutmix": 1, "mixup": 2}[mix])}
        if self.colour:
            recolour = self.transform.sample(g, self.crop, self.crop)  # only its blur and colour draws are used
            item["colour"] = to_tensor(self.transform.photometric(colour_free, recolour))
        return item
