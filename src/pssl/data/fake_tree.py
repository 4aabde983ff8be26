"""Empty data trees in the real layouts (`pssl fake-tree`): a preset's data checks pass and Snakemake plans
its whole DAG on them, so anyone can dry-run and cost a run (`pssl plan`) before the data exists. No file
holds an image; the jobs would fail on them, the plan does not read them.

The downstream folders and list files are each dataset's documented `layout` (pssl.data.downstream), so the
tree cannot drift from what the checks expect.
"""

from __future__ import annotations

from pathlib import Path

from pssl.data.downstream import DATASETS, layout
from pssl.data.pool import pool_dir

IMAGENET_CLASSES = 1000  # ILSVRC-2012's class folders


def fake_imagenet(root: str | Path, images_per_class: int, classes: int = IMAGENET_CLASSES) -> Path:
    """<root>/<wnid>/<wnid>_<n>.JPEG: class folders of empty files (the index reads only listings)."""
    root = Path(root)
    for c in range(classes):
        wnid = f"n{c:08d}"
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class):
            (root / wnid / f"{wnid}_{n}.JPEG").touch()
    return root


def fake_downstream(root: str | Path, splits: dict[str, tuple[str, ...]] | None = None) -> Path:
    """The documented folders and list files of every dataset and split (default: every dataset's annotated
    splits), empty, and the unlabelled pool folder of a dataset that has one (Cityscapes' train_extra)."""
    root = Path(root)
    for dataset, names in (splits or {name: spec.splits for name, spec in DATASETS.items()}).items():
        for split in names:
            for path in layout(dataset, root, split):
                if path.suffix == ".txt":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                else:
                    path.mkdir(parents=True, exist_ok=True)
        if DATASETS[dataset].pool:
            pool_dir(dataset, root).mkdir(parents=True, exist_ok=True)
    return root


def fake_trees(out: str | Path, images_per_class: int = 1) -> dict[str, str]:
    """ImageNet train and val and the downstream sets under `out`; the config keys that point to them."""
    out = Path(out)
    roots = {"imagenet_root": fake_imagenet(out / "imagenet/train", images_per_class),
             "imagenet_val_root": fake_imagenet(out / "imagenet/val", 1),
             "downstream_root": fake_downstream(out / "segmentation")}
    return {key: str(path.resolve()) for key, path in roots.items()}
