"""A downstream dataset's training set as fine-tuning reads it: the long side scaled to a random length in
[0.5, 2] x base size, a padded random crop (labels padded with ignore), a flip; every draw from (seed, epoch,
index), so a resumed job sees the same crops."""

from __future__ import annotations

import torch

from pssl.data.downstream import IGNORE, SegmentationSet
from pssl.data.transforms import CropAugment, augment


class FinetuneDataset(torch.utils.data.Dataset):
    def __init__(self, data: SegmentationSet, crop: int, base_size: int, seed: int):
        self.data, self.seed, self.epoch = data, seed, 0
        self.transform = CropAugment(crop, mask_fill=IGNORE, base_size=base_size, heavy=False, long_side=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.real_sample(i, i)

    def real_sample(self, image: int, index: int):
        """Training image `image`, augmented as sample `index` of the epoch."""
        rgb, labels = self.data.read(image)
        return augment(self.transform, rgb, labels, self.seed, self.epoch, index)
