"""`pssl` command line: parses arguments and calls one library function per command; no logic here."""

from __future__ import annotations

import argparse
import logging
import sys


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
