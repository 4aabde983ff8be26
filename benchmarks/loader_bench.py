"""Data loading speed per core: pre-training samples and explain inputs from ImageNet-sized JPEGs.

Pre-training sample (crop 256, S = 224 label grid): `pssl.data.transforms.CropAugment` given the image's path
(draft decode, one affine warp of the crop, the mask sampled from the S x S grid) against the pipeline it
replaced, kept here as the baseline: full decode, the S x S labels resized to full resolution, then
torchvision v2 RandomResize (short side in [128, 512)) -> RandomRotation(10) -> RandomCrop(pad_if_needed) ->
flip -> GaussianBlur(p 0.3) -> ColorJitter on the full-size tensors.
Explain input (S = 224): full decode + resize against draft decode + resize.

The JPEGs are made from the real photos at hand (matplotlib's grace_hopper.jpg and the demo's images, cut
and scaled) at ImageNet's usual sizes (500 x 375, 375 x 500, 500 x 333, 400 x 300, 800 x 600, 1024 x 768),
quality 90, so that decoding costs what it costs on ImageNet.

  python benchmarks/loader_bench.py --images 100 --crop 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from pssl.data.images import load_rgb, load_square, resize_nearest, resize_square
from pssl.data.transforms import CropAugment, augment, sample_seed

SIZES = [(500, 375), (375, 500), (500, 333), (400, 300), (800, 600), (1024, 768)]


def make_jpegs(out: Path, n: int, demo_root: Path | None) -> list[Path]:
    sources = [Image.open(Path(matplotlib.get_data_path()) / "sample_data/grace_hopper.jpg").convert("RGB")]
    if demo_root and demo_root.exists():
        sources += [Image.open(p).convert("RGB") for p in sorted(demo_root.rglob("*.JPEG"))[:20]]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = SIZES[i % len(SIZES)]
        left, top = rng.integers(0, max(src.width // 4, 1)), rng.integers(0, max(src.height // 4, 1))
        image = src.crop((left, top, src.width, src.height)).resize((w, h), Image.BICUBIC)
        paths.append(out / f"{i:04d}.JPEG")
        image.save(paths[-1], quality=90)
    return paths


def baseline_transform(crop: int, mask_fill: int) -> v2.Compose:
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: mask_fill}
    return v2.Compose([v2.RandomResize(crop // 2, crop * 2), v2.RandomRotation(10.0, fill=fill),
                       v2.RandomCrop(crop, pad_if_needed=True, fill=fill), v2.RandomHorizontalFlip(),
                       v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
                       v2.ColorJitter(0.3, 0.3, 0.3, 0.02),
                       v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                                  scale=True)])


def baseline_sample(transform, path: Path, grid: np.ndarray, index: int):
    rgb = load_rgb(path)
    labels = resize_nearest(grid, rgb.shape[:2])
    image = tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(0, 0, index))
        return transform(image, mask)


def per_second(fn, items, repeats: int) -> float:
    fn(items[0])
    start = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            fn(item)
    return len(items) * repeats / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--grid", type=int, default=224, help="S: the label grid (the explain resolution)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--demo-root", default="data/demo/imagenet/train")
    args = p.parse_args()
    torch.set_num_threads(1)  # per core
    grid = np.random.default_rng(0).integers(0, 2, (args.grid, args.grid)) * 999
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images, Path(args.demo_root))
        items = list(enumerate(paths))
        old, new = baseline_transform(args.crop, -1), CropAugment(args.crop, mask_fill=-1)
        rates = {
            "pre-training sample, baseline (full decode, torchvision v2 on the full image)":
                per_second(lambda it: baseline_sample(old, it[1], grid, it[0]), items, args.repeats),
            "pre-training sample, pssl (draft decode, one warp of the crop)":
                per_second(lambda it: augment(new, it[1], grid, 0, 0, it[0]), items, args.repeats),
            "explain input, full decode + resize":
                per_second(lambda it: resize_square(load_rgb(it[1]), args.grid), items, args.repeats),
            "explain input, draft decode + resize (pssl)":
                per_second(lambda it: load_square(it[1], args.grid),
                           items, args.repeats),
            "decode only, full": per_second(lambda it: load_rgb(it[1]), items, args.repeats),
        }
    print(f"{args.images} JPEGs at ImageNet sizes, crop {args.crop}, label grid {args.grid}, 1 thread")
    print("| loader | images / s per core | ms / image |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {1000 / rate:.2f} |")
    names = list(rates)
    print(f"pre-training speed-up {rates[names[1]] / rates[names[0]]:.2f}x, "
          f"explain input speed-up {rates[names[3]] / rates[names[2]]:.2f}x")


if __name__ == "__main__":
    main()
