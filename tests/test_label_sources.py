"""The pre-training label sources (the method and its controls) against hand computations."""

import numpy as np
import pytest
from PIL import Image

from pssl.data.label_sources import centre_ellipse, derangement, foreground, read_object_mask


@pytest.mark.parametrize("n", [2, 3, 7, 100])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(20):
        partner = derangement(n, seed)
        assert sorted(partner.tolist()) == list(range(n))
        assert (partner != np.arange(n)).all()
    assert derangement(2, 0).tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_centre_ellipse_by_hand():
    square = centre_ellipse(4, (4, 4))
    assert square.astype(int).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    # a 4 x 8 map: the ellipse takes the map's proportions, so 8 pixels are the central 2 x 4 block
    wide = centre_ellipse(8, (4, 8))
    assert wide.astype(int).tolist() == [[0] * 8, [0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0], [0] * 8]
    assert not centre_ellipse(0, (4, 4)).any() and centre_ellipse(16, (4, 4)).all()


def test_centre_has_exactly_the_area_of_the_images_own_region():
    rng = np.random.default_rng(0)
    for _ in range(10):
        deciles = rng.integers(0, 10, (24, 24)).astype(np.uint8)
        centre = foreground("centre", deciles, 9)
        assert centre.sum() == (deciles == 9).sum()
        assert centre[12, 12] == 1 and centre[0, 0] == 0  # centred


def test_shuffled_takes_the_partners_region_and_deciles_their_own():
    own, other = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    own[0, 0], other[3, 3] = 9, 9
    assert foreground("deciles", own, 9).tolist() == (own == 9).astype(int).tolist()
    assert foreground("shuffled", own, 9, partner_deciles=other).tolist() == (other == 9).astype(int).tolist()
    with pytest.raises(ValueError, match="label source"):
        foreground("nope", own, 9)


def test_object_masks_in_the_demo_and_the_imagenet_s_layouts(tmp_path):
    binary = np.zeros((4, 4), np.uint8)
    binary[1:3, 1:3] = 255
    Image.fromarray(binary).save(tmp_path / "demo.png")
    assert read_object_mask(tmp_path / "demo.png", 4).tolist() == (binary > 127).astype(int).tolist()
    ids = np.array([[0, 5, 300, 1000]] * 4)  # background, two class ids (one above 255), ignored
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "imagenet_s.png")
    assert read_object_mask(tmp_path / "imagenet_s.png", 4).tolist() == [[0, 1, 1, -1]] * 4
    # resized to the explanation's resolution by nearest neighbour: no value between the layouts' own
    small = read_object_mask(tmp_path / "imagenet_s.png", 2)
    assert small.shape == (2, 2) and set(small.ravel().tolist()) <= {-1, 0, 1}


# ---- the controls through the pre-training set ------------------------------------------------------------------

@pytest.fixture
def pseudo_set(tmp_path):
    """6 images of 3 classes in a real store and label table, each with its own random decile map, and an
    object mask for all but the last (demo layout: <masks>/<class folder>/<stem>.png)."""
    import pandas as pd

    from pssl import store
    from pssl.tables import write_table
    rng = np.random.default_rng(1)
    n, size = 6, 8
    relpaths = [f"n0{k % 3}/img{k}.png" for k in range(n)]
    for k, relpath in enumerate(relpaths):
        (tmp_path / "train" / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 20 * k, np.uint8)).save(tmp_path / "train" / relpath)
        if k < n - 1:
            mask = np.zeros((size, size), np.uint8)
            mask[k % size:, : k + 2] = 255
            (tmp_path / "masks" / relpath).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(tmp_path / "masks" / relpath)
    labels = np.arange(n) % 3
    deciles = rng.integers(0, 10, (n, size, size)).astype(np.uint8)
    write_table(pd.DataFrame({"image_id": range(n), "relpath": relpaths, "class_idx": labels}),
                tmp_path / "shard.parquet", {"root": str(tmp_path / "train")})
    group = store.create_store(tmp_path / "s.zarr", np.arange(n), labels, size, 1, False,
                               {"shard_table": str(tmp_path / "shard.parquet")})
    store.write_rows(group, 0, n, status=np.full(n, store.DONE), orig_hw=np.full((n, 2), 16), target=labels,
                     deciles=deciles, model_deciles=None, unreadable={})
    write_table(pd.DataFrame({"image_id": range(n), "gt_class": labels, "teacher_class": labels,
                              "teacher_conf": 1.0, "label": labels, "keep": True, "fg_fraction": 0.1}),
                tmp_path / "labels.parquet", {"root": str(tmp_path / "train"), "classes": ["n00", "n01", "n02"]})
    return [str(tmp_path / "s.zarr")], [str(tmp_path / "labels.parquet")], deciles, labels, tmp_path


