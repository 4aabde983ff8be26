"""`pssl` command line: parses arguments and calls one library function per command; no logic here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pssl import __version__
from pssl.allocator import keep_freed_memory
from pssl.errors import InputError
from pssl.models.catalog import HEAD_NAMES, TRANSFERS
from pssl.settings import (
    CLASSIFIER_FIELDS,
    EVAL_GEOMETRY,
    FINETUNE_DEFAULTS,
    MULTI_DATASET_TRAIN_DEFAULTS,
    ClassifySettings,
    DemoSettings,
    ExplainSettings,
    FinetuneSettings,
    IndexSettings,
    LabelSettings,
    MdpSettings,
    Ms3Settings,
    PretrainSettings,
    SanitySettings,
    StudentSettings,
    TeacherSettings,
    TrainSettings,
    ZooSettings,
    add_settings_flags,
    parse_bool,
    settings_from_args,
)


def add_long_job_flags(parser: argparse.ArgumentParser, distributed: bool) -> None:
    """Flags of the jobs that survive SLURM time limits (explain, pretrain, finetune)."""
    parser.add_argument("--requeue-margin-min", type=float, default=15.0,
                        help="under SLURM: save and requeue the job this many minutes before its time limit "
                             "(default: %(default)s)")
    if distributed:
        parser.add_argument("--expect-world", type=int, default=None,
                            help="ranks the job must start as (nodes x GPUs per node); another count fails at once")


def dataset_root_pair(value: str) -> tuple[str, str]:
    """DATASET=ROOT"""
    name, sep, root = value.partition("=")
    if not sep or not name or not root:
        raise argparse.ArgumentTypeError(f"expected DATASET=ROOT, got {value!r}")
    return name, root


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The segmentation model a training command builds."""
    parser.add_argument("--head", required=True, choices=HEAD_NAMES, help="segmentation head")
    parser.add_argument("--backbone", required=True, help="timm name")


