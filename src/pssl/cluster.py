"""What each job asks SLURM for, and how a training job starts its processes. Torch-free: the workflow
imports it while building the DAG.

The `cluster` config section is the one place for partitions, account, memory, node size and runtime
scaling. Every rule's resources come from `job_resources`; a local run ignores the SLURM-only ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pssl.layout import BENCHMARKS

# Rough throughput of one modern GPU (bf16), used to size SLURM runtimes; cluster.runtime_scale multiplies
# every estimate for slower hardware.
EXPLAIN_FWD_BWD_PER_MIN = 60_000   # 224 px ResNet-50-class forward+backward passes per minute
TRAIN_IMAGES_PER_MIN = 6_000       # segmentation training images per minute at crop 256 (ResNet-50 class)

IMAGENET_TRAIN_IMAGES = 1_281_167  # the bound runtimes use before anything is indexed
POOL_IMAGES = 20_000  # the bound of an unlabelled pool of unknown size (Cityscapes' train_extra: 19,998)


def rows_or_bound(tables: list[str], bound: int) -> int:
    """Total rows of parquet tables when all of them exist (footers only), else `bound`."""
    from pssl.tables import count_rows
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
        """sbatch geometry without the GPUs (`gpu_resources` asks for them, gpus_per_node on each node): one
        node for python / torchrun; one task per GPU under srun."""
        if self.uses_srun:
            return {"nodes": self.nodes, "tasks_per_node": self.gpus_per_node, "mpi": "srun",
                    "cpus_per_task": self.cpus_per_rank}
        return {"nodes": 1, "cpus_per_task": self.cpus_per_rank * self.gpus_per_node}


def train_layout(config: dict, section: str) -> TrainLayout:
    s = config[section]
    return TrainLayout(s["gpus_per_node"], s["nodes"], s["num_workers"], config["cluster"]["cores_per_node"],
                       s["launcher"])


def gpu_request(config: dict, kind: str) -> dict:
    """How jobs of a kind (a cluster.mem_mb key) ask for GPUs: cluster.gpu_request's default, updated with
    the kind's own entry."""
    requests = config["cluster"]["gpu_request"]
    return {**requests["default"], **requests.get(kind, {})}


def gpu_resources(request: dict, gpus: int, per_node: bool) -> dict:
    """The executor plugin's resources that ask for `gpus` GPUs (on each node where `per_node`) in the
    requested form: `gpu` (+ `gpu_model`) becomes --gpus=[<model>:]N, `gres` --gres=gpu:[<model>:]N.

    --gres is per node by definition and every GPU cluster takes it (--gpus needs select/cons_tres), so jobs
    across nodes always use it.
    """
    model = request["model"]
    if per_node or request["flag"] == "gres":
        asked = {"gres": f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}"}
    else:
        asked = {"gpu": gpus, **({"gpu_model": model} if model else {})}
    # The plugin adds --ntasks-per-gpu to a GPU job with a `tasks` or `tasks_per_gpu` resource, which breaks
    # multi-GPU jobs (plugin issue #316); 0 keeps it out even where a profile's default resources set tasks.
    asked["tasks_per_gpu"] = 0
    if request["constraint"]:
        asked["constraint"] = request["constraint"]
    return asked


def job_resources(config: dict, memory: str, cpus: int = 1, gpus: int = 0, layout: TrainLayout | None = None
                  ) -> dict:
    """SLURM resources of one rule: partition (GPU or CPU), account, memory, CPUs, GPUs and nodes, and
    `gpu_slots`, the GPUs the job holds on its node (what `pssl gpu-slots` takes; 0 for a CPU job).

    `memory` names the cluster.mem_mb entry, and the cluster.gpu_request entry of a GPU job; a training
    `layout` gives the GPU / task geometry.
    """
    c = config["cluster"]
    if layout:
        geometry, gpus = layout.resources(), layout.gpus_per_node
    else:
        geometry = {"nodes": 1, "cpus_per_task": max(1, cpus)}
    asked = gpu_resources(gpu_request(config, memory), gpus, bool(layout) and layout.uses_srun) if gpus else {}
    partition = c["gpu_partition"] if gpus else (c["cpu_partition"] or c["gpu_partition"])
    return {**geometry, **asked, "gpu_slots": gpus, "mem_mb": c["mem_mb"][memory],
            **({"slurm_partition": partition} if partition else {}),
            **({"slurm_account": c["account"]} if c["account"] else {})}


# Each estimate is runtime_scale x (a start-up allowance + a term that grows with the job's work) + 1 minute.
# cluster.startup_min is a training job's allowance (start-up, evaluation, margin); explain and teacher jobs
# get half of it, label jobs a third (the paper preset's 30: 30, 15 and 10 minutes).
TRAIN_MARGIN = 1.5  # training and teacher work terms carry this factor; explain's does not


