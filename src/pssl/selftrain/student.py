"""The self-training student's training set: the real training set + k x as many pseudo samples per epoch.

Pseudo samples are drawn class-uniformly by centroid (Zhu et al. with NVIDIA's uniform sampler): a class
uniformly among the classes the teacher found in the pool, one of that class's centroids uniformly, and a
training crop that contains the centroid. The control (`duplicate`) repeats the real set instead, so an epoch
has the same size and only the pseudo data differs. Every draw depends only on (seed, epoch, index), so a
resumed student sees the same samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pssl.data.downstream import SegmentationSet
from pssl.data.transforms import augment
from pssl.selftrain.teacher import CENTROID_COLUMNS
from pssl.tables import read_table
from pssl.train.finetune import FinetuneDataset

log = logging.getLogger(__name__)


class PseudoPool:
    """The pseudo-labelled pool of one teacher (all parts of its inference): images, label PNGs, centroids."""

    def __init__(self, tables: list[str], dataset: str):
        self.images: list[tuple[Path, Path]] = []
        centroids = []
        for table_path in map(Path, tables):
            table, meta = read_table(table_path)
            if meta["dataset"] != dataset:
                raise ValueError(f"{table_path} holds pseudo labels of {meta['dataset']}, not {dataset}")
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
            raise ValueError(f"the pseudo labels of {', '.join(tables)} hold no labelled pixel")
        self.classes = sorted(self.by_class)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, tuple[float, float]]:
        """(class, image number, centroid (y, x)) of one class-uniform pseudo sample."""
        klass = self.classes[int(rng.integers(len(self.classes)))]
        rows = self.by_class[klass]
        image, _, y, x = rows[int(rng.integers(len(rows)))]
        return klass, int(image), (float(y), float(x))


class StudentDataset(FinetuneDataset):
    """Indices [0, n) are the real set; [n, (1 + k) n) pseudo samples (or, without a pool, the real set again)."""

    def __init__(self, real: SegmentationSet, pool: PseudoPool | None, multiplier: int, crop: int, base_size: int,
                 seed: int):
        super().__init__(real, crop, base_size, seed)
        self.pool, self.multiplier = pool, multiplier
        log.info(f"student set: {len(real)} real + {multiplier} x {len(real)} "
                 + (f"pseudo samples per epoch (class-uniform over {len(pool.classes)} classes, {len(pool.images)} "
                    f"pool images)" if pool else "duplicated real samples per epoch (control)"))

    def __len__(self) -> int:
        return len(self.data) * (1 + self.multiplier)

    def __getitem__(self, i: int):
        n = len(self.data)
        if i < n or self.pool is None:
            return self.real_sample(i % n, i)
        _, image, centre = self.pool.draw(np.random.default_rng([self.seed, self.epoch, i]))
        path, label_path = self.pool.images[image]
        labels = np.asarray(Image.open(label_path))
        return augment(self.transform, path, labels, self.seed, self.epoch, i, centre=centre)
