"""GPU slots of a machine without a scheduler: each GPU job holds as many device ids as it has ranks on the
node, exclusively, for as long as its process lives, and sees only those (CUDA_VISIBLE_DEVICES).

Snakemake counts GPUs (`--resources gpu=N`) but never says which ones a local job gets, so every job would
take cuda:0. A slot is a lock file held with flock(2): the kernel releases it when the last process holding
it exits, however it exits (kill -9 included), so a dead job's slots are free again and no two live jobs
ever hold the same one. The command is exec'd with the locks inherited, so the job's own process holds
them. Torch-free: it runs before every GPU job.

Inside a SLURM job the pool is that job's allocation and the locks are private to it: a group job that runs
several GPU jobs side by side (README, "Fewer, longer jobs") gives each its own GPUs of the allocation.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import subprocess
import time
from pathlib import Path

from pssl.errors import InputError

log = logging.getLogger(__name__)

POOL_ENV = "PSSL_GPU_SLOTS"        # comma-separated device ids; overrides what the machine shows
LOCK_DIR_ENV = "PSSL_GPU_LOCK_DIR"
# One directory for every run on the machine, so two pipelines (or two users) never share a GPU either. In
# /run/lock where users may write there (systemd never ages files out of it; /tmp's cleaner removes files
# older than 10 days, and a multi-day job's lock file with them), else /tmp.
RUN_LOCK = "/run/lock"


def default_lock_dir() -> str:
    base = RUN_LOCK if os.path.isdir(RUN_LOCK) and os.access(RUN_LOCK, os.W_OK | os.X_OK) else "/tmp"
    return f"{base}/pssl-gpu-slots"
POLL_SECONDS = 0.5


def split_ids(value: str) -> list[str]:
    return [d.strip() for d in value.split(",") if d.strip()]


def visible_gpus() -> list[str]:
    """Every GPU nvidia-smi lists ([] without nvidia-smi or a driver)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return split_ids(out.stdout.replace("\n", ",")) if out.returncode == 0 else []


def slot_pool(environ: dict) -> list[str]:
    """The device ids jobs share: a SLURM job's allocation; else PSSL_GPU_SLOTS; else the
    CUDA_VISIBLE_DEVICES the run was started with; else every GPU of the machine."""
    if "SLURM_JOB_ID" in environ:
        return split_ids(environ.get("CUDA_VISIBLE_DEVICES", ""))
    for name in (POOL_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in environ:
            return split_ids(environ[name])
    return visible_gpus()


def lock_dir(environ: dict) -> Path:
    base = Path(environ.get(LOCK_DIR_ENV) or default_lock_dir())
    # SLURM numbers each job's GPUs from 0 (cgroups), so jobs sharing a node must not share lock files.
    return base / f"slurm-{environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in environ else base


def shared_dir(directory: Path) -> None:
    """Make `directory` and the folders it needs, each shared by every user of the machine (sticky, like /tmp):
    a SLURM job of one user may create the base folder another user's job on the node needs next."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        try:
            folder.chmod(0o1777)
        except PermissionError:  # another user made it first: theirs is shared already
            pass


def lock_path(directory: Path, slot: str) -> Path:
    return directory / (re.sub(r"[^A-Za-z0-9._-]", "_", slot) + ".lock")


def _open_lock(directory: Path, slot: str) -> int:
    if not directory.is_dir():
        shared_dir(directory)
    path = lock_path(directory, slot)
    try:  # another user's lock file in a sticky folder opens read-only (O_CREAT on it is refused where
        return os.open(path, os.O_RDONLY)  # fs.protected_regular is set); flock needs no write access
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)


def _still_linked(fd: int, path: Path) -> bool:
    """The locked file is still the one at `path` (a tmp cleaner or rm did not replace it): else a later job
    would lock a new file of the same name and share the slot."""
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def try_take(n: int, pool: list[str], directory: Path) -> tuple[list[str], list[int]] | None:
    """n free slots of the pool, locked (slots and their lock fds), or None with nothing held: a job never
    holds part of what it needs while it waits, so jobs of several ranks cannot deadlock each other."""
    slots, fds = [], []
    for slot in pool:
        fd = _open_lock(directory, slot)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not _still_linked(fd, lock_path(directory, slot)):  # locked a removed file: not a slot
            os.close(fd)
            continue
        slots.append(slot)
        fds.append(fd)
        if len(slots) == n:
            return slots, fds
    for fd in fds:
        os.close(fd)
    return None


def take(n: int, pool: list[str], directory: Path, poll: float = POLL_SECONDS) -> tuple[list[str], list[int]]:
    """Wait until n slots of the pool are free and lock them."""
    if n > len(pool):
        raise InputError(f"the job needs {n} GPU(s) but the pool has {len(pool)} ({','.join(pool)}); "
                         f"set {POOL_ENV} or CUDA_VISIBLE_DEVICES")
    start = time.monotonic()
    waiting = False
    while (got := try_take(n, pool, directory)) is None:
        if not waiting:
            log.info(f"waiting for {n} free GPU slot(s) of {','.join(pool)} (locks in {directory})")
            waiting = True
        time.sleep(poll * random.uniform(0.5, 1.5))  # jittered, so waiting jobs do not retry in lockstep
    log.info(f"GPU slots: CUDA_VISIBLE_DEVICES={','.join(got[0])} (waited {time.monotonic() - start:.1f} s)")
    return got


def run_on_slots(n: int, command: list[str], environ: dict | None = None) -> None:
    """Exec `command` on n GPU slots: CUDA_VISIBLE_DEVICES names them, and the command's process holds them
    until it exits. n = 0 hides every GPU (a CPU job); without a known pool (a machine without GPUs) the
    command runs as it is."""
    environ = dict(os.environ if environ is None else environ)
    if n == 0:
        environ["CUDA_VISIBLE_DEVICES"] = ""
    elif pool := slot_pool(environ):
        slots, fds = take(n, pool, lock_dir(environ))
        for fd in fds:
            os.set_inheritable(fd, True)
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(slots)
    else:
        log.info("GPU slots: no GPUs known (no SLURM allocation, PSSL_GPU_SLOTS, CUDA_VISIBLE_DEVICES or "
                 "nvidia-smi): running as is")
    os.execvpe(command[0], command, environ)
