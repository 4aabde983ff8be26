"""`pssl` command line: parses arguments and calls one library function per command; no logic here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys


SEGMENTATION_HEADS = ["pspnet", "deeplabv3", "ocrnet"]  # pssl.models.segmenter.HEADS, without importing torch


def parse_bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field (snake_case -> kebab-case), typed from the field's default."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, type=parse_bool, default=f.default, metavar="BOOL")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)


def add_long_job_flags(parser: argparse.ArgumentParser, distributed: bool) -> None:
    """Flags of the jobs that survive SLURM time limits (explain, pretrain, finetune)."""
    parser.add_argument("--requeue-margin-min", type=float, default=15.0,
                        help="under SLURM: save and requeue the job this many minutes before its time limit")
    if distributed:
        parser.add_argument("--expect-world", type=int, default=None,
                            help="ranks the job must start as (nodes x GPUs per node); another count fails at once")


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _demo_data(a):
    from pssl.data.demo import make_demo_data
    make_demo_data(a.out, seed=a.seed, num_classes=a.num_classes, images_per_class=a.images_per_class,
                   min_side=a.min_side, max_side=a.max_side, downstream_train=a.downstream_train,
                   downstream_val=a.downstream_val)


def _index(a):
    from pssl.data.imagenet import build_index
    build_index(a.root, a.out, labelled=not a.unlabelled)


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
        zoo_from_scratch(spec, a.index, a.out, image_size=a.image_size, epochs=a.epochs,
                         batch_size=a.batch_size, lr=a.lr, holdout=a.holdout, seed=a.seed, device=a.device)


def _zoo_fetch(a):
    from pssl.models.zoo import fetch_pretrained
    for arch in a.arch:
        fetch_pretrained(arch, a.cache_dir)


def _explain(a):
    from pssl.device import set_threads
    from pssl.explain.run import explain_shard
    from pssl.params import ExplainParams
    set_threads(a.threads)
    explain_shard(a.shard, a.zoo, a.out, dataclass_from_args(ExplainParams, a), device=a.device,
                  num_workers=a.num_workers, requeue_margin_min=a.requeue_margin_min)


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
    label_shard(a.shard, a.store, a.zoo, a.out, policy=a.policy, top_k=a.top_k, min_conf=a.min_conf,
                decile_threshold=a.decile_threshold, device=a.device, num_workers=a.num_workers)


def _pretrain(a):
    from pssl.device import set_threads
    from pssl.params import TrainParams
    from pssl.train.pretrain import pretrain
    set_threads(a.threads)
    pretrain(a.stores, a.labels, a.out_dir, a.head, a.backbone, a.crop, a.backbone_init,
             w_bg=a.w_bg, decile_threshold=a.decile_threshold, ignore_deciles=tuple(a.ignore_deciles),
             params=dataclass_from_args(TrainParams, a), device=a.device, pad_label=a.pad_label,
             expect_world=a.expect_world, requeue_margin_min=a.requeue_margin_min)


def _eval_pretrain(a):
    from pssl.explain.quality import pretrain_quality
    pretrain_quality(a.models, a.stores, a.index, a.masks, a.out, device=a.device)


def _finetune(a):
    from pssl.device import set_threads
    from pssl.train.finetune import finetune
    from pssl.params import TrainParams
    set_threads(a.threads)
    finetune(a.dataset, a.root, a.head, a.backbone, a.init, a.init_from, a.out_dir, a.crop, a.base_size,
             dataclass_from_args(TrainParams, a), scales=tuple(a.scales), flip=a.flip, window=a.window,
             eval_split=a.eval_split, device=a.device, expect_world=a.expect_world,
             requeue_margin_min=a.requeue_margin_min)


def _select_lr(a):
    from pssl.report.lr_grid import select_best_lr
    select_best_lr(a.runs, a.out)


def _report(a):
    from pssl.report.table3 import write_report
    print(write_report(a.cells, a.out, json.loads(a.titles), a.stores, a.quality))


def _summary(a):
    from pssl.report.summary import summarize
    print(summarize(a.results))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pssl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo-data", help="synthesise the embedded demo data")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--images-per-class", type=int, default=40)
    s.add_argument("--min-side", type=int, default=80)
    s.add_argument("--max-side", type=int, default=200)
    s.add_argument("--downstream-train", type=int, default=60)
    s.add_argument("--downstream-val", type=int, default=20)
    s.set_defaults(func=_demo_data)

    s = sub.add_parser("index", help="index an ImageNet-layout tree into index.parquet")
    s.add_argument("--root", required=True, help="directory holding <wnid>/<image> folders")
    s.add_argument("--out", required=True)
    s.add_argument("--unlabelled", action="store_true", help="ignore class folders (class_idx -1)")
    s.set_defaults(func=_index)

    s = sub.add_parser("shard", help="split index.parquet into contiguous shards")
    s.add_argument("--index", required=True)
    s.add_argument("--shard-size", type=int, required=True)
    s.add_argument("--out", required=True, help="shard directory")
    s.set_defaults(func=_shard)

    s = sub.add_parser("zoo", help="build one classifier of the zoo (train from scratch, or timm weights)")
    s.add_argument("--spec", required=True, help='JSON: "timm_name" or {"name", "arch", "kwargs"}')
    s.add_argument("--source", choices=["train", "timm"], required=True)
    s.add_argument("--out", required=True, help="zoo/<name>.pt (a .json record is written beside it)")
    s.add_argument("--index", help="index.parquet (source train)")
    s.add_argument("--cache-dir", default=None, help="timm weights cache (source timm)")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--holdout", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=_zoo)

    s = sub.add_parser("zoo-fetch", help="download pretrained timm weights into the cache (needs network)")
    s.add_argument("--arch", action="append", required=True)
    s.add_argument("--cache-dir", default=None)
    s.set_defaults(func=_zoo_fetch)

    from pssl.params import ExplainParams
    s = sub.add_parser("explain", help="SmoothGrad ensemble deciles of one shard into a zarr store")
    s.add_argument("--shard", required=True)
    s.add_argument("--zoo", nargs="+", required=True, help="zoo/<name>.pt files, the ensemble's members")
    s.add_argument("--out", required=True, help="explain/<shard>.zarr")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--num-workers", type=int, default=0)
    add_long_job_flags(s, distributed=False)
    add_dataclass_flags(s, ExplainParams)
    s.set_defaults(func=_explain)

    s = sub.add_parser("eval-explain", help="pseudo-label quality against object masks (demo)")
    s.add_argument("--stores", nargs="+", required=True)
    s.add_argument("--index", required=True)
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

    s = sub.add_parser("label", help="teacher inference and pseudo-label policy for one shard")
    s.add_argument("--shard", required=True)
    s.add_argument("--store", required=True, help="explain/<shard>.zarr")
    s.add_argument("--zoo", nargs="+", required=True, help="teacher: zoo/<name>.pt files (mean softmax)")
    s.add_argument("--out", required=True, help="labels/<shard>.parquet")
    s.add_argument("--policy", choices=["gt", "teacher", "agree"], default="gt")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--min-conf", type=float, default=0.0)
    s.add_argument("--decile-threshold", type=int, default=9)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--num-workers", type=int, default=0)
    s.set_defaults(func=_label)

    from pssl.data.downstream import DATASETS
    from pssl.params import TrainParams
    s = sub.add_parser("pretrain", help="pre-train a segmentation model on the pseudo labels (torchrun/srun)")
    s.add_argument("--stores", nargs="+", required=True)
    s.add_argument("--labels", nargs="+", required=True, help="labels/<shard>.parquet, same order as --stores")
    s.add_argument("--out-dir", required=True, help="pretrain/<model>: checkpoints, log.csv, final.pt")
    s.add_argument("--head", required=True, choices=SEGMENTATION_HEADS)
    s.add_argument("--backbone", required=True, help="timm name")
    s.add_argument("--backbone-init", default=None, help="zoo/<name>.pt of the backbone's architecture")
    s.add_argument("--crop", type=int, default=256)
    s.add_argument("--w-bg", type=float, default=0.1)
    s.add_argument("--pad-label", choices=["ignore", "background"], default="ignore",
                   help="label of padded pixels (crop, rotation)")
    s.add_argument("--decile-threshold", type=int, default=9)
    s.add_argument("--ignore-deciles", type=int, nargs="*", default=[])
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)
    add_long_job_flags(s, distributed=True)
    add_dataclass_flags(s, TrainParams)
    s.set_defaults(func=_pretrain)

    s = sub.add_parser("eval-pretrain", help="pre-trained models' foreground vs object masks (demo)")
    s.add_argument("--models", nargs="+", required=True, help="pretrain/<model>/final.pt")
    s.add_argument("--stores", nargs="+", required=True)
    s.add_argument("--index", required=True)
    s.add_argument("--masks", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_eval_pretrain)

    s = sub.add_parser("finetune", help="fine-tune on a downstream dataset and evaluate it")
    s.add_argument("--dataset", required=True, choices=list(DATASETS))
    s.add_argument("--root", required=True, help="directory holding the dataset's standard folder")
    s.add_argument("--head", required=True, choices=SEGMENTATION_HEADS)
    s.add_argument("--backbone", required=True)
    s.add_argument("--init", required=True, choices=["imagenet", "pssl"])
    s.add_argument("--init-from", required=True, help="zoo/<arch>.pt (imagenet) or pretrain/<model>/final.pt")
    s.add_argument("--out-dir", required=True, help="metrics.json, final.pt, log.csv (resume checkpoints while it runs)")
    s.add_argument("--crop", type=int, required=True)
    s.add_argument("--base-size", type=int, required=True,
                   help="training: long side random in [0.5, 2] x base; evaluation: long side = scale x base")
    s.add_argument("--eval-split", choices=["val", "test"], default="val",
                   help="split the metrics report (the learning rate is always chosen on val)")
    s.add_argument("--scales", type=float, nargs="+", default=[1.0])
    s.add_argument("--flip", type=parse_bool, default=False, metavar="BOOL")
    s.add_argument("--window", type=int, default=None, help="sliding-window size for evaluation")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None)
    add_long_job_flags(s, distributed=True)
    add_dataclass_flags(s, TrainParams)
    s.set_defaults(func=_finetune)

    s = sub.add_parser("select-lr", help="keep the best learning rate (val mIoU) of a lr grid")
    s.add_argument("--runs", nargs="+", required=True, help="metrics.json of each lr")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_select_lr)

    s = sub.add_parser("report", help="Table 3 (CSV, Markdown, figure) and the pseudo-label gallery")
    s.add_argument("--cells", nargs="+", required=True, help="finetune/<dataset>/<model>/<init>/metrics.json")
    s.add_argument("--out", required=True, help="report directory")
    s.add_argument("--titles", default="{}", help='JSON: model name -> column title')
    s.add_argument("--stores", nargs="+", required=True, help="explain stores for the gallery")
    s.add_argument("--quality", nargs="*", default=[], help="quality CSV tables to append (demo)")
    s.set_defaults(func=_report)

    s = sub.add_parser("summary", help="print where the pipeline's outputs are")
    s.add_argument("--results", default="results")
    s.set_defaults(func=_summary)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
