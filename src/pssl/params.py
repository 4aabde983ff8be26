"""Parameters of the explain and training jobs, shared by the CLI, the workflow and the library.

Kept free of torch so that `pssl --help`, light subcommands and Snakemake's DAG building start fast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExplainParams:
    image_size: int = 64
    n_samples: int = 8
    noise_level: float = 0.15
    output: str = "prob"        # prob | logit
    target: str = "class"       # class | top1 (the zoo's top-1; unlabelled rows always use it)
    batch_size: int = 16        # images per batch
    sample_chunk: int = 8       # noisy copies per image per forward pass
    keep_model_deciles: bool = False
    seed: int = 0
    precision: str = "auto"     # auto (bf16 on GPUs with native bf16, else fp32) | fp32 | bf16


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 30
    batch_size: int = 64          # global batch, split evenly over the ranks
    lr: float = 0.01
    backbone_lr_mult: float = 1.0  # the backbone trains at lr x this (PaddleSeg's relative_lr)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"        # step (paper pre-training) | poly
    milestone: int = 20           # step schedule: epoch where lr is multiplied by gamma
    gamma: float = 0.1
    aux_weight: float = 0.4
    checkpoint_every: int = 100   # steps; a checkpoint is also written at every epoch end
    num_workers: int = 0
    sync_bn: bool = False         # CUDA only (torch's SyncBatchNorm has no CPU implementation)
    freeze_bn: bool = False       # BatchNorm uses its running statistics (small per-GPU batches)
    precision: str = "auto"       # auto: bf16 where native, fp16 + loss scaling on older GPUs, fp32 on CPU
    seed: int = 0
