"""Explain stage speed: this pipeline's batched path against the naive use of captum.

Naive: one `NoiseTunnel(Saliency(model)).attribute` call per image and model, captum defaults apart from
nt_samples and abs=False, fp32, parameters left trainable (so autograd also computes weight gradients).
Ours: `pssl.explain.run.explain_batch`: frozen parameters, several images per batch, noisy samples in chunks,
bf16 + channels_last on CUDA.

Speed is measured with the real noise; decile agreement with identical noise (noise_level 0 on both sides:
CLARIFICATIONS.md), so it tests the arithmetic, not the random numbers.

  python benchmarks/explain_bench.py --zoo results/zoo --index results/index.parquet --images 32
  python benchmarks/explain_bench.py --arch resnet50 ... --image-size 224 --n-samples 50 --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from captum.attr import NoiseTunnel, Saliency

from pssl.allocator import keep_freed_memory
from pssl.config import zoo_specs
from pssl.data.images import load_rgb, resize_square
from pssl.device import precision_for, resolve_device
from pssl.explain.deciles import to_deciles
from pssl.explain.run import explain_batch
from pssl.explain.smoothgrad import TargetScore, saliency_map
from pssl.models.zoo import Normalized, load_classifier
from pssl.settings import ExplainSettings
from pssl.tables import read_table


def load_images(index: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    frame, meta = read_table(index)
    frame = frame[frame["class_idx"] >= 0].iloc[:: max(1, len(frame) // n)].iloc[:n]
    x = torch.stack([torch.from_numpy(resize_square(load_rgb(Path(meta["root"]) / r), size).copy()).permute(2, 0, 1)
                     for r in frame["relpath"]]).float() / 255
    return x, torch.tensor(frame["class_idx"].to_numpy(), dtype=torch.long)


def models_from(args, dev) -> list[TargetScore]:
    if args.zoo:
        # The ensemble members of the config, in its order (zoo/ also holds init-only classifiers).
        members = list(zoo_specs(yaml.safe_load(Path(args.config).read_text()), ensemble_only=True))
        return [TargetScore(load_classifier(Path(args.zoo) / f"{name}.pt", dev)[0])
                for name in members[: args.models]]
    import timm
    scorers = []
    for arch in args.arch:
        m = timm.create_model(arch, pretrained=False, num_classes=args.num_classes)
        cfg = timm.data.resolve_model_data_config(m)
        model = Normalized(m, cfg["mean"], cfg["std"]).eval().to(dev)
        for p in model.parameters():
            p.requires_grad_(False)
        scorers.append(TargetScore(model))
    return scorers


def naive(scorers, images, targets, n_samples, noise_level) -> torch.Tensor:
    """One captum call per image and model; the models' parameters are left trainable as users leave them."""
    for s in scorers:
        for p in s.parameters():
            p.requires_grad_(True)
    ensemble = torch.zeros(images.shape[0], images.shape[2], images.shape[3], device=images.device)
    for i in range(images.shape[0]):
        for s in scorers:
            g = NoiseTunnel(Saliency(s)).attribute(images[i:i + 1], nt_type="smoothgrad", nt_samples=n_samples,
                                                   stdevs=noise_level, target=int(targets[i]), abs=False)
            ensemble[i] += saliency_map(g.float())[0]
    for s in scorers:
        for p in s.parameters():
            p.requires_grad_(False)
    return to_deciles(ensemble / len(scorers))


def ours(scorers, images, targets, params: ExplainSettings, bf16: bool, channels_last: bool = False) -> torch.Tensor:
    """channels_last inputs on CUDA always, on CPU with --channels-last (models converted to match)."""
    out = []
    channels_last = channels_last or images.is_cuda
    for i in range(0, images.shape[0], params.batch_size):
        x = images[i:i + params.batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(explain_batch(scorers, x, targets[i:i + params.batch_size], params, bf16)[0])
    return torch.cat(out)


def timed(fn, dev) -> tuple[float, torch.Tensor]:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", help="directory of zoo/*.pt (trained demo zoo)")
    p.add_argument("--config", default="config.yaml", help="with --zoo: the config whose ensemble to load")
    p.add_argument("--arch", nargs="+", default=[], help="timm names (random init) when no --zoo")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--models", type=int, default=15)
    p.add_argument("--index", required=True)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--noise-level", type=float, default=0.15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sample-chunk", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--allocator", choices=["keep", "default"], default="keep",
                   help="keep: glibc keeps freed buffers, as every pssl command sets it; default: glibc's own")
    p.add_argument("--bf16", action="store_true", help="also measure the bf16 path where auto would not pick it")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs on CPU too")
    args = p.parse_args()
    if args.allocator == "keep":
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    scorers = models_from(args, dev)
    if args.channels_last:
        scorers = [s.to(memory_format=torch.channels_last) for s in scorers]
    images, targets = load_images(args.index, args.images, args.image_size)
    images, targets = images.to(dev), targets.to(dev)
    targets = targets % scorers[0].classifier.model.num_classes if not args.zoo else targets
    params = ExplainSettings(image_size=args.image_size, n_samples=args.n_samples, noise_level=args.noise_level,
                             batch_size=args.batch_size, sample_chunk=args.sample_chunk)
    n_units = images.shape[0] * len(scorers)
    print(f"{images.shape[0]} images x {len(scorers)} models, S={args.image_size}, n_samples={args.n_samples}, "
          f"device {dev}, torch threads {torch.get_num_threads()}")

    ours(scorers, images[:2], targets[:2], params, False, args.channels_last)  # warm-up
    torch.manual_seed(0)
    t_naive, _ = timed(lambda: naive(scorers, images, targets, args.n_samples, args.noise_level), dev)
    torch.manual_seed(0)
    t_ours, _ = timed(lambda: ours(scorers, images, targets, params, False, args.channels_last), dev)
    print(f"naive captum fp32 : {n_units / t_naive:8.2f} images x models / s  ({t_naive:.1f} s)")
    print(f"pssl fp32         : {n_units / t_ours:8.2f} images x models / s  ({t_ours:.1f} s)  "
          f"speed-up {t_naive / t_ours:.2f}x")

    exact = ExplainSettings(**{**params.__dict__, "noise_level": 0.0})
    ref = naive(scorers, images, targets, args.n_samples, 0.0)
    got = ours(scorers, images, targets, exact, False, args.channels_last)
    print(f"decile agreement fp32 vs naive (identical noise): {(ref == got).float().mean().item() * 100:.3f}%")

    if args.bf16 or precision_for(dev, training=False) == "bf16":
        torch.manual_seed(0)
        t_bf16, _ = timed(lambda: ours(scorers, images, targets, params, True, args.channels_last), dev)
        print(f"pssl bf16         : {n_units / t_bf16:8.2f} images x models / s  ({t_bf16:.1f} s)  "
              f"speed-up {t_naive / t_bf16:.2f}x over naive")
        low = ours(scorers, images, targets, exact, True, args.channels_last)
        d9_ref, d9_low = got == 9, low == 9
        iou = ((d9_ref & d9_low).sum() / (d9_ref | d9_low).sum()).item()
        print(f"bf16 vs fp32 (identical noise): decile agreement {(low == got).float().mean().item() * 100:.3f}%, "
              f"D9 IoU {iou:.4f}")


if __name__ == "__main__":
    main()
