# Shared paths and helpers for every stage. Logic lives in the pssl package; this file only wires paths.
import json
import os
import re
from types import SimpleNamespace

from pssl.cluster import benchmark_path, explain_cpus, job_resources, runtime_minutes, train_layout, zoo_gpus
from pssl.config import imagenet_root, zoo_specs
from pssl.data.pool import DEMO_TRUTH, pool_folders
from pssl.layout import FINETUNE_CELL, FINETUNE_RUN, LR_SEARCH_ROUND, MULTI_PRETRAINED, PRETRAINED, PSEUDO_PART, STUDENT_RUN
from pssl.lr_search import cell_lrs, every_lr, read_round
from pssl.models.catalog import model_title
from pssl.settings import (
    BACKBONE_ONLY,
    EVAL_GEOMETRY,
    MAIN,
    MDP,
    MS3,
    MULTI_DATASET,
    STUDENT_DATA,
    classify_settings,
    demo_settings,
    explain_settings,
    finetune_settings,
    index_settings,
    init_transfer,
    label_settings,
    lr_search_settings,
    multi_dataset_settings,
    pretrain_settings,
    pretrain_variant,
    pssl_init,
    sanity_settings,
    settings_flags,
    student_init,
    student_settings,
    teacher_settings,
    zoo_settings,
)

