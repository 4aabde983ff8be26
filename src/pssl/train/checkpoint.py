"""Checkpoints: `ckpt-<step>.pt` written atomically; the newest is where a restarted job resumes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pssl.io import atomic_file

KEEP = 2


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, state: dict) -> Path:
    directory = Path(directory)
    path = directory / f"ckpt-{step:09d}.pt"
    with atomic_file(path) as tmp:
        torch.save({**state, "rng": rng_state()}, tmp)
    for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP]:
        old.unlink()
    return path


def remove_checkpoints(directory: str | Path) -> None:
    """Drop the resume checkpoints of a finished job (model + optimizer state: twice the weights' size)."""
    for path in Path(directory).glob("ckpt-*.pt"):
        path.unlink()


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = sorted(Path(directory).glob("ckpt-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