def scaled(config: dict, minutes: float) -> int:
    return int(config["cluster"]["runtime_scale"] * minutes) + 1


def startup(config: dict, share: float = 1.0) -> float:
    return config["cluster"]["startup_min"] * share


def explain_work(config: dict) -> float:
    """Minutes of one shard's SmoothGrad passes at the assumed throughput."""
    e = config["explain"]
    passes = config["shard_size"] * len(config["zoo"]["models"]) * (e["n_samples"] + 1) * (e["image_size"] / 224) ** 2
    return passes / EXPLAIN_FWD_BWD_PER_MIN


def explain_minutes(config: dict) -> int:
    return scaled(config, startup(config, 1 / 2) + explain_work(config))


def label_minutes(config: dict) -> int:
    """One shard through the teacher: one forward pass per model instead of explain's n_samples + 1 with
    gradients; a fifth of explain's estimate plus start-up."""
    return explain_minutes(config) // 5 + int(startup(config, 1 / 3))


def train_work(images: float, epochs: int, crop: int, gpus: int) -> float:
    """The size term of a training estimate: minutes at the assumed throughput, with the margin."""
    return TRAIN_MARGIN * images * epochs * (crop / 256) ** 2 / (TRAIN_IMAGES_PER_MIN * gpus)


def train_minutes(config: dict, images: int, epochs: int, crop: int, gpus: int) -> int:
    return scaled(config, startup(config) + train_work(images, epochs, crop, gpus))


def teacher_work(config: dict, dataset: str, model: str) -> float:
    """One part of a pool through the teacher: every evaluation view (scales x flip) of every image, a
    forward pass at about 3x the training rate, at the evaluation's base size."""
    from pssl.data.downstream import DATASETS
    from pssl.settings import finetune_settings
    geometry, _ = finetune_settings(config, dataset, model)
    st = config["self_training"]
    images = (st["pool_images"] or DATASETS[dataset].pool_size or POOL_IMAGES) / st["pool_shards"]
    views = len(geometry.scales) * (2 if geometry.flip else 1)
    return TRAIN_MARGIN * images * views * (geometry.base_size / 256) ** 2 / (3 * TRAIN_IMAGES_PER_MIN)


def teacher_minutes(config: dict, dataset: str, model: str) -> int:
    return scaled(config, startup(config, 1 / 2) + teacher_work(config, dataset, model))


def zoo_minutes(config: dict, images: int) -> int:
    """One zoo classifier: loading timm weights, or training it on `images` indexed images (one GPU)."""
    if config["zoo"]["source"] == "timm":
        return 20
    t = config["zoo"]["train"]
    return train_minutes(config, images, t["epochs"], t["image_size"], 1)


IMAGENET_CLASSES = 1000
IMAGENET_MAX_PER_CLASS = 1300  # ILSVRC-2012 train: 732 to 1300 images per class


def subset_bound(config: dict) -> int:
    """The most images the index can list: ImageNet's size, the slice `imagenet_subset` asks for, or the
    demo's images."""
    demo, s = config["demo"], config["imagenet_subset"]
    if demo["enabled"]:
        return demo["num_classes"] * demo["images_per_class"]
    return min(IMAGENET_TRAIN_IMAGES, (s["classes"] or IMAGENET_CLASSES) * (s["images_per_class"] or
                                                                           IMAGENET_MAX_PER_CLASS))


def indexed_images(config: dict) -> int:
    """Images of the pre-training set: the index's rows (the shards partition it), else ImageNet's size (or
    the slice's). Reads only a file that exists when the DAG is built, never a job's output, so dry runs of a
    partly finished pipeline work."""
    return rows_or_bound([str(Path(config["results"]) / "index.parquet")], subset_bound(config))


# A multi-dataset image's work in trained images: MDP trains two views and runs the key encoder on two more
# (a forward pass: about a third of a trained one), MS3 one of each.
PASSES = {"mdp": 2 + 2 / 3, "ms3": 1 + 1 / 3}


