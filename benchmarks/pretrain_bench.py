"""Pre-training throughput: this pipeline's training loop (pssl.train.loop.fit) against a plain fp32 loop
of the same model, on synthetic batches at the training crop.

  python benchmarks/pretrain_bench.py --head pspnet --backbone resnet10t --crop 48 --batch 16 --steps 10
  python benchmarks/pretrain_bench.py --head pspnet --backbone resnet50 --crop 256 --batch 16 --device cuda

On CUDA the loop runs bf16 autocast + channels_last; the plain loop stays fp32 (NCHW).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from pssl.data.pseudo import PSEUDO_IGNORE
from pssl.device import resolve_device
from pssl.distributed import DistInfo
from pssl.models.segmenter import build_segmenter
from pssl.settings import TrainSettings
from pssl.train.loop import fit
from pssl.train.losses import class_weights


class RandomSegmentation(torch.utils.data.Dataset):
    def __init__(self, n: int, crop: int, classes: int):
        self.n, self.crop, self.classes = n, crop, classes

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return (torch.rand(3, self.crop, self.crop, generator=g),
                torch.randint(0, self.classes, (self.crop, self.crop), generator=g))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, data, batch, steps, dev) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, drop_last=True)
    model.to(dev).train()
    done, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 1:  # first step is warm-up
            sync(dev)
            start = time.perf_counter()
        out = model(x.to(dev))
        loss = F.cross_entropy(out["out"], y.to(dev)) + 0.4 * F.cross_entropy(out["aux"], y.to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += i >= 1
        if done == steps:
            break
    sync(dev)
    return done * batch / (time.perf_counter() - start)


def our_loop(model, data, batch, steps, dev) -> float:
    params = TrainSettings(epochs=1, batch_size=batch, lr=0.01, checkpoint_every=10 ** 9)
    info = DistInfo(0, 1, 0, dev)
    warm = torch.utils.data.Subset(data, range(batch))
    warm.set_epoch = lambda e: None
    weight = class_weights(data.classes, data.classes - 1, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, warm, weight, params, f"{tmp}/warm", info, ignore_index=PSEUDO_IGNORE)
        timed = torch.utils.data.Subset(data, range(steps * batch))
        timed.set_epoch = lambda e: None
        sync(dev)
        start = time.perf_counter()
        fit(model, timed, weight, params, f"{tmp}/run", info, ignore_index=PSEUDO_IGNORE)
        sync(dev)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="pspnet")
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    data = RandomSegmentation((args.steps + 1) * args.batch, args.crop, args.classes)
    torch.manual_seed(0)
    plain = plain_loop(build_segmenter(args.head, args.backbone, args.classes), data, args.batch, args.steps, dev)
    torch.manual_seed(0)
    ours = our_loop(build_segmenter(args.head, args.backbone, args.classes), data, args.batch, args.steps, dev)
    print(f"{args.head}-{args.backbone} crop {args.crop} batch {args.batch} on {dev} "
          f"(torch threads {torch.get_num_threads()})")
    print(f"plain fp32 loop : {plain:8.2f} images/s")
    print(f"pssl loop       : {ours:8.2f} images/s  ({ours / plain:.2f}x)")


if __name__ == "__main__":
    main()