def control(pseudo_set, source, **kwargs):
    from pssl.data.pseudo import PseudoLabelDataset
    stores, labels, *_ = pseudo_set
    return PseudoLabelDataset(stores, labels, num_classes=3, crop=8, label_source=source, **kwargs)


def test_shuffled_labels_keep_each_images_class_and_never_its_own_region(pseudo_set):
    _, _, deciles, labels, _ = pseudo_set
    data = control(pseudo_set, "shuffled")
    partners = []
    for i in range(6):
        _, target = data.target(i)
        partner = [j for j in range(6) if np.array_equal(target == labels[i], deciles[j] == 9)]
        assert partner and i not in partner  # another image's D9 region...
        assert set(np.unique(target)) <= {labels[i], 3}  # ...with the image's own class (3: background)
        partners.append(partner[0])
    assert sorted(partners) == list(range(6))  # every region used once: the class frequencies stay


def test_centre_labels_have_the_area_of_the_images_own_region(pseudo_set):
    _, _, deciles, labels, _ = pseudo_set
    data = control(pseudo_set, "centre")
    for i in range(6):
        _, target = data.target(i)
        assert (target == labels[i]).sum() == (deciles[i] == 9).sum()
        assert np.array_equal(target == labels[i], centre_ellipse(int((deciles[i] == 9).sum()), (8, 8)))


def test_oracle_labels_are_the_masks_and_skip_images_without_one(pseudo_set):
    _, _, _, labels, root = pseudo_set
    data = control(pseudo_set, "oracle", masks_root=str(root / "masks"))
    assert len(data) == 5 and data.skipped["no mask"] == 1
    for i in range(5):
        _, target = data.target(i)
        mask = np.asarray(Image.open(root / "masks" / data.samples[i].relpath)) > 127
        assert np.array_equal(target == labels[i], mask) and ((target == labels[i]) | (target == 3)).all()
    with pytest.raises(ValueError, match="imagenet_masks_root"):
        control(pseudo_set, "oracle")
    with pytest.raises(ValueError, match="label_mode hard"):
        control(pseudo_set, "centre", fused=True)


def test_quality_rows_of_the_controls_score_their_own_label_maps():
    from pssl.explain.quality import foreground_scores
    from pssl.report.pretrain_quality import control_label_scores
    rng = np.random.default_rng(2)
    deciles = [rng.integers(0, 10, (8, 8)).astype(np.uint8) for _ in range(3)]
    masks = [rng.random((8, 8)) < 0.3 for _ in range(3)]
    items = [(k, d, "n00", None) for k, d in enumerate(deciles)]
    centre = control_label_scores("centre", items, masks, 9)
    assert centre == [("centre labels (control)", *foreground_scores(centre_ellipse(int((d == 9).sum()), (8, 8)), m))
                      for d, m in zip(deciles, masks)]
    assert all(row[1:] == (1.0, 1.0) for row in control_label_scores("oracle", items, masks, 9))
    partner = derangement(3, 0)
    shuffled = control_label_scores("shuffled", items, masks, 9)
    assert [row[1:] for row in shuffled] == [foreground_scores(deciles[partner[i]] == 9, masks[i]) for i in range(3)]
