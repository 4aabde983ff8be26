"""Checkpoints: `ckpt-<step>.pt` written atomically; the newest is where a restarted job resumes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pssl.io import atomic_file

KEEP = 2


def rng_state(device: torch.device) -> dict:
    """This process's RNG state: CPU generators, and the CUDA generator of its own device only. Tensors and
    plain types only (numpy's key array as a tensor), so that checkpoints load with weights_only=True."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)


def rank_rng_state(saved: list[dict], rank: int) -> dict:
    """The saved state of `rank` (one per rank of the saving run). A rerun with another number of ranks
    (fewer GPUs visible, a changed count) reuses the states cyclically: it trains on, but its random
    streams (dropout) differ from an uninterrupted run."""
    return saved[rank % len(saved)]


def save_checkpoint(directory: str | Path, step: int, state: dict) -> Path:
    """`state` holds "rng": a list with every rank's rng_state (gathered by the caller)."""
    directory = Path(directory)
    path = directory / f"ckpt-{step:09d}.pt"
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP]:
        old.unlink()
    return path


def remove_checkpoints(directory: str | Path) -> None:
    """Drop the resume checkpoints of a finished job (model + optimizer state: twice the weights' size)."""
    for path in Path(directory).glob("ckpt-*.pt"):
        path.unlink()


FINAL_STATE = "state.pt"  # a finished pre-training's last checkpoint: what a continuation trains on from


def keep_final_state(directory: str | Path) -> Path:
    """The newest checkpoint (a finished run's: its last step) becomes `state.pt`, the others are removed (a
    rerun that resumed from state.pt at its end wrote none: state.pt stays)."""
    directory = Path(directory)
    newest = latest_checkpoint(directory)
    if newest is None:
        if (directory / FINAL_STATE).exists():
            return directory / FINAL_STATE
        raise FileNotFoundError(f"{directory}: no checkpoint to keep as {FINAL_STATE}")
    final = newest.replace(directory / FINAL_STATE)
    remove_checkpoints(directory)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = sorted(Path(directory).glob("ckpt-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
