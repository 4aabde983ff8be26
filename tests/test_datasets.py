"""The dataset registry: one spec per dataset, read by the reader, the demo, the report, the CLI and the schema."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, TINY_DEMO
from pssl.data.downstream import DATASETS, DatasetSpec, SegmentationSet, missing_paths, register_dataset
from pssl.data.downstream.base import lookup_table, need
from pssl.demo.make import make_demo_data
from pssl.demo.scenes import DemoScenes, size_range


class FlatFolders(DatasetSpec):
    """A sixth dataset as a user would add it: <root>/flat/<split>/{images,labels}/<name>.png, raw = id + 1."""
    name, title = "flat", "Flat"
    classes = ("road", "car", "person")
    decode = lookup_table({1: 0, 2: 1, 3: 2})
    documented_ignore = frozenset({0})
    train_images = 100
    demo = DemoScenes((("road", True, 1002), ("car", False, 1), ("person", False, 1005)), background=None,
                      ignore_raw=0, size=size_range((40, 48), (56, 64)), splits=("train", "val"))

    def layout(self, root: Path, split: str) -> list[Path]:
        return [root / "flat" / split / "images", root / "flat" / split / "labels"]

    def pairs(self, paths):
        images, labels = paths
        return [(p, need(labels / p.name)) for p in sorted(images.glob("*.png"))]

    def write_demo(self, root, split, i, img, lab):
        for d in ("images", "labels"):
            (root / "flat" / split / d).mkdir(parents=True, exist_ok=True)
        img.save(root / "flat" / split / "images" / f"{i:04d}.png")
        lab.save(root / "flat" / split / "labels" / f"{i:04d}.png")


@pytest.fixture
def flat_registered():
    register_dataset(FlatFolders)
    yield DATASETS["flat"]
    del DATASETS["flat"]


def test_a_new_dataset_is_one_class(flat_registered, tmp_path):
    """Registering the class is all it takes: the demo writes it in its layout, the reader decodes it, the
    layout check names its folders, and the five real datasets' demo files do not change."""
    with_flat = make_demo_data(tmp_path / "a", TINY_DEMO)
    assert with_flat["downstream"]["flat"]["images"] == {"train": 4, "val": 2}
    data = SegmentationSet("flat", tmp_path / "a", "train")
    rgb, labels = data.read(0)
    raw = np.asarray(Image.open(data.pairs[0][1]))
    assert rgb.shape[:2] == labels.shape and np.array_equal(labels[raw == 0], np.full((raw == 0).sum(), 255))
    assert set(np.unique(labels)) - {255} <= {0, 1, 2} and not data.unexpected
    assert missing_paths("flat", tmp_path / "nowhere", ["train"]) == [tmp_path / "nowhere/flat/train/images",
                                                                      tmp_path / "nowhere/flat/train/labels"]
    del DATASETS["flat"]
    without = make_demo_data(tmp_path / "b", TINY_DEMO)
    register_dataset(FlatFolders)  # the fixture removes it again
    for name in without["downstream"]:
        for split in DATASETS[name].demo.splits:
            first = SegmentationSet(name, tmp_path / "a", split).pairs[0][1]
            assert first.read_bytes() == (tmp_path / "b" / first.relative_to(tmp_path / "a")).read_bytes()


def test_dataset_names_agree_everywhere():
    """The CLI's choices and the config schema's dataset keys are the registry's names, in its order."""
    from pssl.cli import build_parser
    finetune = build_parser()._subparsers._group_actions[0].choices["finetune"]
    assert next(a for a in finetune._actions if a.dest == "dataset").choices == list(DATASETS)
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    datasets = schema["properties"]["finetune"]["properties"]["datasets"]
    assert datasets["propertyNames"]["enum"] == list(DATASETS)


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_spec_is_complete_and_consistent(name):
    spec = DATASETS[name]
    assert spec.title and spec.train_images > 0 and set(spec.demo.splits) <= set(spec.splits)
    encoded = spec.encode()
    assert sorted(encoded) == list(range(spec.num_classes)), "every class has exactly one raw value"
    assert all(spec.decode[raw] == train_id for train_id, raw in encoded.items())
    assert not set(encoded.values()) & spec.documented_ignore
    assert {c for c, _, _ in spec.demo.classes} <= set(spec.classes)
    with pytest.raises(ValueError, match="no annotated 'nosuch' split"):
        missing_paths(name, "/x", ["nosuch"])
