# Shared paths and helpers for every stage. Logic lives in the pssl package; this file only wires paths.
import json
import os

from pssl.config import cli_flags, imagenet_root, launcher, train_flags, zoo_specs

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


def final_outputs(wildcards):
    """The final output of every stage (the inputs of the default target)."""
    outputs = [f"{RESULTS}/index.parquet", *zoo_files(), *explain_stores(), *label_tables(),
               *pretrained_models()]
    if config["demo"]["enabled"]:
        outputs.append(f"{RESULTS}/report/explain_quality.csv")
    return outputs
