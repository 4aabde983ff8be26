# Shared paths and helpers for every stage. Logic lives in the pssl package; this file only wires paths.
import json
import os

from pssl.config import (
    cli_flags,
    explain_minutes,
    imagenet_root,
    launcher,
    pretrain_resources,
    train_flags,
    train_minutes,
    zoo_minutes,
    zoo_specs,
)
from pssl.data.downstream import TRAIN_IMAGES
from pssl.data.imagenet import count_rows

# All rules run `python -m pssl <command>`: the package from this checkout, in whatever environment runs
# the job (the .venv, or the conda env of envs/pssl.yaml under --software-deployment-method conda).
CONDA_ENV = "../../envs/pssl.yaml"
shell.prefix(f"export PYTHONPATH={workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

RESULTS = config["results"]
DEMO_ROOT = config["demo"]["root"]
LOGS = f"{RESULTS}/logs"


def demo_data_if_enabled(wildcards):
    """The demo tree is an input only when the pipeline generates it."""
    return [DEMO_ROOT] if config["demo"]["enabled"] else []


def shard_table(wildcards):
    """One shard's table, through the checkpoint, so a single store can be a target on a fresh run."""
    return os.path.join(checkpoints.shard_index.get().output[0], f"{wildcards.shard}.parquet")


def shard_names():
    """Shards written by the checkpoint; evaluated after it ran, so the fan-out follows the data."""
    shard_dir = checkpoints.shard_index.get().output[0]
    return sorted(glob_wildcards(os.path.join(shard_dir, "{shard}.parquet")).shard)


ZOO = zoo_specs(config)  # name -> {"name", "arch", "kwargs"}: ensemble members and init-only classifiers
ENSEMBLE = list(zoo_specs(config, ensemble_only=True))
PRETRAIN = config["pretrain"]["models"]


def zoo_files(wildcards=None):
    """The ensemble's classifiers (explain, teacher)."""
    return [f"{RESULTS}/zoo/{name}.pt" for name in ENSEMBLE]


def label_tables(wildcards=None):
    return expand(f"{RESULTS}/labels/{{shard}}.parquet", shard=shard_names())


def pretrained_models(wildcards=None):
    return [f"{RESULTS}/pretrain/{name}/final.pt" for name in PRETRAIN]


def backbone_init(wildcards):
    """The zoo classifier a segmentation model's backbone starts from ([] for a random start)."""
    init = PRETRAIN[wildcards.model]["init"]
    return [f"{RESULTS}/zoo/{init}.pt"] if init else []


def explain_stores(wildcards=None):
    return expand(f"{RESULTS}/explain/{{shard}}.zarr", shard=shard_names())


FINETUNE = config["finetune"]
LRS = FINETUNE["lr_grid"] or [FINETUNE["lr"]]


def dataset_root(dataset):
    return FINETUNE["datasets"][dataset]["root"] or config["downstream_root"] or DEMO_ROOT


def finetune_init(wildcards):
    """ImageNet init: the zoo classifier of the backbone; PSSL init: the pre-trained model."""
    if wildcards.init == "pssl":
        return f"{RESULTS}/pretrain/{wildcards.model}/final.pt"
    init = PRETRAIN[wildcards.model]["init"]
    return f"{RESULTS}/zoo/{init}.pt" if init else []


def finetune_flags(wildcards):
    ds = FINETUNE["datasets"][wildcards.dataset]
    return train_flags({**FINETUNE, "epochs": ds["epochs"], "weight_decay": ds["weight_decay"],
                        "lr": float(wildcards.lr)}, config["seed"])


def zoo_runtime(wildcards, input):
    return zoo_minutes(config, count_rows(input.index))


def pretrain_runtime(wildcards, input):
    p = config["pretrain"]
    images = sum(count_rows(table) for table in input.labels)
    return train_minutes(config, images, p["epochs"], p["crop"], p["gpus_per_node"] * p["nodes"])


def finetune_runtime(wildcards):
    ds = FINETUNE["datasets"][wildcards.dataset]
    return train_minutes(config, TRAIN_IMAGES[wildcards.dataset], ds["epochs"], ds["crop"],
                         FINETUNE["gpus_per_node"])


def finetune_results(wildcards=None):
    return expand(f"{RESULTS}/finetune/{{dataset}}/{{model}}/{{init}}/metrics.json",
                  dataset=FINETUNE["datasets"], model=FINETUNE["models"], init=FINETUNE["inits"])


REPORT_FILES = [f"{RESULTS}/report/{name}" for name in
                ("table3.csv", "table3.md", "table3_gains.png", "pseudo_label_gallery.png")]
HEAD_TITLES = {"pspnet": "PSPNet", "deeplabv3": "DeepLabV3", "ocrnet": "OCRNet"}
MODEL_TITLES = {m: f"{HEAD_TITLES[PRETRAIN[m]['head']]}-{PRETRAIN[m]['backbone']}" for m in PRETRAIN}


def quality_tables(wildcards=None):
    """Demo only: pseudo-label and pre-training quality against the hidden object masks."""
    if not config["demo"]["enabled"]:
        return []
    return [f"{RESULTS}/report/explain_quality.csv", f"{RESULTS}/report/pretrain_quality.csv"]


def final_outputs(wildcards):
    """The final output of every stage (the inputs of the default target)."""
    outputs = [f"{RESULTS}/index.parquet", *zoo_files(), *explain_stores(), *label_tables(),
               *pretrained_models(), *finetune_results()]
    outputs += REPORT_FILES
    if config["demo"]["enabled"]:
        outputs += quality_tables()
    return outputs
