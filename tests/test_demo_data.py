"""Demo data: determinism and the real on-disk layouts, read back with plain PIL / text readers."""

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY_DEMO
from pssl.data.downstream import DATASETS
from pssl.data.downstream.cityscapes import CITYSCAPES_LABELID_TO_TRAINID
from pssl.demo.make import make_demo_data, wnid


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tiny_demo, tmp_path):
    again = tmp_path / "again"
    make_demo_data(again, TINY_DEMO)
    assert tree_digest(again) == tree_digest(tiny_demo)


def test_other_seed_gives_other_images(tiny_demo, tmp_path):
    other = tmp_path / "other"
    make_demo_data(other, replace(TINY_DEMO, seed=1))
    a, b = tree_digest(tiny_demo), tree_digest(other)
    changed = [k for k in a if k.endswith(".JPEG") and a[k] != b.get(k)]
    assert len(changed) > 0.9 * sum(k.endswith(".JPEG") for k in a)


def test_imagenet_layout_and_masks(tiny_demo):
    train = tiny_demo / "imagenet" / "train"
    assert sorted(p.name for p in train.iterdir()) == [wnid(k) for k in range(3)]
    files = sorted(train.glob("*/*.JPEG"))
    assert len(files) == 3 * 6
    mapping = (tiny_demo / "imagenet" / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split()[0] for line in mapping] == [wnid(k) for k in range(3)]
    for f in files:
        assert f.name.startswith(f.parent.name + "_")
        img = Image.open(f)
        mask = np.asarray(Image.open(tiny_demo / "imagenet/masks" / f.parent.name / f"{f.stem}.png"))
        assert mask.shape == (img.height, img.width)
        assert set(np.unique(mask)) <= {0, 255}
        assert 0.02 < (mask > 0).mean() < 0.9, "one object of varied but visible size"
        assert 40 <= max(img.size) <= 80


def test_odd_files_as_in_real_imagenet(tmp_path):
    out = tmp_path / "demo"
    manifest = make_demo_data(out, replace(TINY_DEMO, images_per_class=10))
    kinds = {}
    for name, kind in manifest["imagenet"]["odd_files"].items():
        img = Image.open(out / "imagenet/train" / name.rsplit("_", 1)[0] / name)
        kinds[kind] = (img.format, img.mode)
    assert kinds == {"cmyk": ("JPEG", "CMYK"), "gray": ("JPEG", "L"), "png": ("PNG", "RGB")}


def _label_values(paths):
    return set(np.unique(np.concatenate([np.asarray(Image.open(p)).ravel() for p in paths])).tolist())


def test_camvid_segnet_layout(tiny_demo):
    base = tiny_demo / "CamVid"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        images = sorted((base / split).glob("*.png"))
        labels = sorted((base / f"{split}annot").glob("*.png"))
        assert [p.name for p in images] == [p.name for p in labels] and len(images) == n
        assert len((base / f"{split}.txt").read_text().splitlines()) == n
        for image, label in zip(images, labels):
            assert Image.open(image).mode == "RGB" and Image.open(label).mode == "L"
            assert Image.open(image).size == Image.open(label).size
        assert _label_values(labels) <= set(range(12))


def test_voc_aug_layout(tiny_demo):
    base = tiny_demo / "VOCdevkit/VOC2012"
    train = (base / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    val = (base / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 4 and len(val) == 2 and not set(train) & set(val)
    labels = [base / "SegmentationClassAug" / f"{s}.png" for s in train + val]
    for s in train + val:
        assert Image.open(base / "JPEGImages" / f"{s}.jpg").format == "JPEG"
    values = _label_values(labels)
    assert values <= set(range(21)) | {255} and 255 in values and 0 in values


def test_pascal_context_layout(tiny_demo):
    base = tiny_demo / "VOCdevkit/VOC2010"
    for split in ("train", "val"):
        stems = (base / f"ImageSets/SegmentationContext/{split}.txt").read_text().split()
        assert len(stems) == {"train": 4, "val": 2}[split]  # the tiny demo's downstream sizes
        assert _label_values([base / "SegmentationClassContext" / f"{s}.png" for s in stems]) <= set(range(60))


def test_ade20k_layout(tiny_demo):
    base = tiny_demo / "ADEChallengeData2016"
    for sub, prefix, n in (("training", "ADE_train_", 4), ("validation", "ADE_val_", 2)):
        images = sorted((base / "images" / sub).glob("*.jpg"))
        annots = sorted((base / "annotations" / sub).glob("*.png"))
        assert len(images) == n and [p.stem for p in images] == [p.stem for p in annots]
        assert all(p.name.startswith(prefix) for p in images)
        assert _label_values(annots) <= set(range(151))


def test_cityscapes_layout_uses_label_ids(tiny_demo):
    base = tiny_demo / "cityscapes"
    for split, n in (("train", 4), ("val", 2)):
        images = sorted((base / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == n
        labels = [Path(str(p).replace("leftImg8bit/", "gtFine/").replace("_leftImg8bit", "_gtFine_labelIds"))
                  for p in images]
        assert all(label.exists() for label in labels)
        values = _label_values(labels)
        assert values <= set(CITYSCAPES_LABELID_TO_TRAINID) | {0}
        # label ids, not train ids: decoding gives valid train ids
        assert set(DATASETS["cityscapes"].decode[sorted(values)]) <= set(range(19)) | {255}
