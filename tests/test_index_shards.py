"""Index order, class ids, unlabelled trees; shard boundaries including the last partial shard."""

import pandas as pd
import pytest

from pssl.data.imagenet import build_index, scan_imagenet
from pssl.settings import IndexSettings
from pssl.shards import list_shards, write_shards
from pssl.tables import read_table


def make_tree(root, layout):
    for rel in layout:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not decoded by the index")
    return root


def test_index_sorted_paths_and_wnid_positions(tmp_path):
    root = make_tree(tmp_path / "train", ["n02/n02_10.JPEG", "n02/n02_9.JPEG", "n01/n01_1.JPEG", "n03/a.png",
                                          "n01/.hidden.JPEG", "n01/notes.txt", "n03/sub/deep.JPEG"])
    frame, classes = scan_imagenet(root)
    assert classes == ["n01", "n02", "n03"]
    assert frame["relpath"].tolist() == ["n01/n01_1.JPEG", "n02/n02_10.JPEG", "n02/n02_9.JPEG", "n03/a.png"]
    assert frame["image_id"].tolist() == [0, 1, 2, 3]
    assert frame["class_idx"].tolist() == [0, 1, 1, 2]
    assert frame["wnid"].tolist() == ["n01", "n02", "n02", "n03"]
    assert frame["image_id"].dtype == "int64"


def test_empty_class_folder_keeps_its_class_position(tmp_path):
    root = make_tree(tmp_path / "train", ["n01/a.JPEG", "n03/b.JPEG"])
    (root / "n02").mkdir()
    frame, classes = scan_imagenet(root)
    assert classes == ["n01", "n02", "n03"] and frame["class_idx"].tolist() == [0, 2]


def test_tree_without_class_folders_is_unlabelled(tmp_path):
    frame, classes = scan_imagenet(make_tree(tmp_path / "flat", ["b.jpg", "a.JPEG"]))
    assert classes == [] and frame["relpath"].tolist() == ["a.JPEG", "b.jpg"]
    assert (frame["class_idx"] == -1).all()


def test_unlabelled_flag(tmp_path):
    frame, classes = scan_imagenet(make_tree(tmp_path / "t", ["n01/a.JPEG", "n02/b.JPEG"]), labelled=False)
    assert classes == [] and (frame["class_idx"] == -1).all() and frame["wnid"].tolist() == ["n01", "n02"]


def test_missing_or_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_imagenet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        scan_imagenet(tmp_path / "empty")


def test_index_of_demo_tree_with_metadata(tiny_demo, tmp_path):
    out = tmp_path / "index.parquet"
    build_index(tiny_demo / "imagenet/train", out)
    frame, meta = read_table(out)
    assert list(frame.columns) == ["image_id", "relpath", "wnid", "class_idx"]
    assert len(frame) == 18 and sorted(frame["class_idx"].unique()) == [0, 1, 2]
    assert meta["classes"] == sorted(frame["wnid"].unique()) and meta["root"].endswith("imagenet/train")


def test_a_slice_spreads_its_classes_and_takes_the_first_images(tmp_path):
    """imagenet_subset (the pilot): every n/classes-th sorted folder, the first images by file name, no loose
    files; classes and positions are the slice's own, as for a tree of symlinks to the same files."""
    root = make_tree(tmp_path / "train", [f"n{c:02d}/{c}_{i}.JPEG" for c in range(10) for i in range(4)] +
                     ["loose.JPEG"])
    frame, classes = scan_imagenet(root, subset=IndexSettings(classes=5, images_per_class=2))
    assert classes == ["n00", "n02", "n04", "n06", "n08"]
    assert frame["relpath"].tolist()[:4] == ["n00/0_0.JPEG", "n00/0_1.JPEG", "n02/2_0.JPEG", "n02/2_1.JPEG"]
    assert len(frame) == 10 and frame["class_idx"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    capped, all_classes = scan_imagenet(root, subset=IndexSettings(images_per_class=1))
    assert len(all_classes) == 10 and len(capped) == 11 and "loose.JPEG" in capped["relpath"].tolist()
    assert scan_imagenet(root, subset=IndexSettings(classes=10))[0]["relpath"].tolist() == \
        [r for r in scan_imagenet(root)[0]["relpath"] if r != "loose.JPEG"]  # all folders, no loose file
    with pytest.raises(ValueError, match="asks for 11 classes, the tree has 10 class folders"):
        scan_imagenet(root, subset=IndexSettings(classes=11))
    build_index(root, tmp_path / "index.parquet", subset=IndexSettings(classes=5, images_per_class=2))
    meta = read_table(tmp_path / "index.parquet")[1]
    assert meta["classes"] == classes and meta["subset"] == {"classes": 5, "images_per_class": 2}
    build_index(root, tmp_path / "whole.parquet")
    assert "subset" not in read_table(tmp_path / "whole.parquet")[1]


@pytest.mark.parametrize("n, size, expected", [(10, 3, [3, 3, 3, 1]), (9, 3, [3, 3, 3]), (2, 5, [2])])
def test_shards_are_contiguous_blocks(tmp_path, n, size, expected):
    root = make_tree(tmp_path / "train", [f"n01/{i:03d}.JPEG" for i in range(n)])
    build_index(root, tmp_path / "index.parquet")
    names = write_shards(tmp_path / "index.parquet", size, tmp_path / "shards")
    assert names == list_shards(tmp_path / "shards") == [f"shard-{i:05d}" for i in range(len(expected))]
    parts = [read_table(tmp_path / "shards" / f"{s}.parquet")[0] for s in names]
    assert [len(p) for p in parts] == expected
    whole = pd.concat(parts, ignore_index=True)
    assert whole.equals(read_table(tmp_path / "index.parquet")[0])
    assert read_table(tmp_path / "shards" / f"{names[-1]}.parquet")[1]["shard"] == names[-1]
