"""What each job asks SLURM for, and how a training job starts its processes. Torch-free: the workflow
imports it while building the DAG.

The `cluster` config section is the one place for partitions, account, memory, node size and runtime
scaling. Every rule's resources come from `job_resources`; a local run ignores the SLURM-only ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Rough throughput of one modern GPU (bf16), used to size SLURM runtimes; cluster.runtime_scale multiplies
# every estimate for slower hardware.
EXPLAIN_FWD_BWD_PER_MIN = 60_000   # 224 px ResNet-50-class forward+backward passes per minute
TRAIN_IMAGES_PER_MIN = 6_000       # segmentation training images per minute at crop 256 (ResNet-50 class)

IMAGENET_TRAIN_IMAGES = 1_281_167  # the bound runtimes use before anything is indexed


def rows_or_bound(tables: list[str], bound: int) -> int:
    """Total rows of parquet tables when all of them exist (footers only), else `bound`."""
    from pssl.data.imagenet import count_rows
    if not tables or not all(Path(t).exists() for t in tables):
        return bound
    return sum(count_rows(t) for t in tables)


@dataclass(frozen=True)
class TrainLayout:
    """Processes of a training job: one per GPU, `gpus_per_node` on each of `nodes` nodes."""
    gpus_per_node: int
    nodes: int
    num_workers: int
    cores_per_node: int
    launcher_kind: str = "auto"  # auto: python / torchrun on one node / srun across nodes; srun: always srun

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def uses_srun(self) -> bool:
        return self.nodes > 1 or self.launcher_kind == "srun"

    @property
    def cpus_per_rank(self) -> int:
        """Each rank's loader workers plus the rank itself, within its share of the node."""
        return max(1, min(self.num_workers + 1, self.cores_per_node // self.gpus_per_node))

    @property
    def threads_per_rank(self) -> int:
        """torch intra-op threads of a rank: the CPUs its loader workers leave (at least one)."""
        return max(1, self.cpus_per_rank - self.num_workers)

    def launcher(self) -> str:
        """The command prefix that starts the ranks (followed by `-m pssl ...`)."""
        if self.uses_srun:
            # The jobstep plugin runs an `mpi` job's command with SLURM's task layout removed from the
            # environment, so the step states it in full; each task reads its rank from SLURM_PROCID.
            return (f"srun --nodes {self.nodes} --ntasks-per-node {self.gpus_per_node} "
                    f"--gpus-per-node {self.gpus_per_node} --cpus-per-task {self.cpus_per_rank} "
                    f"--kill-on-bad-exit=1 python")
        if self.gpus_per_node > 1:
            return f"torchrun --standalone --nproc_per_node {self.gpus_per_node}"
        return "python"

    def resources(self) -> dict:
        """sbatch geometry: one node with all its GPUs for python / torchrun; one task per GPU under srun."""
        if self.uses_srun:
            return {"nodes": self.nodes, "tasks_per_node": self.gpus_per_node, "mpi": "srun",
                    "gres": f"gpu:{self.gpus_per_node}", "cpus_per_task": self.cpus_per_rank}
        return {"nodes": 1, "gpu": self.gpus_per_node, "cpus_per_task": self.cpus_per_rank * self.gpus_per_node}


def train_layout(config: dict, section: str) -> TrainLayout:
    s = config[section]
    return TrainLayout(s["gpus_per_node"], s["nodes"], s["num_workers"], config["cluster"]["cores_per_node"],
                       s["launcher"])


def job_resources(config: dict, memory: str, cpus: int = 1, gpus: int = 0, layout: TrainLayout | None = None
                  ) -> dict:
    """SLURM resources of one rule: partition (GPU or CPU), account, memory, CPUs, GPUs and nodes.

    `memory` names the cluster.mem_mb entry; a training `layout` gives the GPU / task geometry.
    """
    c = config["cluster"]
    geometry = layout.resources() if layout else {"nodes": 1, "cpus_per_task": max(1, cpus),
                                                  **({"gpu": gpus} if gpus else {})}
    on_gpu = bool(layout) or gpus > 0
    partition = c["gpu_partition"] if on_gpu else (c["cpu_partition"] or c["gpu_partition"])
    return {**geometry, "mem_mb": c["mem_mb"][memory],
            **({"slurm_partition": partition} if partition else {}),
            **({"slurm_account": c["account"]} if c["account"] else {})}


def explain_minutes(config: dict) -> int:
    e = config["explain"]
    passes = config["shard_size"] * len(config["zoo"]["models"]) * (e["n_samples"] + 1) * (e["image_size"] / 224) ** 2
    return int(config["cluster"]["runtime_scale"] * (15 + passes / EXPLAIN_FWD_BWD_PER_MIN)) + 1


def train_minutes(config: dict, images: int, epochs: int, crop: int, gpus: int) -> int:
    work = images * epochs * (crop / 256) ** 2 / (TRAIN_IMAGES_PER_MIN * gpus)
    return int(config["cluster"]["runtime_scale"] * (30 + 1.5 * work)) + 1


def zoo_minutes(config: dict, images: int) -> int:
    """One zoo classifier: loading timm weights, or training it on `images` indexed images (one GPU)."""
    if config["zoo"]["source"] == "timm":
        return 20
    t = config["zoo"]["train"]
    return train_minutes(config, images, t["epochs"], t["image_size"], 1)
