"""Device and precision: the same code on CPU (fp32) and CUDA (bf16 or fp16 autocast, channels_last; TF32 only
where chosen, `cuda_fp32_math`)."""

from __future__ import annotations

import contextlib
import os

import torch

from pssl.errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def choose_precision(requested: str, device_type: str, capability: tuple[int, int] | None,
                     training: bool) -> str:
    """'fp32', 'bf16' or 'fp16' for `requested` ('auto' or one of those) on a device.

    auto: bf16 only where it is native (CUDA compute capability 8.0+: A100, H100; a V100 reports bf16 support
    through emulation, and its bf16 convolutions are very slow); on older GPUs fp16 with loss scaling for
    training and fp32 for input gradients (explain), which fp16 would underflow; fp32 on CPU.
    """
    if requested == "fp16" and (device_type != "cuda" or not training):
        raise InputError("precision fp16 is for training on CUDA (with loss scaling); use fp32 or bf16")
    if requested != "auto":
        return requested
    if device_type != "cuda":
        return "fp32"
    if capability is not None and capability >= (8, 0):
        return "bf16"
    return "fp16" if training else "fp32"


def precision_for(device: torch.device, requested: str = "auto", training: bool = True) -> str:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision(requested, device.type, capability, training)


def native_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in hardware: CUDA compute capability 8.0+, or a CPU with AVX512-BF16 or AMX-BF16
    (read from /proc/cpuinfo; oneDNN emulates bf16 on other AVX-512 CPUs, slowly)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def reduced_precisions(device_type: str, capability: tuple[int, int] | None, cpu_bf16: bool) -> list[str]:
    """The faster arithmetics `explain.precision: auto` may measure against fp32, in order of nominal speed:
    bf16 and TF32 on CUDA compute capability 8.0+ (both run on its tensor cores), bf16 on a CPU with native
    bf16; none elsewhere (a V100's bf16 is emulated; TF32 exists on NVIDIA GPUs only)."""
    if device_type == "cuda":
        return ["bf16", "tf32"] if capability is not None and capability >= (8, 0) else []
    return ["bf16"] if cpu_bf16 else []


def explain_candidates(device: torch.device) -> list[str]:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return reduced_precisions(device.type, capability, device.type == "cpu" and native_bf16(device))


@contextlib.contextmanager
def cuda_fp32_math(mode: str):
    """What an fp32 convolution or matmul computes on CUDA, set explicitly for the block: 'ieee' (true fp32)
    or 'tf32' (TensorFloat-32 tensor cores on compute capability 8.0+: inputs rounded to a 10-bit mantissa,
    fp32 accumulation). PyTorch's own defaults differ by op (cuDNN convolutions TF32, cuBLAS matmuls IEEE), so
    "fp32" would otherwise mean TF32 convolutions on an A100 or H100 without anyone choosing it. Set through
    the allow_tf32 flags, which every torch the package supports has and which torch (2.9+) keeps in step
    with its newer fp32_precision flags: setting only the newer matmul flag makes cuBLAS raise at its first
    fp32 matmul ("a mix of the legacy and new APIs"). Where the newer flags exist, 'ieee' also pins cuDNN's
    own, which would otherwise fall back to a process-wide torch.backends.fp32_precision. The flags are
    process-wide and CUDA-only: on a CPU they change no result."""
    if mode not in ("ieee", "tf32"):
        raise InputError(f"fp32 math must be 'ieee' or 'tf32', got {mode!r}")
    backends = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [backend.allow_tf32 for backend in backends]
    for backend in backends:
        backend.allow_tf32 = mode == "tf32"
    if mode == "ieee" and hasattr(torch.backends.cudnn, "conv"):
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, allowed in zip(backends, before):
            backend.allow_tf32 = allowed


def autocast(device: torch.device, precision: str):
    """Autocast context for 'bf16' / 'fp16'; none for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def set_threads(threads: int | None) -> None:
    """Match torch's intra-op threads to the cores the scheduler gave this job."""
    if threads:
        torch.set_num_threads(threads)


def allocation() -> str:
    """The GPUs the scheduler gave this job, for the job's log."""
    return f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}"