def training_job(config: dict, rule: str, wildcards: dict) -> tuple[float, int, int, int]:
    """(images per epoch, epochs, crop, GPUs) of one job of a training rule."""
    from pssl.data.downstream import DATASETS
    from pssl.settings import MAIN, finetune_settings, multi_dataset_settings, pretrain_settings
    if rule == "zoo_model":
        t = config["zoo"]["train"]
        return indexed_images(config), t["epochs"], t["image_size"], 1
    if rule == "pretrain":
        settings, train = pretrain_settings(config, wildcards.get("variant", MAIN))
        images = indexed_images(config)
        images = min(settings.images, images) if settings.images else images
        epochs = train.epochs  # a continuation trains only the epochs after its source's end
        if settings.continue_from:
            epochs -= pretrain_settings(config, settings.continue_from)[1].epochs
        return images, epochs, settings.crop, train_layout(config, "pretrain").world
    if rule == "pretrain_multi":
        settings, train = multi_dataset_settings(config, wildcards["method"])
        images = sum(DATASETS[d].train_images for d in settings.datasets) * PASSES[wildcards["method"]]
        return images, train.epochs, settings.crop, train_layout(config, "pretrain").world
    # finetune, self_train (a student's epoch: a random half of the real set + k x as many pseudo samples; the
    # control: the real set (1 + k) / 2 times)
    geometry, train = finetune_settings(config, wildcards["dataset"], wildcards["model"])
    epoch = DATASETS[wildcards["dataset"]].train_images
    if rule == "self_train":
        epoch = -(-epoch // 2) * (1 + config["self_training"]["multiplier"])
    return epoch, train.epochs, geometry.crop, train_layout(config, "finetune").world


TRAINING_RULES = ("pretrain", "pretrain_multi", "finetune", "self_train")


def runtime_minutes(config: dict, rule: str, wildcards: dict) -> int:
    """The SLURM runtime estimate of one job of a heavy rule (what the rules request, what `pssl runtimes`
    compares with the measured benchmark files)."""
    if rule == "zoo_model":
        return zoo_minutes(config, indexed_images(config))
    if rule == "explain_shard":
        return explain_minutes(config)
    if rule == "label_shard":
        return label_minutes(config)
    if rule in TRAINING_RULES:
        return train_minutes(config, *training_job(config, rule, wildcards))
    if rule == "teacher_labels":
        return teacher_minutes(config, wildcards["dataset"], wildcards["model"])
    raise ValueError(f"no runtime estimate for rule {rule!r}; heavy rules: {', '.join(BENCHMARKS)}")


def work_minutes(config: dict, rule: str, wildcards: dict) -> float | None:
    """The part of a job's estimate that grows with its work, in minutes at runtime_scale 1 (no start-up
    allowance); None where the estimate is a constant (loading timm weights). A measured time over this is
    the runtime_scale at which paper-sized jobs, where this part dominates, would be estimated right (an
    upper bound: the measured time includes the start-up)."""
    if rule == "zoo_model":
        return None if config["zoo"]["source"] == "timm" else train_work(*training_job(config, rule, wildcards))
    if rule == "explain_shard":
        return explain_work(config)
    if rule == "label_shard":
        return explain_work(config) / 5
    if rule in TRAINING_RULES:
        return train_work(*training_job(config, rule, wildcards))
    if rule == "teacher_labels":
        return teacher_work(config, wildcards["dataset"], wildcards["model"])
    raise ValueError(f"no runtime estimate for rule {rule!r}; heavy rules: {', '.join(BENCHMARKS)}")


def zoo_gpus(config: dict) -> int:
    """Training a classifier from scratch takes a GPU; loading timm weights is CPU work."""
    return int(config["zoo"]["source"] == "train" and config["device"] != "cpu")


def explain_cpus(config: dict) -> int:
    """torch threads plus the image-decoding workers."""
    return config["threads"] + config["explain"]["num_workers"]


def benchmark_path(config: dict, rule: str) -> str:
    return str(Path(config["results"]) / "benchmarks" / BENCHMARKS[rule])


def benchmark_runs(results: str | Path) -> list[tuple[str, dict, float]]:
    """(rule, wildcards, measured minutes) of every benchmark file under <results>/benchmarks (the longest
    repeat of a file with several)."""
    import csv
    import re

    runs = []
    root = Path(results) / "benchmarks"
    for rule, pattern in BENCHMARKS.items():
        regex = re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern)) + "$")
        for path in sorted(root.glob(re.sub(r"\{\w+\}", "*", pattern))):
            match = regex.search(path.relative_to(root).as_posix())
            if not match:
                continue
            with open(path, newline="") as f:
                seconds = [float(r["s"]) for r in csv.DictReader(f, delimiter="\t")]
            if seconds:
                runs.append((rule, match.groupdict(), max(seconds) / 60))
    return runs


def measured_vs_estimated(config: dict) -> list[dict]:
    """Every benchmark file under <results>/benchmarks next to the runtime the workflow requested for it."""
    rows = []
    for rule, wildcards, measured in benchmark_runs(config["results"]):
        estimated = runtime_minutes(config, rule, wildcards)
        rows.append({"rule": rule, "job": ",".join(f"{k}={v}" for k, v in wildcards.items()),
                     "measured_min": round(measured, 2), "estimated_min": estimated,
                     "estimate_over_measured": round(estimated / measured, 1) if measured else float("inf")})
    return rows
