"""torch.distributed setup from the launcher's environment: torchrun, srun, or a single process.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; under `srun` (one task per GPU, across nodes) they
come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the first host of the step's node list.
NCCL on GPU, gloo on CPU. A rank's GPU is its local rank modulo the GPUs it sees: clusters that bind one
GPU per task show every task its GPU as device 0.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pssl.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _slurm_master() -> str:
    # The step's nodes (srun sets both; the job's list is the fallback for steps that span the allocation).
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_JOB_NODELIST"]
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           check=True).stdout.split()
    return hosts[0]


def launcher_env() -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for this process ({} for a single process)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k in env}
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "MASTER_ADDR": env.get("MASTER_ADDR") or _slurm_master(),
                "MASTER_PORT": env.get("MASTER_PORT") or str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000)}
    return {}


def local_device(dev: torch.device, local_rank: int) -> torch.device:
    """This rank's CUDA device: its local rank modulo the visible GPUs (all of them, or the one bound to it)."""
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device: str = "auto", expect_world: int | None = None) -> DistInfo:
    """Join the launcher's process group. `expect_world`: the ranks the config asked for (nodes x GPUs per
    node); a launch that started a different number fails here instead of training something else."""
    launch = launcher_env()
    world = int(launch.get("WORLD_SIZE", 1)) if launch else 1
    if expect_world is not None and world != expect_world:
        raise RuntimeError(
            f"started as {world} process(es) but the config asks for {expect_world} (nodes x gpus_per_node): "
            f"check the job's task layout (srun --ntasks-per-node, torchrun --nproc_per_node)")
    if world == 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    os.environ.update(launch)
    local_rank = int(launch.get("LOCAL_RANK", 0))
    dev = local_device(resolve_device(device), local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.get_rank() != 0:  # one log per job: the other ranks report warnings and errors only
        logging.getLogger("pssl").setLevel(logging.WARNING)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier(device_ids=[info.device.index] if info.device.type == "cuda" else None)


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    """Release every DDP reference before destroying the group: gloo otherwise aborts at interpreter exit
    now and then (shared/notes/torch-distributed.md: 0/50 aborts with this sequence)."""
    if info.world > 1:
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
