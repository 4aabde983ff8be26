"""Training run used by test_pretrain.py: launched as one process, or under torchrun with several ranks.

    python tests/ddp_worker.py OUT.pt CKPT_DIR [--epochs N]

A real PSPNet on a small synthetic segmentation set; dropout off and BatchNorm frozen so that N ranks with a
global batch B compute exactly what one process with batch B computes (SyncBatchNorm has no CPU path).
"""

import argparse

import torch
import torch.nn as nn

from pssl.cli import configure_logging
from pssl.models.segmenter import build_segmenter
from pssl.settings import TrainSettings
from pssl.train.distributed import init_distributed, shutdown
from pssl.train.loop import fit
from pssl.train.losses import class_weights


class SyntheticSegmentation(torch.utils.data.Dataset):
    """Deterministic images with a bright square labelled 1 on background 2 (3 outputs)."""

    def __init__(self, n: int = 16, size: int = 32):
        self.n, self.size = n, size

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, self.size, self.size, generator=g) * 0.5
        mask = torch.full((self.size, self.size), 2, dtype=torch.long)
        y, x = torch.randint(0, self.size - 12, (2,), generator=g).tolist()
        image[:, y:y + 12, x:x + 12] += 0.5
        mask[y:y + 12, x:x + 12] = 1
        mask[:2] = -1  # an ignored band
        return image, mask


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("ckpt_dir")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    args = p.parse_args()
    configure_logging()
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = build_segmenter("pspnet", "resnet10t", 3)
    for m in model.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    params = TrainSettings(epochs=args.epochs, batch_size=4, lr=0.02, schedule="step", milestone=1,
                           checkpoint_every=args.checkpoint_every, freeze_bn=True, seed=0)
    model = fit(model, SyntheticSegmentation(), class_weights(3, 2, 0.1), params, args.ckpt_dir, info,
                ignore_index=-1)
    if info.main:
        torch.save(model.state_dict(), args.out)
    del model
    shutdown(info)


if __name__ == "__main__":
    main()