# All rules run `python -m pssl <command>`: the package from this checkout, in whatever environment runs
# the job (the .venv, or the conda env of envs/pssl.yaml under --software-deployment-method conda).
CONDA_ENV = "../../envs/pssl.yaml"
shell.prefix(f"export PYTHONPATH={workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

RESULTS = config["results"]
DEMO_ROOT = config["demo"].get("root")  # required only when the demo is enabled
DEMO_MASKS = f"{DEMO_ROOT}/imagenet/masks"  # the demo images' hidden object masks
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
FINETUNE = config["finetune"]
LRS = every_lr(config)
LR_SEARCH = lr_search_settings(config)
SEEDS = FINETUNE["seeds"]
VARIANTS = [MAIN, *config["pretrain_variants"]]  # main: the pretrain section itself (Table 3)
EXPERIMENTS = config["experiments"]
SELF_TRAINING = config["self_training"]
PRETRAINED_INITS = [*map(pssl_init, VARIANTS), *MULTI_DATASET]  # every init a pre-training of this config gives
BASE_INITS = ["imagenet", *PRETRAINED_INITS, *(init + BACKBONE_ONLY for init in PRETRAINED_INITS)]
STUDENT_INITS = [student_init(i, suffix) for i in BASE_INITS for suffix in STUDENT_DATA]
POOL_PARTS = list(range(SELF_TRAINING["pool_shards"]))


def one_of(names):
    return "|".join(re.escape(str(n)) for n in names)


# Every wildcard has one meaning in every rule: {classifier} a zoo entry, {model} a segmentation model (a key
# of pretrain.models), {variant} a pre-training variant (main or a key of pretrain_variants), {dataset} a
# downstream dataset, {init} an initialisation (imagenet, pssl = the main pre-training, pssl-<variant>, mdp / ms3 =
# MDP's / MS3's pre-training, and each with ~backbone: its backbone alone), {method} mdp or ms3, {seed}
# a fine-tuning seed, {lr} a learning rate (lr_grid or a cell's lr), {round} a round of a cell's lr search, {shard} a shard of the index, {experiment} an
# experiment's name, {part} a part of an unlabelled pool, {data} a student's data (st: pseudo labels, dup: the
# duplicated control). A self-training student's init is <init>+<data> (imagenet+st); the rules that train
# narrow {init} to the base inits.
wildcard_constraints:
    classifier=one_of(ZOO),
    model=one_of(PRETRAIN),
    variant=one_of(VARIANTS),
    dataset=one_of(FINETUNE["datasets"]),
    init=one_of(BASE_INITS + STUDENT_INITS),
    seed=r"\d+",
    lr=one_of(LRS),
    round=r"\d+",
    shard=r"shard-\d+",
    experiment=one_of(EXPERIMENTS) or "(?!)",
    part=r"\d+",
    data=one_of(STUDENT_DATA),
    method=one_of(MULTI_DATASET),


def zoo_files(wildcards=None):
    """The ensemble's classifiers (explain, teacher)."""
    return [f"{RESULTS}/zoo/{name}.pt" for name in ENSEMBLE]


def label_tables(wildcards=None):
    return expand(f"{RESULTS}/labels/{{shard}}.parquet", shard=shard_names())


def pretrained(model, variant=MAIN):
    return f"{RESULTS}/{PRETRAINED.format(model=model, variant=variant)}/final.pt"


def pretrained_state(model, variant=MAIN):
    """A finished pre-training's last checkpoint, what a continuation trains on from."""
    return f"{RESULTS}/{PRETRAINED.format(model=model, variant=variant)}/state.pt"


def continued_state(wildcards):
    """The state.pt of the pre-training a variant continues (continue_from; Table 4's 60 epochs), else []."""
    source = pretrain_settings(config, wildcards.variant)[0].continue_from
    return [pretrained_state(wildcards.model, source)] if source else []


def pretrained_models(wildcards=None):
    """The main pre-training of every Table 3 model."""
    return [pretrained(name) for name in FINETUNE["models"]]


def multi_pretrained(method, model):
    """MDP's or MS3's pre-trained model (init mdp or ms3)."""
    return f"{RESULTS}/{MULTI_PRETRAINED.format(method=method, model=model)}/final.pt"


def multi_method(init):
    """mdp or ms3 for their inits (with or without ~backbone), else None."""
    base = init_transfer(init)[0]
    return base if base in MULTI_DATASET else None


def table3_variants():
    """The PSSL pre-training variants Table 3's inits use (main, and e.g. fused for pssl-fused)."""
    return [init_variant(i) for i in FINETUNE["inits"] if i != "imagenet" and not multi_method(i)]


def table3_pretrained(wildcards=None):
    """Every pre-trained model behind a Table 3 column."""
    return [pretrained(m, v) for v in table3_variants() for m in FINETUNE["models"]]


def fused_in_table3():
    return any(pretrain_settings(config, v)[0].label_mode == "fused" for v in table3_variants())


FUSED_FIGURE = f"{RESULTS}/report/fused_labels.png"


def init_variant(init):
    """The pre-training variant a PSSL init starts from: pssl -> main, pssl-<variant> -> <variant> (with or
    without ~backbone)."""
    init = init_transfer(init)[0]
    return MAIN if init == "pssl" else init.removeprefix("pssl-")


def masks_flag(wildcards):
    """--masks-root for a variant pre-trained on the true object masks (the oracle control)."""
    if pretrain_settings(config, wildcards.variant)[0].label_source != "oracle":
        return ""
    return f"--masks-root {config['imagenet_masks_root'] or DEMO_MASKS}"


def backbone_init(wildcards):
    """The zoo classifier a segmentation model's backbone starts from ([] for a random start)."""
    init = PRETRAIN[wildcards.model]["init"]
    return [f"{RESULTS}/zoo/{init}.pt"] if init else []


def explain_stores(wildcards=None):
    return expand(f"{RESULTS}/explain/{{shard}}.zarr", shard=shard_names())


PRETRAIN_LAYOUT = train_layout(config, "pretrain")
FINETUNE_LAYOUT = train_layout(config, "finetune")
CPU_JOB = job_resources(config, "cpu")  # index, shard, report, demo data: one core


def dataset_root(dataset):
    return FINETUNE["datasets"][dataset]["root"] or config["downstream_root"] or DEMO_ROOT


def finetune_init(wildcards):
    """ImageNet init: the zoo classifier of the backbone; PSSL and MDP inits: the pre-trained model."""
    if multi_method(wildcards.init):
        return multi_pretrained(multi_method(wildcards.init), wildcards.model)
    if wildcards.init != "imagenet":
        return pretrained(wildcards.model, init_variant(wildcards.init))
    init = PRETRAIN[wildcards.model]["init"]
    return f"{RESULTS}/zoo/{init}.pt" if init else []


def finetune_flags(wildcards):
    """Every setting of one fine-tune job as `pssl finetune` flags."""
    return settings_flags(*finetune_settings(config, wildcards.dataset, wildcards.model, float(wildcards.lr),
                                             int(wildcards.seed)))


def runtime(rule):
    """A heavy rule's SLURM runtime estimate (pssl.cluster.runtime_minutes; `pssl runtimes` checks it against
    the rule's benchmark files)."""
    return lambda wildcards: runtime_minutes(config, rule, dict(wildcards.items()))


def benchmark(rule):
    return benchmark_path(config, rule)


def finetune_cells(datasets, models, inits):
    """Each cell's selected-lr metrics, once per seed."""
    return expand(f"{RESULTS}/{FINETUNE_CELL}/metrics.json",
                  dataset=datasets, model=models, init=inits, seed=SEEDS)


def student_inits():
    """The self-training columns: each configured init + st, and + dup (the control) where asked for."""
    suffixes = ["st", "dup"] if SELF_TRAINING["control"] else ["st"]
    return [student_init(i, suffix) for i in SELF_TRAINING["inits"] for suffix in suffixes]


def finetune_results(wildcards=None):
    """Table 3's cells, with the self-training students where self_training names datasets."""
    return finetune_cells(FINETUNE["datasets"], FINETUNE["models"], FINETUNE["inits"]) + \
        finetune_cells(SELF_TRAINING["datasets"], SELF_TRAINING["models"], student_inits())


def cell_dir(wildcards, init=None):
    w = wildcards
    return f"{RESULTS}/{FINETUNE_CELL.format(dataset=w.dataset, model=w.model, init=init or w.init, seed=w.seed)}"


def cell_runs(wildcards, lrs):
    """The metrics.json of a cell's runs at `lrs`."""
    return expand(f"{cell_dir(wildcards)}/lr{{lr}}/metrics.json", lr=lrs)


def start_lr(wildcards):
    """The cell's own lr: its fixed lr, or where its peak search starts."""
    return finetune_settings(config, wildcards.dataset, wildcards.model)[1].lr


def search_round(wildcards, number):
    """Round `number` of a cell's peak search (pssl.lr_search.Round); Snakemake pauses the DAG here until the
    round's runs exist, then grows it by what the round decides."""
    w = wildcards
    path = checkpoints.lr_search.get(dataset=w.dataset, model=w.model, init=w.init, seed=w.seed,
                                     round=number).output[0]
    return read_round(path)


def search_rounds_done(wildcards):
    """The last round of a cell's peak search: the one that names no further lr."""
    number = 0
    while not (decision := search_round(wildcards, number)).done:
        number += 1
    return decision


def round_runs(wildcards):
    """The runs a search round looks at: the first round's lrs, or every lr tried through the round before and
    the lrs it asked for."""
    number = int(wildcards.round)
    if number == 0:
        return cell_runs(wildcards, cell_lrs("peak", FINETUNE["lr_grid"], start_lr(wildcards)))
    before = search_round(wildcards, number - 1)
    return cell_runs(wildcards, sorted({*before.tried, *before.next}))


def searched_lrs(wildcards):
    """The lrs one cell and seed trains (finetune.lr_search): fixed or grid, known up front; peak, the lrs its
    search tried, or, for the other seeds under `seeds: first`, the first seed's choice."""
    if LR_SEARCH.mode != "peak":
        return cell_lrs(LR_SEARCH.mode, FINETUNE["lr_grid"], start_lr(wildcards))
    if LR_SEARCH.seeds == "first" and int(wildcards.seed) != SEEDS[0]:
        first = dict(wildcards.items(), seed=SEEDS[0])
        return [search_rounds_done(SimpleNamespace(**first)).best]
    return sorted(search_rounds_done(wildcards).tried)


def pool_paths(dataset):
    """The folders of a dataset's unlabelled pool (pssl.data.pool.pool_folders)."""
    configured = (SELF_TRAINING["pools"] or {}).get(dataset)
    return [str(f) for f in pool_folders(dataset, dataset_root(dataset), configured)]


def teacher_flags(wildcards):
    """A teacher's settings: its dataset's evaluation geometry (base size, window, scales, flip) and the
    teacher's own (confidence, tile)."""
    geometry = finetune_settings(config, wildcards.dataset, wildcards.model)[0]
    return f"{settings_flags(geometry, fields=EVAL_GEOMETRY)} {settings_flags(teacher_settings(config))}"


def teacher_tables(wildcards):
    """All parts of the pool labelled by the teacher cell the student's init and seed name."""
    w = wildcards
    part = PSEUDO_PART.format(dataset=w.dataset, model=w.model, init=w.init, seed=w.seed, part="{part}")
    return expand(f"{RESULTS}/{part}/pseudo.parquet",
                  part=POOL_PARTS)


def selftrain_tables(wildcards=None):
    """Every teacher's pseudo labels (the quality table's input)."""
    return expand(f"{RESULTS}/{PSEUDO_PART}/pseudo.parquet",
                  dataset=SELF_TRAINING["datasets"], model=SELF_TRAINING["models"], init=SELF_TRAINING["inits"],
                  seed=SEEDS, part=POOL_PARTS)


def teacher_cells(wildcards=None):
    return finetune_cells(SELF_TRAINING["datasets"], SELF_TRAINING["models"], SELF_TRAINING["inits"])


def experiment_inits(name):
    e = EXPERIMENTS[name]
    return (["imagenet"] if e["imagenet"] else []) + [pssl_init(v) for v in e["variants"]]


def experiment_cells(wildcards):
    e = EXPERIMENTS[wildcards.experiment]
    return finetune_cells(e["datasets"], [e["model"]], experiment_inits(wildcards.experiment))


def imagenet_val_root():
    """The ImageNet val set of the experiments that report top-1 (the demo: its held-out images)."""
    root = config["imagenet_val_root"] or (f"{DEMO_ROOT}/imagenet/val" if config["demo"]["enabled"] else None)
    if root is None:
        raise ValueError("config key imagenet_val_root is required for an experiment with classify: true")
    return root


def experiment_classify(wildcards):
    """Each row's ImageNet val top-1 (experiments with classify: true)."""
    e = EXPERIMENTS[wildcards.experiment]
    if not e.get("classify"):
        return []
    return [f"{RESULTS}/classify/{e['model']}/{init}.json" for init in experiment_inits(wildcards.experiment)]


def experiment_variants(name):
    """JSON: each variant of the experiment -> its overrides, in the table's row order (main, mdp, ms3: none)."""
    return json.dumps({v: pretrain_variant(config, v) if v not in (MAIN, *MULTI_DATASET) else None
                       for v in EXPERIMENTS[name]["variants"]})


def multi_models(method):
    """The models an init `method` (mdp, ms3) of Table 3, of self-training or of an experiment of
    run_experiments fine-tunes (the default target shows what their pre-training learnt of the classes)."""
    uses = lambda inits: any(multi_method(i) == method for i in inits)  # noqa: E731
    models = list(FINETUNE["models"]) if uses(FINETUNE["inits"]) else []
    models += SELF_TRAINING["models"] if uses(SELF_TRAINING["inits"]) else []
    models += [EXPERIMENTS[name]["model"] for name in config["run_experiments"] if method in EXPERIMENTS[name]["variants"]]
    return list(dict.fromkeys(models))


def multi_backbone_init(wildcards):
    """The zoo classifier of a multi-dataset model whose backbone starts from ImageNet (backbone_start)."""
    settings = multi_dataset_settings(config, wildcards.method)[0]
    return backbone_init(wildcards) if settings.backbone_start == "imagenet" else []


def multi_roots(wildcards):
    """DATASET=ROOT of every dataset the method pre-trains on."""
    return " ".join(f"{d}={dataset_root(d)}" for d in multi_dataset_settings(config, wildcards.method)[0].datasets)


CLASS_EMBEDDINGS = f"{RESULTS}/ms3/class_embeddings.parquet"


def class_embeddings(wildcards):
    """MS3's class vectors (pssl embed-classes)."""
    return [CLASS_EMBEDDINGS] if wildcards.method == MS3 else []


# What each method's pre-training learnt of its classes (report): MDP's prototypes, MS3's multi-label mapping
CLASS_FIGURE = {MDP: "mdp_prototypes_{model}.png", MS3: "ms3_mapping_{model}.png"}


def class_figure(method, model):
    return f"{RESULTS}/report/" + CLASS_FIGURE[method].format(model=model)


MULTI_FIGURES = [class_figure(method, m) for method in MULTI_DATASET for m in multi_models(method)]


def experiment_table(name):
    return f"{RESULTS}/report/experiments/{name}.csv"


def report_experiments(wildcards=None):
    """The experiments the default target and the report include (run_experiments)."""
    return [experiment_table(name) for name in config["run_experiments"]]


REPORT_FILES = [f"{RESULTS}/report/{name}" for name in
                ("table3.html", "table3.csv", "table3.md", "finetune_cells.csv", "table3_gains.png", "table3_gains.svg",
                 "figure3.png", "figure3.pdf", "pseudo_label_gallery.png", "pseudo_label_gallery.pdf", "report.md",
                 "index.html")]
MODEL_TITLES = {m: model_title(PRETRAIN[m]["head"], PRETRAIN[m]["backbone"]) for m in PRETRAIN}


# Demo only: scores against the hidden object masks (and the pools' hidden truth, with self-training on).
QUALITY = ["explain_quality", "pretrain_quality"] + (["selftrain_quality"] if SELF_TRAINING["datasets"] else [])


def quality_tables(wildcards=None):
    """Demo only: pseudo-label and pre-training quality against the hidden object masks."""
    return [f"{RESULTS}/report/{name}.csv" for name in QUALITY] if config["demo"]["enabled"] else []


def quality_pages():
    """The quality tables as the report writes them (HTML)."""
    return [f"{RESULTS}/report/{name}.html" for name in QUALITY] if config["demo"]["enabled"] else []


SANITY = f"{RESULTS}/report/sanity.csv"


def sanity_tables(wildcards=None):
    """The sanity checks the report opens with, where sanity.enabled (the pilot)."""
    return [SANITY] if config["sanity"]["enabled"] else []


def final_outputs():
    """The final output of every stage whose path does not depend on the shards. Listed without the
    checkpoint, so a dry run before the shards exist still plans the zoo, pre-training, every fine-tune job
    and the report."""
    outputs = [f"{RESULTS}/index.parquet", *zoo_files(), *pretrained_models(), *finetune_results(), *REPORT_FILES]
    return outputs + quality_tables() + MULTI_FIGURES


def shard_outputs(wildcards):
    """Every shard's explain store and label table (known once the checkpoint wrote the shards)."""
    return [*explain_stores(), *label_tables()]
