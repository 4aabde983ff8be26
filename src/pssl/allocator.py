"""glibc's allocator tuned for large tensor work (torch-free: the CLI calls it before importing torch)."""

from __future__ import annotations

# glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh mmap
# and unmaps it on free, so each forward / backward of a large batch faults its activations in page by page.
# Measured here (resnet50, 40 images at 224 px, input gradients, 2 threads): 6.69 s per step with 3.89 s of
# it in the kernel and 1.30 M page faults; with both thresholds at 1 GiB 4.33 s, 0.57 s, 47 k faults, peak
# RSS 4.5 -> 5.0 GB (benchmarks/README.md).
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory(threshold: int = KEEP_FREED_BYTES) -> bool:
    """Make glibc keep freed buffers below `threshold` for reuse instead of returning them to the OS
    (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). True when both were set; False off glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))
