"""The self-training student's training set: per epoch a random half of the real set + k x as many pseudo samples.

Zhu et al.: each epoch "randomly pick[s] half the training samples" of the real set and k times as many
pseudo samples, so the real half is the same for every k (it is drawn from the seed and the epoch alone) and an
epoch of k = 1 is as long as the teacher's. Pseudo samples are drawn class-uniformly by centroid (NVIDIA's
uniform sampler): a class uniformly among the classes the teacher found in the pool, one of that class's
centroids uniformly, and a training crop that contains the centroid. The control (`duplicate`) repeats the
real set to the same epoch size instead ((1 + k) / 2 times: the paper's duplication, 3K ... 12K real samples
for k = 1 ... 7), so only the pseudo data differs. Every sample is augmented as the paper's students are:
scale, crop, flip, Gaussian blur (pssl.data.transforms' draw) and colour jitter 0.1. Every draw depends only
on (seed, epoch, index), so a resumed student sees the same samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pssl.data.downstream import IGNORE, SegmentationSet
from pssl.data.finetune_set import FinetuneDataset
from pssl.data.transforms import CropAugment, augment
from pssl.errors import InputError
from pssl.tables import read_table

log = logging.getLogger(__name__)
CENTROID_COLUMNS = ["relpath", "class", "y", "x", "pixels"]  # a teacher's centroids.parquet (pssl.selftrain.teacher)
JITTER = (0.1, 0.1, 0.1, 0.1)  # Zhu et al.'s "color jittering (0.1)": brightness, contrast, saturation, hue


class PseudoPool:
    """The pseudo-labelled pool of one teacher (all parts of its inference): images, label PNGs, centroids."""

    def __init__(self, tables: list[str], dataset: str):
        self.images: list[tuple[Path, Path]] = []
        centroids = []
        for table_path in map(Path, tables):
            table, meta = read_table(table_path)
            if meta["dataset"] != dataset:
                raise InputError(f"{table_path} holds pseudo labels of {meta['dataset']}, not {dataset}")
            done = table[table["status"] == "done"]
            first = len(self.images)
            number = {relpath: first + n for n, relpath in enumerate(done["relpath"])}
            self.images += [(Path(meta["pool"]) / r, table_path.parent / label)
                            for r, label in zip(done["relpath"], done["label"])]
            frame = read_table(table_path.parent / "centroids.parquet")[0][CENTROID_COLUMNS]
            frame = frame[frame["relpath"].isin(number)]
            centroids.append(np.column_stack([frame["relpath"].map(number), frame["class"], frame["y"], frame["x"]]))
        merged = np.concatenate(centroids) if centroids else np.zeros((0, 4))
        self.by_class = {int(c): merged[merged[:, 1] == c] for c in np.unique(merged[:, 1])}
        if not self.by_class:
            raise InputError(f"the pseudo labels of {', '.join(tables)} hold no labelled pixel")
        self.classes = sorted(self.by_class)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, tuple[float, float]]:
        """(class, image number, centroid (y, x)) of one class-uniform pseudo sample."""
        klass = self.classes[int(rng.integers(len(self.classes)))]
        rows = self.by_class[klass]
        image, _, y, x = rows[int(rng.integers(len(rows)))]
        return klass, int(image), (float(y), float(x))


class StudentDataset(FinetuneDataset):
    """An epoch of (1 + k) h samples, h = half the real set (rounded up): with a pool, indices [0, h) are this
    epoch's real half and [h, (1 + k) h) pseudo samples; without one (the control), the real set repeated."""

    def __init__(self, real: SegmentationSet, pool: PseudoPool | None, multiplier: int, crop: int, base_size: int,
                 seed: int):
        super().__init__(real, crop, base_size, seed)
        # Blur and colour jitter besides the fine-tuning's scale, crop and flip; no rotation, so a crop keeps the
        # centroid it was drawn around.
        self.transform = CropAugment(crop, mask_fill=IGNORE, base_size=base_size, long_side=True, degrees=0.0,
                                     jitter=JITTER)
        self.pool, self.multiplier, self.half = pool, multiplier, (len(real) + 1) // 2
        self.set_epoch(0)
        log.info(f"student set: {len(self)} samples per epoch: "
                 + (f"{self.half} of {len(real)} real + {multiplier} x {self.half} pseudo (class-uniform over "
                    f"{len(pool.classes)} classes, {len(pool.images)} pool images)" if pool else
                    f"the {len(real)} real ones repeated (control)"))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        # the epoch's real half: from the seed and the epoch alone, so every k trains on the same real samples
        self.real_half = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))[:self.half]

    def __len__(self) -> int:
        return self.half * (1 + self.multiplier)

    def __getitem__(self, i: int):
        if self.pool is None:
            return self.real_sample(i % len(self.data), i)
        if i < self.half:
            return self.real_sample(int(self.real_half[i]), i)
        _, image, centre = self.pool.draw(np.random.default_rng([self.seed, self.epoch, i]))
        path, label_path = self.pool.images[image]
        labels = np.asarray(Image.open(label_path))
        return augment(self.transform, path, labels, self.seed, self.epoch, i, centre=centre)
