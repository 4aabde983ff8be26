"""Explain stage speed: this pipeline's path against the naive use of captum, each in its own process.

Naive: one `NoiseTunnel(Saliency(model)).attribute` call per image and model, captum's defaults apart from
nt_samples and abs=False (all samples of an image in one forward), fp32, parameters left trainable, glibc's
default allocator: a plain script. Ours: `pssl.explain`: the allocator the `pssl` CLI sets, channels_last
and an fp32 input layer (`prepare_classifier`), frozen parameters, several images per batch, each model's
sample chunk chosen by `sample_chunk: auto`
(the choice is timed separately: a job makes it once per shard), fp32 or bf16.

Figures per path: images x models / s, kernel (sys) share of the CPU time, peak RSS, and FLOP efficiency:
FLOPs per noisy sample counted by torch.utils.flop_counter (forward + input-gradient backward) against the
machine's matmul peak for the dtype, measured in the same process. Decile agreement with naive fp32 is
measured under identical (zero) noise on 2 samples (CLARIFICATIONS.md: it tests the arithmetic, not the
random numbers); bf16 against our fp32 with identical real noise (our noise does not depend on the chunk), next
to two fp32 runs with different noise: the precision gate's two figures (pssl.explain.run.precision_gate).

  python benchmarks/explain_bench.py --arch resnet50 efficientnet_b0 convnext_tiny --index results/index.parquet \\
      --images 4 --image-size 224 --n-samples 50 --batch-size 4 --threads 2
  python benchmarks/explain_bench.py --zoo results/zoo --index results/index.parquet --images 16 --image-size 48
  python benchmarks/explain_bench.py --flops-only --arch resnet50 vgg16_bn ...   # FLOPs per sample, no timing
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pssl.allocator import keep_freed_memory
from pssl.config import zoo_specs
from pssl.data.images import load_square
from pssl.device import resolve_device
from pssl.explain.chunking import resolve_chunks
from pssl.explain.deciles import to_deciles
from pssl.explain.run import d9_iou, explain_batch, precision_gate
from pssl.explain.smoothgrad import TargetScore, prepare_classifier, saliency_map
from pssl.models.zoo import Normalized, load_classifier
from pssl.settings import ExplainSettings
from pssl.tables import read_table


def load_images(index: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    frame, meta = read_table(index)
    frame = frame[frame["class_idx"] >= 0].iloc[:: max(1, len(frame) // n)].iloc[:n]
    x = torch.stack([torch.from_numpy(load_square(Path(meta["root"]) / r, size)[0].copy()).permute(2, 0, 1)
                     for r in frame["relpath"]]).float() / 255
    return x, torch.tensor(frame["class_idx"].to_numpy(), dtype=torch.long)


def models_from(args, dev) -> tuple[list[str], list[TargetScore]]:
    if args.zoo:
        # The ensemble members of the config, in its order (zoo/ also holds init-only classifiers).
        members = list(zoo_specs(yaml.safe_load(Path(args.config).read_text()), ensemble_only=True))[: args.models]
        return members, [TargetScore(load_classifier(Path(args.zoo) / f"{name}.pt", dev)[0]) for name in members]
    import timm
    scorers = []
    for arch in args.arch:
        torch.manual_seed(0)
        m = timm.create_model(arch, pretrained=False, num_classes=args.num_classes)
        cfg = timm.data.resolve_model_data_config(m)
        model = Normalized(m, cfg["mean"], cfg["std"]).eval().to(dev)
        for p in model.parameters():
            p.requires_grad_(False)
        scorers.append(TargetScore(model))
    return list(args.arch), scorers


def flops_per_sample(scorer: TargetScore, size: int, dev: torch.device) -> int:
    """Forward + input-gradient backward of one noisy sample (the work SmoothGrad needs: no weight gradients)."""
    from torch.utils.flop_counter import FlopCounterMode
    trainable = [p for p in scorer.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    x = torch.rand(1, 3, size, size, device=dev, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        scorer(x)[0, 0].backward()
    for p in trainable:
        p.requires_grad_(True)
    return counter.get_total_flops()


def matmul_peak(dev: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of a large square matmul: the machine's practical peak for `dtype`."""
    a, b = torch.rand(n, n, device=dev, dtype=dtype), torch.rand(n, n, device=dev, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        seconds, _ = timed(lambda: torch.mm(a, b), dev)
        best = min(best, seconds)
    return 2 * n ** 3 / best


def naive(scorers, images, targets, n_samples, noise_level) -> torch.Tensor:
    """One captum call per image and model; the models' parameters are left trainable as users leave them."""
    from captum.attr import NoiseTunnel, Saliency
    for s in scorers:
        for p in s.parameters():
            p.requires_grad_(True)
    ensemble = torch.zeros(images.shape[0], images.shape[2], images.shape[3], device=images.device)
    for i in range(images.shape[0]):
        for s in scorers:
            g = NoiseTunnel(Saliency(s)).attribute(images[i:i + 1], nt_type="smoothgrad", nt_samples=n_samples,
                                                   stdevs=noise_level, target=int(targets[i]), abs=False)
            ensemble[i] += saliency_map(g.float())[0]
    return to_deciles(ensemble / len(scorers))


def ours(scorers, images, targets, params: ExplainSettings, bf16: bool, chunks: list[int], draw: int = 0
         ) -> torch.Tensor:
    out = []
    for i in range(0, images.shape[0], params.batch_size):
        x = images[i:i + params.batch_size].contiguous(memory_format=torch.channels_last)
        torch.manual_seed(i + draw)  # as the explain job: the noise of a batch is seeded by its position
        out.append(explain_batch(scorers, x, targets[i:i + params.batch_size], params, "bf16" if bf16 else "fp32",
                                 chunks)[0])
    return torch.cat(out)


def timed(fn, dev) -> tuple[float, object]:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, result


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def run_path(args) -> dict:
    """One path in this process: its timing, CPU split, memory, FLOP efficiency and deciles."""
    if args.path != "naive":
        keep_freed_memory()  # what every pssl command does first
    dev = resolve_device(args.device)
    names, scorers = models_from(args, dev)
    if args.path != "naive":
        scorers = [TargetScore(prepare_classifier(s.classifier)) for s in scorers]
    images, targets = load_images(args.index, args.images, args.image_size)
    images, targets = images.to(dev), targets.to(dev)
    if not args.zoo:
        targets = targets % args.num_classes
    params = ExplainSettings(image_size=args.image_size, n_samples=args.n_samples, noise_level=args.noise_level,
                             batch_size=args.batch_size, sample_chunk=args.sample_chunk,
                             memory_budget_gb=args.memory_budget_gb)
    bf16 = args.path == "pssl-bf16"
    result: dict = {"path": args.path, "models": names}
    chunks: list[int] = []

    def run(noise: float, n: int) -> torch.Tensor:
        if args.path == "naive":
            return naive(scorers, images, targets, n, noise)
        settings = ExplainSettings(**{**params.__dict__, "noise_level": noise, "n_samples": n})
        return ours(scorers, images, targets, settings, bf16, [min(c, n) for c in chunks])

    if args.path == "naive":
        naive(scorers, images[:1], targets[:1], 1, args.noise_level)  # warm-up
    else:
        first = images[: args.batch_size].contiguous(memory_format=torch.channels_last)
        probe_s, chosen = timed(lambda: resolve_chunks(names, scorers, first, targets[: args.batch_size],
                                                       args.sample_chunk, args.n_samples, args.noise_level, bf16,
                                                       args.memory_budget_gb), dev)
        chunks += [chosen[n]["chunk"] for n in names]
        result.update(chunks=dict(zip(names, chunks)), chunk_search_s=round(probe_s, 1),
                      saved_mb_per_sample={n: chosen[n].get("saved_mb_per_sample") for n in names},
                      memory_budget_gb=next((c["budget_gb"] for c in chosen.values() if "budget_gb" in c), None))
    user0, sys0 = cpu_seconds()
    seconds, deciles = timed(lambda: run(args.noise_level, args.n_samples), dev)
    user1, sys1 = cpu_seconds()
    flops = sum(flops_per_sample(s, args.image_size, dev) for s in scorers)
    peak = matmul_peak(dev, torch.bfloat16 if bf16 else torch.float32)
    units = images.shape[0] * len(scorers)
    result.update(seconds=round(seconds, 2), images_x_models_per_s=round(units / seconds, 3),
                  user_s=round(user1 - user0, 1), sys_s=round(sys1 - sys0, 1),
                  kernel_share=round((sys1 - sys0) / max(user1 - user0 + sys1 - sys0, 1e-9), 3),
                  gflop_per_sample_all_models=round(flops / 1e9, 2),
                  achieved_gflops=round(flops * args.n_samples * images.shape[0] / seconds / 1e9, 1),
                  matmul_peak_gflops=round(peak / 1e9, 1))
    result["peak_fraction"] = round(result["achieved_gflops"] / result["matmul_peak_gflops"], 3)
    if dev.type == "cuda":
        result["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    np.save(Path(args.save) / f"{args.path}-noisy.npy", deciles.cpu().numpy())
    if args.path != "pssl-bf16":  # identical zero noise, 2 samples: the arithmetic against naive fp32
        np.save(Path(args.save) / f"{args.path}-exact.npy", run(0.0, 2).cpu().numpy())
    if args.path == "pssl-fp32":  # another noise draw: the method's own seed-to-seed deviation
        other = ours(scorers, images, targets, params, False, chunks, draw=10_000)
        np.save(Path(args.save) / "pssl-fp32-other.npy", other.cpu().numpy())
    return result


def flops_only(args) -> None:
    dev = resolve_device(args.device)
    names, scorers = models_from(args, dev)
    total = 0
    for name, scorer in zip(names, scorers):
        flops = flops_per_sample(scorer, args.image_size, dev)
        total += flops
        print(f"{name:40s} {flops / 1e9:8.2f} GFLOP per noisy sample (forward + input gradient)")
    print(f"{'all':40s} {total / 1e9:8.2f} GFLOP per noisy sample")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", help="directory of zoo/*.pt (trained demo zoo)")
    p.add_argument("--config", default="config.yaml", help="with --zoo: the config whose ensemble to load")
    p.add_argument("--arch", nargs="+", default=[], help="timm names (random init) when no --zoo")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--models", type=int, default=15)
    p.add_argument("--index")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n-samples", type=int, default=50)
    p.add_argument("--noise-level", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sample-chunk", default="auto", help="auto (as the pipeline) or a number")
    p.add_argument("--memory-budget-gb", type=float, default=0.0, help="0: the pipeline's default")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--paths", nargs="+", default=["naive", "pssl-fp32", "pssl-bf16"],
                   choices=["naive", "pssl-fp32", "pssl-bf16"])
    p.add_argument("--flops-only", action="store_true", help="print FLOPs per noisy sample of each --arch")
    p.add_argument("--path", help=argparse.SUPPRESS)  # internal: run one path in this process
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sample_chunk != "auto":
        args.sample_chunk = int(args.sample_chunk)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flops_only:
        return flops_only(args)
    if args.path:
        print(json.dumps(run_path(args)))
        return
    with tempfile.TemporaryDirectory() as save:
        results = {}
        for path in args.paths:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--path", path, "--save", save],
                                 capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"{path} failed:\n{out.stderr[-3000:]}")
            results[path] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(results[path]), flush=True)
        report(results, Path(save))


def report(results: dict, save: Path) -> None:
    naive_speed = results.get("naive", {}).get("images_x_models_per_s")
    print("\n| path | images x models / s | vs naive | kernel share | peak RSS GB | GFLOP/s | of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, r in results.items():
        ratio = f"{r['images_x_models_per_s'] / naive_speed:.2f}x" if naive_speed else "-"
        print(f"| {path} | {r['images_x_models_per_s']:.3f} | {ratio} | {r['kernel_share'] * 100:.1f}% | "
              f"{r['peak_rss_gb']:.1f} | {r['achieved_gflops']:.0f} | {r['peak_fraction'] * 100:.0f}% "
              f"({r['matmul_peak_gflops']:.0f}) |")
    exact = {p: np.load(save / f"{p}-exact.npy") for p in results if (save / f"{p}-exact.npy").exists()}
    if "naive" in exact and "pssl-fp32" in exact:
        print(f"decile agreement pssl fp32 vs naive fp32, identical (zero) noise: "
              f"{(exact['naive'] == exact['pssl-fp32']).mean() * 100:.3f}%")
    if "pssl-fp32" in results and "pssl-bf16" in results:
        fp32, bf16 = (torch.from_numpy(np.load(save / f"{p}-noisy.npy")) for p in ("pssl-fp32", "pssl-bf16"))
        print(f"bf16 vs fp32, identical real noise: D9 IoU {d9_iou(fp32, bf16):.4f}, decile agreement "
              f"{(fp32 == bf16).float().mean().item() * 100:.3f}%")
        other = torch.from_numpy(np.load(save / "pssl-fp32-other.npy"))
        gate = precision_gate(d9_iou(fp32, bf16), d9_iou(fp32, other))
        print(f"fp32 vs fp32, another noise draw: D9 IoU {d9_iou(fp32, other):.4f}; the gate: bf16's deviation "
              f"{gate['deviation_ratio']} of the noise's, {'passes' if gate['passed'] else 'refused'}; bf16 vs "
              f"fp32 of the other draw: D9 IoU {d9_iou(bf16, other):.4f}")


if __name__ == "__main__":
    main()
