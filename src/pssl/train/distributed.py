"""torch.distributed setup from the launcher's environment: torchrun, srun, or a single process.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; under `srun` (one task per GPU, across nodes) they
come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the first host of SLURM_JOB_NODELIST.
NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import gc
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
    nodelist = os.environ["SLURM_JOB_NODELIST"]
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


def init_distributed(device: str = "auto") -> DistInfo:
    launch = launcher_env()
    if not launch or int(launch["WORLD_SIZE"]) == 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    os.environ.update(launch)
    local_rank = int(launch.get("LOCAL_RANK", 0))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown(info: DistInfo) -> None:
    """Release every DDP reference before destroying the group: gloo otherwise aborts at interpreter exit
    now and then (shared/notes/torch-distributed.md: 0/50 aborts with this sequence)."""
    if info.world > 1:
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
