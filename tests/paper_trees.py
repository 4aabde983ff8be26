"""Empty data trees in the real layouts, for dry runs of the paper preset (no image is ever decoded)."""

from pathlib import Path

from pssl.data.downstream import layout

IMAGENET_CLASSES = 1000


def fake_imagenet(root: Path, images_per_class: int) -> Path:
    """<root>/<wnid>/<wnid>_<n>.JPEG: 1000 class folders of empty files (the index reads only listings)."""
    for c in range(IMAGENET_CLASSES):
        wnid = f"n{c:08d}"
        (root / wnid).mkdir(parents=True)
        for n in range(images_per_class):
            (root / wnid / f"{wnid}_{n}.JPEG").touch()
    return root


def fake_downstream(root: Path, splits: dict[str, tuple[str, ...]]) -> Path:
    """The documented folders and list files of every dataset and split, empty."""
    for dataset, names in splits.items():
        for split in names:
            for path in layout(dataset, root, split):
                if path.suffix == ".txt":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                else:
                    path.mkdir(parents=True, exist_ok=True)
    return root