def compute_parser() -> argparse.ArgumentParser:
    """--device and --threads, shared by every command that computes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def _demo_data(a):
    from pssl.demo.make import make_demo_data
    make_demo_data(a.out, settings=settings_from_args(DemoSettings, a))


def _index(a):
    from pssl.data.imagenet import build_index
    build_index(a.root, a.out, labelled=not a.unlabelled, subset=settings_from_args(IndexSettings, a))


def _shard(a):
    from pssl.shards import write_shards
    write_shards(a.index, a.shard_size, a.out)


def _zoo(a):
    from pssl.device import set_threads
    from pssl.models.zoo import parse_spec, zoo_from_scratch, zoo_from_timm
    set_threads(a.threads)
    spec = parse_spec(json.loads(a.spec))
    if a.source == "timm":
        zoo_from_timm(spec, a.out, a.cache_dir)
    else:
        zoo_from_scratch(spec, a.index, a.out, settings=settings_from_args(ZooSettings, a), device=a.device)


def _zoo_fetch(a):
    from pssl.models.zoo import fetch_pretrained
    for arch in a.arch:
        fetch_pretrained(arch, a.cache_dir)


def _explain(a):
    from pssl.device import set_threads
    from pssl.explain.run import explain_shard
    set_threads(a.threads)
    explain_shard(a.shard, a.zoo, a.out, settings=settings_from_args(ExplainSettings, a), device=a.device,
                  requeue_margin_min=a.requeue_margin_min)


def _eval_explain(a):
    from pssl.explain.quality import write_quality
    write_quality(a.stores, a.index, a.masks, a.out)


def _inspect(a):
    from pssl.store import describe
    print(describe(a.store))


def _show(a):
    from pssl.report.figures import show_store_image
    show_store_image(a.store, a.index, a.out, model_deciles=a.model_deciles)


def _label(a):
    from pssl.device import set_threads
    from pssl.labels import label_shard
    set_threads(a.threads)
    label_shard(a.shard, a.store, a.zoo, a.out, settings=settings_from_args(LabelSettings, a), device=a.device)


def _pretrain(a):
    from pssl.device import set_threads
    from pssl.train.pretrain import pretrain
    set_threads(a.threads)
    pretrain(a.stores, a.labels, a.out_dir, head=a.head, backbone=a.backbone, backbone_init=a.backbone_init,
             settings=settings_from_args(PretrainSettings, a), train=settings_from_args(TrainSettings, a),
             device=a.device, expect_world=a.expect_world, requeue_margin_min=a.requeue_margin_min,
             masks_root=a.masks_root, continue_state=a.continue_state)


def _pretrain_multi(a):
    from pssl.device import set_threads
    from pssl.train.mdp import Mdp
    from pssl.train.ms3 import Ms3
    from pssl.train.multi_dataset import pretrain_multi
    set_threads(a.threads)
    method, cls = (Mdp, MdpSettings) if a.command == "pretrain-mdp" else (Ms3, Ms3Settings)
    inputs = {"class_embeddings": a.class_embeddings} if method is Ms3 else {}
    pretrain_multi(method, dict(a.roots), a.out_dir, head=a.head, backbone=a.backbone, backbone_init=a.backbone_init,
                   settings=settings_from_args(cls, a), train=settings_from_args(TrainSettings, a), device=a.device,
                   expect_world=a.expect_world, requeue_margin_min=a.requeue_margin_min, **inputs)


def _class_relations(a):
    from pssl.report.class_relations import write_multi_label_mapping, write_prototype_similarity
    write = write_prototype_similarity if a.command == "mdp-prototypes" else write_multi_label_mapping
    write(a.model, a.out, a.figure)


def _embed_classes(a):
    from pssl.class_embeddings import embed_classes
    from pssl.data.multi_dataset import union_labels
    embed_classes(union_labels(a.datasets, a.merge_names), a.source, a.out, a.table, a.cache, a.nearest)


def _eval_pretrain(a):
    from pssl.report.pretrain_quality import pretrain_quality
    pretrain_quality(a.models, a.stores, a.index, a.masks, a.out, device=a.device, figure=a.fused_figure)


def _eval_classify(a):
    from pssl.device import set_threads
    from pssl.eval.classify import evaluate_classification
    set_threads(a.threads)
    evaluate_classification(a.model, a.index, a.root, a.out, settings_from_args(ClassifySettings, a),
                            device=a.device)


def _finetune(a):
    from pssl.device import set_threads
    from pssl.train.finetune import finetune
    set_threads(a.threads)
    student = settings_from_args(StudentSettings, a) if a.command == "self-train" else None
    finetune(a.dataset, a.root, a.out_dir, head=a.head, backbone=a.backbone, init=a.init, init_from=a.init_from,
             settings=settings_from_args(FinetuneSettings, a), train=settings_from_args(TrainSettings, a),
             device=a.device, expect_world=a.expect_world, requeue_margin_min=a.requeue_margin_min,
             student=student, pseudo=a.pseudo if student else (), transfer=a.transfer)


def _teacher_labels(a):
    from pssl.device import set_threads
    from pssl.selftrain.teacher import label_pool, selected_weights
    set_threads(a.threads)
    with open(a.selected) as f:  # the teacher cell, named in its tables
        cell = json.load(f).get("cell")
    label_pool(str(selected_weights(a.selected, a.runs)), a.dataset, a.pool, a.out_dir, cell=cell,
               geometry=settings_from_args(FinetuneSettings, a), settings=settings_from_args(TeacherSettings, a),
               part=a.part, parts=a.parts, images=a.images, seed=a.seed, device=a.device,
               requeue_margin_min=a.requeue_margin_min)


def _pseudo_quality(a):
    from pssl.report.selftrain_quality import write_pseudo_quality
    write_pseudo_quality(a.tables, a.truth, a.teachers, a.out, a.figure)


def _figure3(a):
    from pssl.device import set_threads
    from pssl.report.figure3 import figure3
    set_threads(a.threads)
    print(figure3(a.model, a.dataset, a.root, a.index, a.out, a.images, a.contains, device=a.device))


def _select_lr(a):
    from pssl.layout import cell_identity
    from pssl.report.lr_grid import select_best_lr
    select_best_lr(a.runs, a.out, a.start, cell_identity(a.cell) if a.cell else None)


def _lr_search_round(a):
    from pssl.lr_search import write_round
    write_round(a.runs, a.ladder, a.start, a.margin, a.max_values, a.out)


def _table3(a):
    from pssl.report.table3 import write_table3
    print(write_table3(a.cells, a.out, json.loads(a.titles)))


def _report(a):
    from pssl.report.page import write_report
    print(write_report(a.out, a.stores, a.quality, a.experiments, a.figure3, a.sanity, a.class_figures))


def _sanity(a):
    from pssl.config import load_config
    from pssl.report.sanity import write_sanity
    config = json.loads(a.config) if a.config.lstrip().startswith("{") else load_config([a.config], [], check=False)[0]
    print(write_sanity(a.out, index=a.index, labels=a.labels, stores=a.stores, pretrained=a.pretrained,
                       cells=a.cells, config=config, settings=settings_from_args(SanitySettings, a)))


def _experiment_table(a):
    from pssl.report.experiments import write_experiment
    table = write_experiment(a.name, a.title, a.cells, json.loads(a.variants), a.datasets, a.imagenet, a.out_dir,
                             a.classify)
    print(table.with_suffix(".md").read_text())


def _summary(a):
    from pssl.report.summary import summarize
    print(summarize(a.results))


def _gpu_slots(a):
    from pssl.gpu_slots import run_on_slots
    if not a.argv:
        raise InputError("no command to run: pssl gpu-slots N -- COMMAND ...")
    run_on_slots(a.gpus, a.argv)


def _status(a):
    from pssl.status import format_status, job_states
    print(format_status(job_states(a.results, a.snakemake_logs)))


def _fake_tree(a):
    from pssl.data.fake_tree import fake_trees
    roots = fake_trees(a.out, a.images_per_class)
    print("--config " + " ".join(f"{key}={path}" for key, path in roots.items()))


def _config(a):
    import yaml

    from pssl.config import format_config, load_config
    config, sources = load_config(a.configfile, a.config, a.snakefile and Path(a.snakefile).resolve().parent,
                                  check=not a.no_check)
    print(yaml.safe_dump(config, sort_keys=False) if a.yaml else format_config(config, sources), end="")


def _plan(a):
    from pssl.plan import format_plan, plan
    table, config = plan(a.configfile, a.config, a.snakefile, a.directory, a.profile)
    if a.out:
        table.to_csv(a.out, float_format="%.2f")
    print(format_plan(table, config["finetune"]["lr_search"]["mode"]), end="")


def _runtimes(a):
    import pandas as pd

    from pssl.cluster import measured_vs_estimated
    from pssl.config import load_config
    config = load_config(a.configfile or ["config.yaml"], a.config, check=False)[0]
    if a.results:
        config["results"] = a.results
    rows = measured_vs_estimated(config)
    if not rows:
        raise SystemExit(f"no benchmark files under {config['results']}/benchmarks: run the workflow first")
    print(pd.DataFrame(rows).to_string(index=False))


def add_config_layers(parser: argparse.ArgumentParser) -> None:
    """The config files and --config values of a run, as Snakemake takes them (pssl.config.load_config)."""
    parser.add_argument("--configfile", nargs="+", default=[], help="as snakemake's (default: config.yaml, the demo)")
    parser.add_argument("--config", nargs="+", default=[], help="as snakemake's key=value overrides (e.g. the data "
                                                                "roots)")


def build_parser() -> argparse.ArgumentParser:
    from pssl.data.downstream import DATASETS
    p = argparse.ArgumentParser(
        prog="pssl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="PSSL pipeline stages as commands (Snakemake runs them; each also runs by hand).",
        epilog="examples:\n"
               "  pssl inspect results/explain/shard-00000.zarr\n"
               "  pssl show results/explain/shard-00000.zarr --index 3 --out d.png\n"
               "  pssl explain --shard results/shards/shard-00000.parquet --zoo results/zoo/*.pt "
               "--out s.zarr --n-samples 8\n"
               "  pssl runtimes --configfile config.yaml\n"
               "`pssl <command> --help` lists a command's options with their defaults.")
    p.add_argument("--version", action="version", version=f"pssl {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also: PSSL_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    compute = compute_parser()

    s = sub.add_parser("demo-data", help="synthesise the embedded demo data")
    s.add_argument("--out", required=True, help="directory the demo tree is written to")
    add_settings_flags(s, DemoSettings)
    s.set_defaults(func=_demo_data)

    s = sub.add_parser("index", help="index an ImageNet-layout tree into index.parquet")
    s.add_argument("--root", required=True, help="directory holding <wnid>/<image> folders")
    s.add_argument("--out", required=True, help="index.parquet to write")
    s.add_argument("--unlabelled", action="store_true", help="ignore class folders (class_idx -1)")
    add_settings_flags(s, IndexSettings)
    s.set_defaults(func=_index)

    s = sub.add_parser("shard", help="split index.parquet into contiguous shards")
    s.add_argument("--index", required=True, help="index.parquet to split")
    s.add_argument("--shard-size", type=int, required=True, help="images per shard")
    s.add_argument("--out", required=True, help="shard directory")
    s.set_defaults(func=_shard)

    s = sub.add_parser("zoo", parents=[compute],
                       help="build one classifier of the zoo (train from scratch, or timm weights)")
    s.add_argument("--spec", required=True, help='JSON: "timm_name" or {"name", "arch", "kwargs"}')
    s.add_argument("--source", choices=["train", "timm"], required=True,
                   help="train: from scratch on the index; timm: pretrained weights from the cache, offline")
    s.add_argument("--out", required=True, help="zoo/<name>.pt (a .json record is written beside it)")
    s.add_argument("--index", help="index.parquet (source train)")
    s.add_argument("--cache-dir", default=None, help="timm weights cache (source timm)")
    add_settings_flags(s, ZooSettings)
    s.set_defaults(func=_zoo)

    s = sub.add_parser("zoo-fetch", help="download pretrained timm weights into the cache (needs network)")
    s.add_argument("--arch", action="append", required=True, help="timm model name (repeat for several)")
    s.add_argument("--cache-dir", default=None, help="weights cache (default: timm's / huggingface's)")
    s.set_defaults(func=_zoo_fetch)

    s = sub.add_parser("explain", parents=[compute],
                       help="SmoothGrad ensemble deciles of one shard into a zarr store")
    s.add_argument("--shard", required=True, help="shards/<shard>.parquet: the images to explain")
    s.add_argument("--zoo", nargs="+", required=True, help="zoo/<name>.pt files, the ensemble's members")
    s.add_argument("--out", required=True, help="explain/<shard>.zarr")
    add_long_job_flags(s, distributed=False)
    add_settings_flags(s, ExplainSettings)
    s.set_defaults(func=_explain)

    s = sub.add_parser("eval-explain", help="pseudo-label quality against object masks (demo)")
    s.add_argument("--stores", nargs="+", required=True, help="explain stores to score")
    s.add_argument("--index", required=True, help="index.parquet (image paths)")
    s.add_argument("--masks", required=True, help="masks/<wnid>/<name>.png root")
    s.add_argument("--out", required=True, help="CSV table")
    s.set_defaults(func=_eval_explain)

    s = sub.add_parser("inspect", help="describe an explain store")
    s.add_argument("store")
    s.set_defaults(func=_inspect)

    s = sub.add_parser("show", help="image, ensemble heat map and D9 pseudo label of one stored image")
    s.add_argument("store")
    s.add_argument("--index", type=int, default=0, help="row of the image in the store")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--model-deciles", action="store_true", help="one panel per model (if kept)")
    s.set_defaults(func=_show)

    s = sub.add_parser("label", parents=[compute], help="teacher inference and pseudo-label policy for one shard")
    s.add_argument("--shard", required=True, help="shards/<shard>.parquet")
    s.add_argument("--store", required=True, help="explain/<shard>.zarr")
    s.add_argument("--zoo", nargs="+", required=True, help="teacher: zoo/<name>.pt files (mean softmax)")
    s.add_argument("--out", required=True, help="labels/<shard>.parquet")
    add_settings_flags(s, LabelSettings)
    s.set_defaults(func=_label)

    s = sub.add_parser("pretrain", parents=[compute],
                       help="pre-train a segmentation model on the pseudo labels (torchrun/srun)")
    s.add_argument("--stores", nargs="+", required=True, help="explain/<shard>.zarr of every shard")
    s.add_argument("--labels", nargs="+", required=True, help="labels/<shard>.parquet, same order as --stores")
    s.add_argument("--out-dir", required=True, help="pretrain/<model>: checkpoints, log.csv, final.pt")
    add_model_flags(s)
    s.add_argument("--backbone-init", default=None, help="zoo/<name>.pt of the backbone's architecture")
    s.add_argument("--masks-root", default=None,
                   help="label source oracle: object masks as <root>/<wnid>/<image stem>.png")
    s.add_argument("--continue-state", default=None,
                   help="with --continue-from: pretrain/<model>/<that variant>/state.pt, trained on to --epochs")
    add_long_job_flags(s, distributed=True)
    add_settings_flags(s, PretrainSettings)
    add_settings_flags(s, TrainSettings, exclude=CLASSIFIER_FIELDS)
    s.set_defaults(func=_pretrain)

    for command, cls, text in (
            ("pretrain-mdp", MdpSettings, "MDP: pre-train a segmentation model on labelled downstream sets"),
            ("pretrain-ms3", Ms3Settings, "MS3: pre-train a segmentation model on labelled downstream sets with "
                                          "class-name vectors")):
        s = sub.add_parser(command, parents=[compute], help=text + " (torchrun/srun)")
        s.add_argument("--roots", nargs="+", required=True, type=dataset_root_pair, metavar="DATASET=ROOT",
                       help="each dataset of --datasets and the folder holding it")
        s.add_argument("--out-dir", required=True, help="<method>/<model>: checkpoints, log.csv, final.pt")
        add_model_flags(s)
        s.add_argument("--backbone-init", default=None,
                       help="zoo/<name>.pt of the backbone's architecture (with --backbone-start imagenet)")
        if cls is Ms3Settings:
            s.add_argument("--class-embeddings", required=True,
                           help="pssl embed-classes' table of the union's classes (the vectors T)")
        add_long_job_flags(s, distributed=True)
        add_settings_flags(s, cls)
        add_settings_flags(s, TrainSettings, defaults=MULTI_DATASET_TRAIN_DEFAULTS, exclude=CLASSIFIER_FIELDS)
        s.set_defaults(func=_pretrain_multi)

    for command, text, out, figure in (
            ("mdp-prototypes", "MDP's class prototypes: their cosine similarity across datasets",
             "CSV: each class's nearest classes of the other datasets", "PNG: the similarity matrix"),
            ("ms3-mapping", "MS3's multi-label mapping and its class vectors' similarity",
             "CSV: each class and the other datasets' classes it pulls toward", "PNG: the class vectors' similarity")):
        s = sub.add_parser(command, help=text)
        s.add_argument("--model", required=True, help=f"{command[:3]}/<model>/final.pt")
        s.add_argument("--out", required=True, help=out)
        s.add_argument("--figure", required=True, help=figure)
        s.set_defaults(func=_class_relations)

    s = sub.add_parser("embed-classes", help="class-name vectors of a union label space (MS3's language targets)")
    s.add_argument("--datasets", nargs="+", required=True, choices=list(DATASETS), help="the union's datasets")
    s.add_argument("--merge-names", type=parse_bool, default=False, metavar="BOOL",
                   help="one class per name several datasets share (default: %(default)s)")
    s.add_argument("--source", required=True, choices=["table", "minilm", "clip"],
                   help="table: vectors computed elsewhere (--table); minilm: all-MiniLM-L6-v2, offline; clip: "
                        "open_clip ViT-B-32 (needs its weights)")
    s.add_argument("--table", default=None, help="source table: CSV or Parquet, a name column and the vectors")
    s.add_argument("--cache", default=None, help="where minilm's files are unpacked (default: ~/.cache/pssl)")
    s.add_argument("--out", required=True, help="Parquet: class, text, vector")
    s.add_argument("--nearest", default=None, help="CSV: each class's nearest classes of the other datasets")
    s.set_defaults(func=_embed_classes)

    s = sub.add_parser("eval-pretrain", parents=[compute],
                       help="pre-trained models' foreground vs object masks (demo)")
    s.add_argument("--models", nargs="+", required=True, help="pretrain/<model>/<variant>/final.pt")
    s.add_argument("--stores", nargs="+", required=True, help="explain stores (the images to segment)")
    s.add_argument("--index", required=True, help="index.parquet (image paths)")
    s.add_argument("--masks", required=True, help="masks/<wnid>/<name>.png root (the demo's hidden objects)")
    s.add_argument("--out", required=True, help="CSV table")
    s.add_argument("--fused-figure", default=None,
                   help="PNG: image | D9 label | fused label | object for a model pre-trained on fused labels")
    s.set_defaults(func=_eval_pretrain)

    for command, text in (("finetune", "fine-tune on a downstream dataset and evaluate it"),
                          ("self-train", ("train a self-training student (real set + the teacher's pseudo-labelled "
                                          "pool, or the duplicated control) and evaluate it like a fine-tune cell"))):
        s = sub.add_parser(command, parents=[compute], help=text)
        s.add_argument("--dataset", required=True, choices=list(DATASETS), help="downstream dataset")
        s.add_argument("--root", required=True, help="directory holding the dataset's standard folder")
        add_model_flags(s)
        s.add_argument("--init", required=True, choices=["imagenet", "pssl"],
                       help="imagenet: backbone from the zoo classifier; pssl: the pre-trained model")
        s.add_argument("--init-from", required=True, help="zoo/<arch>.pt (imagenet) or pretrain/<model>/final.pt")
        s.add_argument("--transfer", default="full", choices=TRANSFERS,
                       help="init pssl: all but the per-class layers (full, the paper's) or the backbone alone")
        s.add_argument("--out-dir", required=True,
                       help="metrics.json, final.pt, log.csv (resume checkpoints while it runs)")
        add_long_job_flags(s, distributed=True)
        add_settings_flags(s, FinetuneSettings)
        add_settings_flags(s, TrainSettings, defaults=FINETUNE_DEFAULTS)
        s.set_defaults(func=_finetune)
    s.add_argument("--pseudo", nargs="*", default=[],
                   help="the teacher's pseudo.parquet tables (all parts of its pool); none for data duplicate")
    add_settings_flags(s, StudentSettings)

    s = sub.add_parser("teacher-labels", parents=[compute],
                       help="a fine-tuned model labels one part of its dataset's unlabelled pool (self-training)")
    s.add_argument("--selected", required=True, help="the teacher cell's finetune/.../seed<N>/metrics.json")
    s.add_argument("--runs", nargs="+", required=True, help="the cell's lr runs: finetune/.../lr<lr>/metrics.json")
    s.add_argument("--dataset", required=True, choices=list(DATASETS), help="downstream dataset")
    s.add_argument("--pool", nargs="+", required=True,
                   help="folder(s) of unlabelled images (each searched recursively)")
    s.add_argument("--out-dir", required=True, help="labels/, pseudo.parquet, centroids.parquet")
    s.add_argument("--part", type=int, default=0, help="this job's part of the pool (default: %(default)s)")
    s.add_argument("--parts", type=int, default=1, help="parts the pool is split into (default: %(default)s)")
    s.add_argument("--images", type=int, default=0,
                   help="label the first N pool images of a fixed random order (0: all; default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of that order (default: %(default)s)")
    add_long_job_flags(s, distributed=False)
    add_settings_flags(s, FinetuneSettings, fields=EVAL_GEOMETRY)
    add_settings_flags(s, TeacherSettings)
    s.set_defaults(func=_teacher_labels)

    s = sub.add_parser("pseudo-quality", help="teachers' pseudo labels against the pool's hidden truth (demo)")
    s.add_argument("--tables", nargs="+", required=True, help="pseudo/.../pool-<part>/pseudo.parquet")
    s.add_argument("--truth", nargs="+", required=True,
                   help="dataset=folder of the pool's truth (pool_truth/<dataset>), one per dataset")
    s.add_argument("--teachers", nargs="*", default=[],
                   help="each teacher's finetune/.../metrics.json (its own val mIoU beside the pool score)")
    s.add_argument("--out", required=True, help="CSV table")
    s.add_argument("--figure", required=True, help="PNG: image, pseudo label, truth")
    s.set_defaults(func=_pseudo_quality)

    s = sub.add_parser("eval-classify", parents=[compute],
                       help="ImageNet val top-1 / top-5 of a pre-trained segmentation model used as a classifier "
                            "(background excluded), or of a zoo classifier")
    s.add_argument("--model", required=True, help="pretrain/<model>/<variant>/final.pt or zoo/<name>.pt")
    s.add_argument("--index", required=True, help="index.parquet (its class list maps wnids to outputs)")
    s.add_argument("--root", required=True, help="ImageNet val: <wnid>/ folders, or flat files with "
                                                 "LOC_val_solution.csv in or beside it")
    s.add_argument("--out", required=True, help="JSON with top1, top5, images, unreadable, the input protocol")
    add_settings_flags(s, ClassifySettings)
    s.set_defaults(func=_eval_classify)

    s = sub.add_parser("figure3", parents=[compute], help="Figure 3: a pre-trained model segmenting a downstream "
                                                          "val set into the ImageNet classes + background")
    s.add_argument("--model", required=True, help="pretrain/<model>/<variant>/final.pt")
    s.add_argument("--dataset", required=True, choices=list(DATASETS), help="downstream dataset (its val split)")
    s.add_argument("--root", required=True, help="the dataset's root (its standard layout)")
    s.add_argument("--index", required=True, help="index.parquet (class list and names)")
    s.add_argument("--images", type=int, default=3, help="the first N val images (default: %(default)s)")
    s.add_argument("--contains", default=None,
                   help="and the first val image showing this class of the dataset, e.g. person (the paper's "
                        "fourth row; none if one of the first N shows it)")
    s.add_argument("--out", required=True, help="PNG (a PDF is written beside it)")
    s.set_defaults(func=_figure3)

    s = sub.add_parser("select-lr", help="keep the best learning rate (val mIoU) of those a cell tried")
    s.add_argument("--runs", nargs="+", required=True, help="metrics.json of each lr")
    s.add_argument("--start", type=float, default=None, help="the cell's own lr: a tie goes to the lr nearer it "
                                                             "(default: the smallest lr tried)")
    s.add_argument("--cell", nargs=4, default=None, metavar="KEY=VALUE",
                   help="the cell's identity, written into its metrics.json for the reports: dataset=... model=... "
                        "init=... seed=...")
    s.add_argument("--out", required=True, help="the cell's metrics.json (the best lr's, with every lr tried)")
    s.set_defaults(func=_select_lr)

    s = sub.add_parser("lr-search-round", help="one round of a cell's peak lr search: the next lrs, or its end")
    s.add_argument("--runs", nargs="+", required=True, help="metrics.json of every lr the cell has trained so far")
    s.add_argument("--ladder", nargs="+", type=float, required=True, help="the lr_grid ladder, ascending")
    s.add_argument("--start", type=float, required=True, help="the cell's lr (where the search started)")
    s.add_argument("--margin", type=float, default=0.0, help="val mIoU points that make a neighbour clearly worse")
    s.add_argument("--max-values", type=int, default=5, help="the most lrs the search trains")
    s.add_argument("--out", required=True, help="the round's decision (JSON)")
    s.set_defaults(func=_lr_search_round)

    s = sub.add_parser("table3", help="Table 3 (CSV, Markdown, HTML, gains figure) from the fine-tune cells")
    s.add_argument("--cells", nargs="+", required=True,
                   help="finetune/<dataset>/<model>/<init>/seed<seed>/metrics.json")
    s.add_argument("--out", required=True, help="report directory")
    s.add_argument("--titles", default="{}", help='JSON: model name -> column title')
    s.set_defaults(func=_table3)

    s = sub.add_parser("report", help="the report around Table 3: experiments, quality tables, gallery, index.html")
    s.add_argument("--out", required=True, help="report directory (holding table3.csv and table3.md)")
    s.add_argument("--stores", nargs="+", required=True, help="explain stores for the gallery")
    s.add_argument("--quality", nargs="*", default=[], help="quality CSV tables to append (demo)")
    s.add_argument("--experiments", nargs="*", default=[], help="experiment tables to include (<name>.csv)")
    s.add_argument("--figure3", default=None, help="Figure 3's PNG, to show on the page")
    s.add_argument("--sanity", nargs="?", const=None, default=None,
                   help="sanity.csv (pssl sanity): its checks open the page")
    s.add_argument("--class-figures", nargs="*", default=[],
                   help="mdp_prototypes_<model>.png / ms3_mapping_<model>.png, shown with their CSV")
    s.set_defaults(func=_report)

    s = sub.add_parser("sanity", help="the sanity page: each check's expected range, measured value and pass / "
                                      "fail / missing (a pilot run's verdict before the paper run)")
    s.add_argument("--index", required=True, help="index.parquet (the classes class_idx numbers)")
    s.add_argument("--labels", nargs="*", default=[], help="labels/<shard>.parquet (zoo top-1)")
    s.add_argument("--stores", nargs="*", default=[], help="explain/<shard>.zarr (targets, D9 stability)")
    s.add_argument("--pretrained", nargs="*", default=[],
                   help="pretrain/<model>/<variant>/final.pt (its log.csv beside it: loss falling)")
    s.add_argument("--cells", nargs="*", default=[],
                   help="finetune/<dataset>/<model>/<init>/seed<seed>/metrics.json (mIoU above chance)")
    s.add_argument("--config", required=True,
                   help="the run's config, as JSON text or a YAML file (its results folder's benchmarks/ and "
                        "runtime estimates)")
    s.add_argument("--out", required=True, help="sanity.csv to write (sanity.html beside it)")
    add_settings_flags(s, SanitySettings)
    s.set_defaults(func=_sanity)

    s = sub.add_parser("experiment-table", help="one experiment's table (Tables 1, 2, 4, ablations): each "
                                                "pre-training variant's fine-tune cells, over seeds")
    s.add_argument("--name", required=True, help="file name of the table (table1)")
    s.add_argument("--title", required=True, help="the table's caption")
    s.add_argument("--cells", nargs="+", required=True,
                   help="finetune/<dataset>/<model>/<init>/seed<seed>/metrics.json of the experiment")
    s.add_argument("--variants", required=True, help="JSON: variant -> its overrides, in row order")
    s.add_argument("--classify", nargs="*", default=[],
                   help="classify/<model>/<init>.json of each row (pssl eval-classify): a top-1 column")
    s.add_argument("--datasets", nargs="+", required=True, help="the table's columns, in order")
    s.add_argument("--imagenet", type=parse_bool, default=False, metavar="BOOL",
                   help="the table has an ImageNet-init row and each variant's gain over it")
    s.add_argument("--out-dir", required=True, help="where <name>.csv, .md, .html and <name>_runs.csv go")
    s.set_defaults(func=_experiment_table)

    s = sub.add_parser("fake-tree", help="empty ImageNet (train, val) and downstream trees in the real layouts, "
                                         "to dry-run and plan a preset without the data; prints the --config "
                                         "values that point to them")
    s.add_argument("--out", required=True, help="folder to build them in")
    s.add_argument("--images-per-class", type=int, default=1,
                   help="empty images per ImageNet class folder (default: %(default)s; the plan sizes ImageNet's "
                        "jobs from its real size until it is indexed)")
    s.set_defaults(func=_fake_tree)

    s = sub.add_parser("config", help="the effective config a run would use, every key with where its value comes "
                                      "from (a config file, --config, or the default in pssl.settings or the schema)")
    add_config_layers(s)
    s.add_argument("--snakefile", default=None, help="the pipeline's Snakefile, whose schema and config.yaml are "
                                                     "used (default: this package's checkout)")
    s.add_argument("--yaml", action="store_true", help="print the effective config as YAML, without sources")
    s.add_argument("--no-check", action="store_true", help="the schema only, not the checks across keys (e.g. a "
                                                           "preset before its data roots are known)")
    s.set_defaults(func=_config)

    s = sub.add_parser("plan", help="a run's jobs and GPU-hours per rule before it runs, for each lr search "
                                    "(grid, peak best and worst case, fixed), from a Snakemake dry run")
    add_config_layers(s)
    s.add_argument("--snakefile", default="Snakefile", help="the pipeline's Snakefile (default: %(default)s)")
    s.add_argument("--directory", default=".", help="the run's working directory: what exists under its results "
                                                    "is not planned again (default: %(default)s)")
    s.add_argument("--profile", default=None, help="a Snakemake profile, e.g. profiles/slurm")
    s.add_argument("--out", default=None, help="also write the table as CSV")
    s.set_defaults(func=_plan)

    s = sub.add_parser("runtimes", help="each benchmarked job's measured time next to the SLURM runtime the "
                                        "workflow requests for it (minutes)")
    add_config_layers(s)
    s.add_argument("--results", default=None, help="results directory (default: the config's)")
    s.set_defaults(func=_runtimes)

    s = sub.add_parser("gpu-slots", help="run a command on N GPUs of this machine that no other job holds "
                                         "(the GPU rules' prefix; waits while fewer are free)",
                       description="The pool: a SLURM job's own GPUs; else PSSL_GPU_SLOTS (comma-separated ids); "
                                   "else the CUDA_VISIBLE_DEVICES the run started with; else every GPU nvidia-smi "
                                   "lists. Locks in PSSL_GPU_LOCK_DIR (default /run/lock/pssl-gpu-slots, "
                                   "or /tmp/pssl-gpu-slots where /run/lock is not writable).")
    s.add_argument("gpus", type=int, help="GPUs the command takes: its ranks on this node (0: it sees none)")
    s.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments")
    s.set_defaults(func=_gpu_slots)

    s = sub.add_parser("status", help="per stage: jobs done, running and failed, with the last line of each "
                                      "running or failed job's log")
    s.add_argument("--results", default="results", help="results directory (default: %(default)s)")
    s.add_argument("--snakemake-logs", default=".snakemake/log",
                   help="Snakemake's log folder, or one of its logs (default: %(default)s)")
    s.set_defaults(func=_status)

    s = sub.add_parser("summary", help="print where the pipeline's outputs are")
    s.add_argument("--results", default="results", help="results directory (default: %(default)s)")
    s.set_defaults(func=_summary)
    for name, command in sub.choices.items():
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = f"example:\n  pssl {name} {EXAMPLES[name]}"
    return p


# One example per command, shown under its --help (paths as the workflow lays them out).
EXAMPLES = {
    "demo-data": "--out data/demo --num-classes 6 --images-per-class 32",
    "index": "--root /data/imagenet/train --out results/index.parquet",
    "shard": "--index results/index.parquet --shard-size 5000 --out results/shards",
    "zoo": "--spec '\"resnet50\"' --source timm --out results/zoo/resnet50.pt --cache-dir /shared/weights",
    "zoo-fetch": "--arch resnet50 --arch vgg16_bn --cache-dir /shared/weights",
    "explain": "--shard results/shards/shard-00000.parquet --zoo results/zoo/*.pt "
               "--out results/explain/shard-00000.zarr --image-size 224 --n-samples 50",
    "eval-explain": "--stores results/explain/*.zarr --index results/index.parquet --masks data/demo/imagenet/masks "
                    "--out results/report/explain_quality.csv",
    "inspect": "results/explain/shard-00000.zarr",
    "show": "results/explain/shard-00000.zarr --index 3 --out d.png --model-deciles",
    "label": "--shard results/shards/shard-00000.parquet --store results/explain/shard-00000.zarr "
             "--zoo results/zoo/*.pt --out results/labels/shard-00000.parquet --policy gt",
    "pretrain": "--stores results/explain/*.zarr --labels results/labels/*.parquet --out-dir results/pretrain/psp/main "
                "--head pspnet --backbone resnet50d --backbone-init results/zoo/resnet50d.pt --epochs 30",
    "pretrain-mdp": "--roots voc_aug=/data/segmentation ade20k=/data/segmentation --out-dir results/mdp/psp "
                    "--head pspnet --backbone resnet50d --datasets voc_aug ade20k",
    "pretrain-ms3": "--roots voc_aug=/data/segmentation ade20k=/data/segmentation --out-dir results/ms3/psp "
                    "--head pspnet --backbone resnet50d --class-embeddings results/ms3/class_embeddings.parquet",
    "ms3-mapping": "--model results/ms3/psp/final.pt --out results/report/ms3_mapping_psp.csv --figure "
                   "results/report/ms3_text_similarity_psp.png",
    "mdp-prototypes": "--model results/mdp/psp/final.pt --out results/report/mdp_prototypes.csv --figure "
                      "results/report/mdp_prototypes.png",
    "embed-classes": "--datasets voc_aug ade20k --source minilm --out results/class_embeddings.parquet "
                     "--nearest results/report/class_embeddings_nearest.csv",
    "eval-pretrain": "--models results/pretrain/*/main/final.pt --stores results/explain/*.zarr --index "
                     "results/index.parquet --masks data/demo/imagenet/masks --out pretrain_quality.csv",
    "finetune": "--dataset camvid --root /data/segmentation --head pspnet --backbone resnet50d --init pssl "
                "--init-from results/pretrain/psp/main/final.pt --out-dir ft --crop 480 --base-size 520 "
                "--eval-split test",
    "self-train": "--dataset cityscapes --root /data/segmentation --head pspnet --backbone resnet50d --init pssl "
                  "--init-from results/pretrain/psp/main/final.pt --out-dir st --pseudo "
                  "results/pseudo/cityscapes/psp/pssl/seed0/pool-*/pseudo.parquet --multiplier 7",
    "teacher-labels": "--selected results/finetune/cityscapes/psp/pssl/seed0/metrics.json --runs "
                      "results/finetune/cityscapes/psp/pssl/seed0/lr*/metrics.json --dataset cityscapes --pool "
                      "/data/segmentation/cityscapes/leftImg8bit/train_extra --out-dir pool-0 --base-size 1024 "
                      "--window 1024 --scales 0.75 1.0 1.25 --flip true",
    "pseudo-quality": "--tables results/pseudo/*/*/*/seed*/pool-*/pseudo.parquet --truth "
                      "cityscapes=data/demo/pool_truth/cityscapes --out results/report/selftrain_quality.csv "
                      "--figure results/report/selftrain_labels.png",
    "eval-classify": "--model results/pretrain/psp/main/final.pt --index results/index.parquet "
                     "--root /data/imagenet/val --out results/classify/psp/pssl.json",
    "figure3": "--model results/pretrain/psp/main/final.pt --dataset voc_aug --root /data/segmentation "
               "--index results/index.parquet --images 3 --contains person --out results/report/figure3.png",
    "select-lr": "--runs ft/lr0.01/metrics.json ft/lr0.02/metrics.json --cell dataset=camvid model=psp "
                 "init=imagenet seed=0 --out ft/metrics.json",
    "lr-search-round": "--runs ft/lr0.005/metrics.json ft/lr0.01/metrics.json ft/lr0.02/metrics.json --ladder 0.001 "
                       "0.002 0.005 0.01 0.02 0.05 --start 0.01 --out ft/lr_search/round0.json",
    "plan": "--configfile presets/paper.yaml --config imagenet_root=/data/imagenet/train "
            "downstream_root=/data/segmentation imagenet_val_root=/data/imagenet/val --profile profiles/slurm",
    "table3": "--cells results/finetune/*/*/*/seed*/metrics.json --out results/report",
    "report": "--out results/report --stores results/explain/*.zarr --experiments results/report/experiments/*.csv",
    "sanity": "--index results/pilot/index.parquet --labels results/pilot/labels/*.parquet --stores "
              "results/pilot/explain/*.zarr --pretrained results/pilot/pretrain/*/main/final.pt --cells "
              "results/pilot/finetune/*/*/*/seed*/metrics.json --config presets/pilot.yaml "
              "--out results/pilot/report/sanity.csv",
    "experiment-table": "--name table2 --title 'Table 2' --cells results/finetune/voc_aug/dlv3/*/seed*/metrics.json "
                        "--variants '{\"50k\": {\"images\": 50000}, \"main\": null}' --datasets voc_aug "
                        "--imagenet true "
                        "--out-dir results/report/experiments",
    "runtimes": "--configfile presets/paper.yaml cluster.yaml",
    "fake-tree": "--out /tmp/fake-data",
    "config": "--configfile presets/paper.yaml --config finetune='{seeds: [0, 1, 2]}'",
    "summary": "--results results",
    "gpu-slots": "2 -- torchrun --standalone --nproc_per_node 2 -m pssl pretrain ...",
    "status": "--results results/pilot",
}


def configure_logging() -> None:
    """Every message of the library, progress lines included, goes through the `pssl` loggers to stderr
    (the rules redirect it into the job's log); distributed jobs quiet the non-primary ranks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def named_paths(args: argparse.Namespace) -> set[str]:
    """Every string the command line gave (a path among them)."""
    values = [v for value in vars(args).values() for v in (value if isinstance(value, list) else [value])]
    return {str(v) for v in values if isinstance(v, (str, os.PathLike))}


def input_error(error: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message of an error in the user's input, None for any other (a bug keeps its traceback):
    pssl's InputError, or a file the command line named that does not exist or cannot be read."""
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, (FileNotFoundError, NotADirectoryError, PermissionError)):
        path = error.filename if error.filename is not None else str(error)  # pyarrow's: the bare path
        if str(path) in named_paths(args):
            return f"{(error.strerror or 'no such file or directory').lower()}: {path}"
    return None


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    keep_freed_memory()  # before any tensor work: large CPU tensors otherwise spend their time in page faults
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as error:
        message = input_error(error, args)
        if message is None or args.debug or os.environ.get("PSSL_DEBUG"):
            raise
        print(f"pssl {args.command}: error: {message} (--debug or PSSL_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
