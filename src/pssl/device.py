"""Device and precision: the same code on CPU (fp32) and CUDA (bf16 autocast, channels_last)."""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast only where CUDA is present (precision 'auto'), or when asked for explicitly."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    return device.type == "cuda"


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def set_threads(threads: int | None) -> None:
    """Match torch's intra-op threads to the cores the scheduler gave this job."""
    if threads:
        torch.set_num_threads(threads)


def allocation() -> str:
    """The GPUs the scheduler gave this job, for the job's log."""
    return f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}"
