"""How many noisy copies of each image go through a classifier at once (`explain.sample_chunk: auto`).

The chunk is chosen per model, on the job's device, in two steps:
1. memory: the activations autograd saves for one noisy sample are counted (saved-tensor hooks on a
   one-image forward, in the job's precision) and every chunk whose batch x chunk x that size, plus a
   quarter for the gradients in flight, exceeds the budget is ruled out;
2. speed: the fitting chunks are timed on the job's first images, smallest first, and the fastest wins.
   Bigger is not always faster: on a CPU at 224 px, 80 samples per forward ran 2x slower than 10
   (benchmarks/README.md), so the search stops once a chunk is clearly slower than the best so far.

The noise does not depend on the chunk (`smoothgrad`), so this choice changes the speed, not the store.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pssl.device import autocast
from pssl.explain.smoothgrad import TargetScore, smoothgrad

log = logging.getLogger(__name__)

IN_FLIGHT = 1.25  # gradients of the activations coexist with the saved ones during the backward pass
SLOWER = 0.9  # a chunk below this fraction of the best throughput ends the search


@dataclass(frozen=True)
class ChunkChoice:
    chunk: int
    saved_mb_per_sample: float
    budget_gb: float
    samples_per_s: dict[int, float]  # measured throughput of each chunk tried

    def record(self) -> dict:
        """JSON-ready (zarr attrs keys must be strings)."""
        return {**asdict(self), "samples_per_s": {str(k): v for k, v in self.samples_per_s.items()}}


def host_memory_bytes() -> int:
    """Memory this process may use: the smallest of the node's available memory and the SLURM job's
    allocation (per node, or per CPU x CPUs)."""
    limits = []
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    if os.environ.get("SLURM_MEM_PER_NODE"):
        limits.append(int(os.environ["SLURM_MEM_PER_NODE"]) << 20)
    elif os.environ.get("SLURM_MEM_PER_CPU") and os.environ.get("SLURM_CPUS_ON_NODE"):
        limits.append(int(os.environ["SLURM_MEM_PER_CPU"]) * int(os.environ["SLURM_CPUS_ON_NODE"]) << 20)
    return min(limits) if limits else 8 << 30


def memory_budget_bytes(device: torch.device, budget_gb: float) -> int:
    """The activation budget: `budget_gb` if set, else 80% of the GPU's free memory or half of the host's."""
    if budget_gb > 0:
        return int(budget_gb * (1 << 30))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    return host_memory_bytes() // 2


def saved_bytes(scorer: TargetScore, images: torch.Tensor, target: int, bf16: bool) -> int:
    """Bytes autograd keeps for the backward pass of one forward of `images`."""
    weights = {p.untyped_storage().data_ptr() for p in scorer.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = images.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(images.device,
                                                                               "bf16" if bf16 else "fp32"):
        scorer(x)[:, target].sum()
    return sum(seen.values())


def saved_bytes_per_sample(scorer: TargetScore, images: torch.Tensor, targets: torch.Tensor, bf16: bool) -> int:
    """Bytes one more noisy sample adds: the saved activations of a 2-image forward minus a 1-image one (what
    does not grow with the batch, such as bf16 copies of the weights, cancels), plus the sample's noisy
    input and its gradients."""
    pair = images[:1].repeat(2, 1, 1, 1)
    if images.is_contiguous(memory_format=torch.channels_last):
        pair = pair.contiguous(memory_format=torch.channels_last)
    target = int(targets[0])
    one_input = images[:1].numel() * images.element_size()
    return saved_bytes(scorer, pair, target, bf16) - saved_bytes(scorer, pair[:1], target, bf16) + 3 * one_input


def candidates(n_samples: int) -> list[int]:
    """1, 2, 4, ... up to n_samples, and n_samples itself."""
    out, k = [], 1
    while k < n_samples:
        out.append(k)
        k *= 2
    return out + [n_samples]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_chunk(scorer: TargetScore, images: torch.Tensor, targets: torch.Tensor, n_samples: int,
                 noise_level: float, bf16: bool, budget_bytes: int) -> ChunkChoice:
    """The fastest chunk that fits `budget_bytes`, timed on `images` (the job's first batch)."""
    per_sample = saved_bytes_per_sample(scorer, images, targets, bf16)
    fitting = [k for k in candidates(n_samples) if k * images.shape[0] * per_sample * IN_FLIGHT <= budget_bytes]
    if not fitting:
        raise MemoryError(
            f"one noisy sample of {images.shape[0]} images needs {images.shape[0] * per_sample * IN_FLIGHT / 2**30:.1f}"
            f" GiB of activations, more than the budget of {budget_bytes / 2**30:.1f} GiB: lower explain.batch_size"
            f" or raise explain.memory_budget_gb")
    speeds: dict[int, float] = {}
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        smoothgrad(scorer, images, targets, fitting[0], noise_level, fitting[0], bf16)  # warm-up
        for k in fitting:
            _synchronize(images.device)
            start = time.perf_counter()
            smoothgrad(scorer, images, targets, k, noise_level, k, bf16)
            _synchronize(images.device)
            speeds[k] = round(k * images.shape[0] / (time.perf_counter() - start), 2)
            if speeds[k] < SLOWER * max(speeds.values()):
                break
    best = max(speeds, key=speeds.get)
    return ChunkChoice(best, round(per_sample / 2**20, 2), round(budget_bytes / 2**30, 2), speeds)


def resolve_chunks(names: list[str], scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                   setting: int | str, n_samples: int, noise_level: float, bf16: bool, budget_gb: float,
                   known: dict | None = None) -> dict[str, dict]:
    """Per model: {"chunk": k, ...}. A number is used as given; 'auto' measures, unless `known` (a resumed
    store's record) already holds the model's choice."""
    if setting != "auto":
        return {name: {"chunk": min(int(setting), n_samples)} for name in names}
    budget = memory_budget_bytes(images.device, budget_gb)
    chosen = {}
    for name, scorer in zip(names, scorers):
        if known and name in known:
            chosen[name] = known[name]
            continue
        choice = choose_chunk(scorer, images, targets, n_samples, noise_level, bf16, budget)
        log.info(f"{name}: {choice.chunk} noisy samples per image and forward ({choice.saved_mb_per_sample} MB "
                 f"saved per sample, budget {choice.budget_gb} GiB; samples/s by chunk {choice.samples_per_s})")
        chosen[name] = choice.record()
    return chosen
