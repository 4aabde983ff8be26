"""A shard's images in fixed batches, decoded at S x S: what the explain and label stages read.

JPEGs are decoded at the smallest DCT scale that is still at least S x S (PIL draft), then resized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pssl.data.images import UnreadableImage, load_square


class ShardBatches(torch.utils.data.Dataset):
    """Batch i = rows [i*B, (i+1)*B) of the shard, decoded at S x S; runs in DataLoader workers."""

    def __init__(self, root: Path, relpaths: list[str], batch_size: int, image_size: int, batches: list[int]):
        self.root, self.relpaths, self.batches = root, relpaths, batches
        self.batch_size, self.size = batch_size, image_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        start = self.batches[i] * self.batch_size
        stop = min(start + self.batch_size, len(self.relpaths))
        pixels, hw, reasons = [], np.zeros((stop - start, 2), dtype=np.int32), {}
        for j in range(start, stop):
            try:
                square, hw[j - start] = load_square(self.root / self.relpaths[j], self.size)
            except UnreadableImage as e:
                reasons[j - start] = str(e)
                continue
            pixels.append(torch.from_numpy(square.copy()).permute(2, 0, 1))
        images = torch.stack(pixels) if pixels else torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8)
        return start, stop, images, hw, reasons
