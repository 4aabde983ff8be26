"""Segmentation teachers: self-training (pools, teacher inference, centroid sampling, students) and PseudoSeg's
fused pre-training labels; each formula against an independent computation, the jobs killed and resumed."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import full_config, snakemake_env
from pssl.data.downstream import DATASETS, IGNORE, SegmentationSet
from pssl.data.pool import list_pool, pool_base, pool_dir, pool_folders, pool_part, truth_path
from pssl.data.student_set import PseudoPool, StudentDataset
from pssl.data.transforms import CropAugment, sample_generator
from pssl.selftrain.centroids import class_centroids
from pssl.selftrain.teacher import label_pool
from pssl.settings import FinetuneSettings, TeacherSettings, TrainSettings
from pssl.tables import read_table
from pssl.train.fusion import fuse, prior_channels, soft_ce_sums
from pssl.train.losses import Ohem, weighted_ce_sums

# ---- PseudoSeg's fusion --------------------------------------------------------------------------------------


def fuse_by_hand(logits: np.ndarray, prior: np.ndarray, gamma: float, t: float) -> np.ndarray:
    """The decoder calibration, pixel by pixel: r over every logit of the batch, then mix, sharpen, normalise."""
    r = np.sqrt(np.mean(logits.astype(np.float64) ** 2) + 1e-8)
    out = np.zeros_like(prior, dtype=np.float64)
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                z = logits[i, :, y, x] / r
                soft = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                p = gamma * soft + (1 - gamma) * prior[i, :, y, x]
                out[i, :, y, x] = p ** (1 / t) / (p ** (1 / t)).sum()
    return out


@pytest.mark.parametrize("gamma, t", [(0.5, 0.5), (0.3, 0.7), (1.0, 1.0)])
def test_decoder_calibrated_fusion_matches_the_formula(gamma, t):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 4, 3, 5, generator=g)
    strength = torch.rand(2, 3, 5, generator=g)
    prior = prior_channels(strength, torch.tensor([1, 0]), 4, background=3)
    # the prior: s on the image's class, 1 - s on background, zero elsewhere
    assert torch.equal(prior[0, 1], strength[0]) and torch.equal(prior[1, 0], strength[1])
    assert torch.allclose(prior[:, 3], 1 - strength) and prior[0, [0, 2]].abs().sum() == 0
    got = fuse(logits, strength, torch.tensor([1, 0]), 3, gamma, t, "decoder").numpy()
    assert np.allclose(got, fuse_by_hand(logits.numpy(), prior.numpy(), gamma, t), atol=1e-6)
    if gamma == 1.0 and t == 1.0:  # no prior, no sharpening: the calibrated softmax itself
        r = logits.pow(2).mean().sqrt()
        assert np.allclose(got, torch.softmax(logits / r, 1).numpy(), atol=1e-6)


def shared_by_hand(logits: np.ndarray, strength: np.ndarray, labels: list[int], background: int, gamma: float,
                   t: float) -> np.ndarray:
    """Eq. 4 as the authors' code computes it, on each image's class and background, pixel by pixel: one r over
    both sources' values of the whole batch, each softmaxed, mixed, sharpened; zero on the other classes."""
    b, _, h, w = logits.shape
    pixels = [(i, y, x) for i in range(b) for y in range(h) for x in range(w)]
    decoder = {p: logits[p[0], [labels[p[0]], background], p[1], p[2]].astype(np.float64) for p in pixels}
    prior = {p: np.array([strength[p], 1 - strength[p]], dtype=np.float64) for p in pixels}
    r = np.sqrt(np.mean([v ** 2 for p in pixels for v in (*decoder[p], *prior[p])]) + 1e-8)
    out = np.zeros(logits.shape)
    for p in pixels:
        soft = [np.exp(v / r) / np.exp(v / r).sum() for v in (decoder[p], prior[p])]
        mixed = gamma * soft[0] + (1 - gamma) * soft[1]
        sharp = mixed ** (1 / t) / (mixed ** (1 / t)).sum()
        out[p[0], labels[p[0]], p[1], p[2]], out[p[0], background, p[1], p[2]] = sharp
    return out


@pytest.mark.parametrize("gamma, t", [(0.5, 0.5), (0.3, 0.7)])
def test_shared_calibrated_fusion_is_eq4_on_the_class_and_background(gamma, t):
    g = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(2, 5, 3, 4, generator=g)
    strength = torch.rand(2, 3, 4, generator=g)
    got = fuse(logits, strength, torch.tensor([1, 2]), 4, gamma, t, "shared").numpy()
    assert np.allclose(got, shared_by_hand(logits.numpy(), strength.numpy(), [1, 2], 4, gamma, t), atol=1e-6)


def test_a_confident_decoder_pixel_outweighs_a_weak_prior_only_under_the_shared_calibration():
    """The issue's case: 1001 outputs, the decoder sure of the class (logit 10 against -2 +- 1 elsewhere), the
    prior weak (s = 0.2). Over all 1001 channels softmax(P / r) keeps about 0.15 of the class and the prior's
    0.8 background wins; on the two channels the prior speaks for, the decoder's confidence survives."""
    g = torch.Generator().manual_seed(3)
    logits = -2 + torch.randn(1, 1001, 1, 1, generator=g)
    logits[0, 7] = 10.0
    strength, label = torch.full((1, 1, 1), 0.2), torch.tensor([7])
    r = logits.pow(2).mean().sqrt()
    assert 0.1 < float(torch.softmax(logits / r, 1)[0, 7]) < 0.2
    assert int(fuse(logits, strength, label, 1000, 0.5, 0.5, "decoder").argmax(1)) == 1000
    shared = fuse(logits, strength, label, 1000, 0.5, 0.5, "shared")
    assert int(shared.argmax(1)) == 7 and float(shared[0, 7]) > 0.8
    assert float(shared[0, [7, 1000]].sum()) == pytest.approx(1.0)


def test_soft_cross_entropy_on_one_hot_labels_is_eq3():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    weight = torch.tensor([1.0, 1.0, 0.1])
    valid = torch.rand(2, 4, 4, generator=g) > 0.3
    hard = weighted_ce_sums(logits, torch.where(valid, target, -1), weight, -1)
    soft = soft_ce_sums(logits, F.one_hot(target, 3).permute(0, 3, 1, 2).float(), weight, valid)
    assert torch.allclose(hard[0], soft[0]) and torch.allclose(hard[1], soft[1])


def test_prior_strength_from_deciles_d9_or_model_votes():
    from pssl.data.pseudo import prior_strength
    deciles = np.array([[9, 4], [0, 8]], dtype=np.uint8)
    votes = np.array([[[9, 9], [1, 9]], [[9, 2], [3, 8]], [[0, 9], [9, 9]]], dtype=np.uint8)
    assert np.allclose(prior_strength("deciles", deciles), [[1, 4 / 9], [0, 8 / 9]])
    assert np.array_equal(prior_strength("d9", deciles), [[1, 0], [0, 0]])  # the paper's label region only
    assert np.allclose(prior_strength("models", deciles, votes), [[2 / 3, 2 / 3], [1 / 3, 2 / 3]])


# ---- centroids and the crop around them ----------------------------------------------------------------------


def test_centroids_per_tile_and_class_match_a_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (37, 50)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    found = {(c, round(y, 6), round(x, 6), n) for c, y, x, n in class_centroids(labels, 16, IGNORE)}
    expected = set()
    for top in range(0, 37, 16):
        for left in range(0, 50, 16):
            for c in range(4):
                pts = [(y, x) for y in range(top, min(top + 16, 37)) for x in range(left, min(left + 16, 50))
                       if labels[y, x] == c]
                if pts:
                    expected.add((c, round(sum(p[0] for p in pts) / len(pts), 6),
                                  round(sum(p[1] for p in pts) / len(pts), 6), len(pts)))
    assert found == expected


def test_a_crop_around_a_centre_contains_it():
    augment = CropAugment(32, mask_fill=IGNORE, base_size=120, heavy=False, long_side=True)
    h, w = 90, 160
    rng = np.random.default_rng(0)
    for seed in range(300):
        cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
        p = augment.sample(torch.Generator().manual_seed(seed), h, w, (cy, cx))
        sy, sx = cy * p.resized[0] / h + p.pad[0], cx * p.resized[1] / w + p.pad[1]  # in the padded, scaled image
        assert p.top <= sy < p.top + 32 and p.left <= sx < p.left + 32, seed
    # a disc's centre is its own pixel: the crop's labels contain the class
    labels = np.zeros((h, w), dtype=np.int64)
    yy, xx = np.mgrid[:h, :w]
    labels[(yy - 70) ** 2 + (xx - 140) ** 2 < 36] = 5
    for seed in range(50):
        _, mask = augment(np.zeros((h, w, 3), np.uint8), labels, torch.Generator().manual_seed(seed), (70.0, 140.0))
        assert (mask.numpy() == 5).any(), seed


def test_without_a_centre_the_crop_draws_are_unchanged():
    """The centre option must not move ordinary crops (finished runs stay reproducible)."""
    augment = CropAugment(64, mask_fill=-1)
    p = augment.sample(torch.Generator().manual_seed(3), 375, 500)
    g = torch.Generator().manual_seed(3)
    short = int(torch.randint(augment.low, augment.high, (), generator=g))
    long = int(short * 500 / 375)
    _ = float(torch.rand((), generator=g))  # the angle
    top = int(torch.randint(0, short + 2 * max(64 - short, 0) - 64 + 1, (), generator=g))
    left = int(torch.randint(0, long + 2 * max(64 - long, 0) - 64 + 1, (), generator=g))
    assert (p.top, p.left) == (top, left)


# ---- pools, teacher, student ---------------------------------------------------------------------------------


def test_demo_pools_are_in_each_datasets_layout_with_hidden_truth(tiny_demo):
    for name, spec in DATASETS.items():
        pool = pool_dir(name, tiny_demo)
        images = list_pool([pool])
        assert len(images) == 4, name
        for relpath in images:
            truth = np.asarray(Image.open(truth_path(tiny_demo / "pool_truth" / name, relpath)))
            assert truth.shape == Image.open(pool / relpath).size[::-1]
            assert set(np.unique(truth)) <= set(range(spec.num_classes)) | {IGNORE}
    assert pool_dir("cityscapes", tiny_demo) == tiny_demo / "cityscapes/leftImg8bit/train_extra"
    assert list_pool([pool_dir("cityscapes", tiny_demo)])[0].endswith("_leftImg8bit.png")
    # the pool is not part of any annotated split
    train = {p.name for p, _ in SegmentationSet("cityscapes", tiny_demo, "train").pairs}
    assert not train & {Path(r).name for r in list_pool([pool_dir("cityscapes", tiny_demo)])}


def test_pool_subsets_and_parts(tmp_path):
    for i in range(10):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    every = list_pool([tmp_path])
    assert len(every) == 10
    assert set(list_pool([tmp_path], 4, seed=1)) < set(every)
    assert list_pool([tmp_path], 4, 1) == list_pool([tmp_path], 4, 1)
    parts = [pool_part(every, p, 3) for p in range(3)]
    assert sorted(relpath for part in parts for relpath in part) == every
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_pool([tmp_path / "missing"])


@pytest.fixture(scope="module")
def teacher(tiny_demo, tmp_path_factory):
    """A fine-tuned PSPNet on the demo's Cityscapes (its final.pt and metrics.json in a cell's lr folder)."""
    from pssl.train.finetune import finetune
    cell = tmp_path_factory.mktemp("cell")
    finetune("cityscapes", str(tiny_demo), cell / "lr0.01", head="pspnet", backbone="test_resnet", init="imagenet",
             init_from=None, settings=GEOMETRY, train=TRAIN, device="cpu")
    (cell / "metrics.json").write_text((cell / "lr0.01/metrics.json").read_text())
    return cell


GEOMETRY = FinetuneSettings(crop=32, base_size=64, window=64, eval_split="val", scales=(1.0,), flip=False)
TRAIN = TrainSettings(epochs=1, batch_size=2, lr=0.01, schedule="poly", checkpoint_every=2, precision="fp32")


def test_teacher_labels_its_pool_and_records_bad_images(teacher, tiny_demo, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for relpath in list_pool([pool_dir("cityscapes", tiny_demo)]):
        (pool / Path(relpath).name).write_bytes((pool_dir("cityscapes", tiny_demo) / relpath).read_bytes())
    (pool / "broken.png").write_bytes(b"")
    table = label_pool(str(teacher / "lr0.01/final.pt"), "cityscapes", [str(pool)], tmp_path / "out",
                       geometry=GEOMETRY, settings=TeacherSettings(tile=64), device="cpu")
    status = dict(zip(table["relpath"], table["status"]))
    assert status.pop("broken.png") == "unreadable" and set(status.values()) == {"done"} and len(status) == 4
    assert "zero-byte" in table.set_index("relpath").loc["broken.png", "error"]
    centroids, meta = read_table(tmp_path / "out/centroids.parquet")
    for relpath in status:
        labels = np.asarray(Image.open(tmp_path / "out/labels" / Path(relpath).with_suffix(".png")))
        assert labels.shape == Image.open(pool / relpath).size[::-1] and labels.max() < 19
        mine = centroids[centroids["relpath"] == relpath]
        assert sorted(mine[["class", "y", "x", "pixels"]].itertuples(index=False, name=None)) == \
            sorted(class_centroids(labels, 64, IGNORE))
    assert meta["dataset"] == "cityscapes" and meta["num_classes"] == 19
    # a confidence above every probability ignores every pixel
    strict = label_pool(str(teacher / "lr0.01/final.pt"), "cityscapes", [str(pool)], tmp_path / "strict",
                        geometry=GEOMETRY, settings=TeacherSettings(confidence=1.0), device="cpu")
    assert (strict[strict["status"] == "done"]["ignored"] == 1.0).all()


def truth_as_pseudo_labels(demo: Path, dataset: str, out: Path, tile: int) -> Path:
    """A teacher that is always right: the pool's hidden truth written as a teacher's outputs."""
    from pssl.data.student_set import CENTROID_COLUMNS
    from pssl.tables import write_table
    pool, rows, centroids = pool_dir(dataset, demo), [], []
    for relpath in list_pool([pool]):
        labels = np.asarray(Image.open(truth_path(demo / "pool_truth" / dataset, relpath)))
        png = out / "labels" / Path(relpath).with_suffix(".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(png)
        rows.append({"relpath": relpath, "label": str(png.relative_to(out)), "status": "done", "error": "",
                     "height": labels.shape[0], "width": labels.shape[1], "ignored": 0.0})
        centroids += [(relpath, *c) for c in class_centroids(labels, tile, IGNORE)]
    meta = {"dataset": dataset, "pool": str(pool), "num_classes": DATASETS[dataset].num_classes}
    write_table(pd.DataFrame(centroids, columns=CENTROID_COLUMNS), out / "centroids.parquet", meta)
    write_table(pd.DataFrame(rows), out / "pseudo.parquet", meta)
    return out / "pseudo.parquet"


def test_student_epochs_mix_real_and_class_uniform_pseudo_samples(tiny_demo, tmp_path):
    truth_as_pseudo_labels(tiny_demo, "cityscapes", tmp_path / "pool-0", tile=64)
    pool = PseudoPool([str(tmp_path / "pool-0/pseudo.parquet")], "cityscapes")
    real = SegmentationSet("cityscapes", tiny_demo, "train")
    data = StudentDataset(real, pool, 3, 32, 64, seed=0)
    image, mask = data[len(data) - 1]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    # class-uniform: every class the teacher found is drawn about equally often, whatever its centroid count
    sizes = pd.Series({c: len(rows) for c, rows in pool.by_class.items()})
    assert len(pool.classes) > 1 and sizes.max() > sizes.min()
    draws = [pool.draw(np.random.default_rng([0, 0, i])) for i in range(3000)]
    counts = pd.Series([c for c, _, _ in draws]).value_counts()
    assert set(counts.index) == set(pool.classes) and counts.min() > 0.75 * 3000 / len(pool.classes)
    for klass, image, (y, x) in draws[:50]:  # each draw is a centroid of that class in that image
        rows = pool.by_class[klass]
        assert ((rows[:, 0] == image) & (rows[:, 2] == y) & (rows[:, 3] == x)).any()
    with pytest.raises(ValueError, match="of cityscapes, not camvid"):
        PseudoPool([str(tmp_path / "pool-0/pseudo.parquet")], "camvid")


def _wait_and_kill(proc, ready, what: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"{what} finished before it could be killed; make it slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_teacher_inference_resumes_to_identical_labels(teacher, tiny_demo, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    source = pool_dir("cityscapes", tiny_demo)
    for k in range(6):  # 24 images, so the kill lands mid-pool
        for relpath in list_pool([source]):
            (pool / f"{k}_{Path(relpath).name}").write_bytes((source / relpath).read_bytes())
    cmd = [sys.executable, "-m", "pssl", "teacher-labels", "--selected", str(teacher / "metrics.json"), "--runs",
           str(teacher / "lr0.01/metrics.json"), "--dataset", "cityscapes", "--pool", str(pool), "--device", "cpu",
           "--threads", "1", "--base-size", "64", "--window", "64", "--scales", "1.0", "1.5",
           "--flip", "true"]
    reference = subprocess.run([*cmd, "--out-dir", str(tmp_path / "reference")], env=snakemake_env(),
                               capture_output=True, text=True, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "resumed"
    proc = subprocess.Popen([*cmd, "--out-dir", str(out)], env=snakemake_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_and_kill(proc, lambda: len(list(out.glob("labels/*.png"))) >= 3, "teacher inference")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("labels/*.png")}
    assert 0 < len(before) < 24 and not (out / "pseudo.parquet").exists()
    resumed = subprocess.run([*cmd, "--out-dir", str(out)], env=snakemake_env(), capture_output=True, text=True,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({len(before)} from an earlier run)" in resumed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("labels/*.png") if p.name in before} == before
    for png in (tmp_path / "reference/labels").glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(out / "labels" / png.name)))
    assert read_table(out / "centroids.parquet")[0].equals(read_table(tmp_path / "reference/centroids.parquet")[0])


@pytest.mark.slow
def test_killed_student_resumes_to_the_same_metrics(tiny_demo, tmp_path):
    import timm
    truth_as_pseudo_labels(tiny_demo, "cityscapes", tmp_path / "pool-0", tile=1024)
    torch.manual_seed(0)
    torch.save({"arch": "test_resnet", "state_dict": timm.create_model("test_resnet").state_dict()},
               tmp_path / "test_resnet.pt")  # a zoo classifier: the ImageNet init
    cmd = [sys.executable, "-m", "pssl", "self-train", "--dataset", "cityscapes", "--root", str(tiny_demo),
           "--head", "pspnet", "--backbone", "test_resnet", "--init", "imagenet",
           "--init-from", str(tmp_path / "test_resnet.pt"),
           "--pseudo", str(tmp_path / "pool-0/pseudo.parquet"), "--data", "pseudo", "--multiplier", "3",
           "--loss", "ohem", "--ohem-threshold", "0.7", "--ohem-min-kept", "100",
           "--device", "cpu", "--threads", "1", "--crop", "32", "--base-size", "64", "--window", "64",
           "--epochs", "3", "--batch-size", "2", "--checkpoint-every", "3", "--precision", "fp32",
           "--schedule", "poly"]
    reference = subprocess.run([*cmd, "--out-dir", str(tmp_path / "reference")], env=snakemake_env(),
                               capture_output=True, text=True, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "student set: 8 samples per epoch: 2 of 4 real + 3 x 2 pseudo" in reference.stderr
    out = tmp_path / "resumed"
    proc = subprocess.Popen([*cmd, "--out-dir", str(out)], env=snakemake_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_and_kill(proc, lambda: bool(list(out.glob("ckpt-*.pt"))), "the student")
    resumed = subprocess.run([*cmd, "--out-dir", str(out)], env=snakemake_env(), capture_output=True, text=True,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "reference", out))
    assert a["miou"] == b["miou"] and a["per_class_iou"] == b["per_class_iou"]
    assert a["student"] == {"data": "pseudo", "multiplier": 3, "loss": "ohem", "ohem_threshold": 0.7,
                            "ohem_min_kept": 100, "pseudo": [str(tmp_path / "pool-0/pseudo.parquet")]}
    wa, wb = (torch.load(d / "final.pt", weights_only=True)["model"] for d in (tmp_path / "reference", out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- fused pre-training views --------------------------------------------------------------------------------


def one_image_store(tmp_path: Path, model_votes: bool) -> tuple[list[str], list[str]]:
    """A 64 x 64 image with a square object, its 32 x 32 deciles (9 on the object) in a real store."""
    from pssl import store
    from pssl.tables import write_table

    image = np.full((64, 64, 3), 40, np.uint8)
    image[16:48, 16:48] = 200
    Image.fromarray(image).save(tmp_path / "a.png")
    deciles = np.zeros((1, 32, 32), np.uint8)
    deciles[0, 8:24, 8:24] = 9
    write_table(pd.DataFrame({"image_id": [0], "relpath": ["a.png"], "class_idx": [1]}), tmp_path / "shard.parquet",
                {"root": str(tmp_path)})
    group = store.create_store(tmp_path / "s.zarr", np.array([0]), np.array([1]), 32, 2, model_votes,
                               {"shard_table": str(tmp_path / "shard.parquet")})
    store.write_rows(group, 0, 1, status=np.array([store.DONE]), orig_hw=np.array([[64, 64]]),
                     target=np.array([1]), deciles=deciles,
                     model_deciles=np.stack([deciles, np.zeros_like(deciles)], axis=1) if model_votes else None,
                     unreadable={})
    labels = pd.DataFrame({"image_id": [0], "gt_class": [1], "teacher_class": [1], "teacher_conf": [1.0],
                           "label": [1], "keep": [True], "fg_fraction": [0.25]})
    write_table(labels, tmp_path / "labels.parquet", {"root": str(tmp_path), "num_classes": 3,
                                                      "classes": ["a", "b", "c"]})
    return [str(tmp_path / "s.zarr")], [str(tmp_path / "labels.parquet")]


@pytest.mark.parametrize("model_votes", [False, True])
def test_fused_views_share_the_geometry_and_exclude_cutout(tmp_path, model_votes):
    from pssl.data.pseudo import PSEUDO_IGNORE, PseudoLabelDataset
    from pssl.data.strong_view import MEAN_PIXEL

    stores, labels = one_image_store(tmp_path, model_votes)
    prior = "models" if model_votes else "deciles"
    data = PseudoLabelDataset(stores, labels, 3, 32, fused=True, fusion_prior=prior, cutout=0.25)
    assert data.prior == prior
    on_object = []
    for epoch in range(6):
        data.set_epoch(epoch)
        views = data[0]
        assert views["weak"].shape == views["strong"].shape == (3, 32, 32) and views["label"] == 1
        valid, strength = views["valid"].numpy(), views["strength"].numpy()
        # the same crop as the hard label map of this (seed, epoch, index); CutOut and padding not counted
        hard = data.transform(*data.target(0), sample_generator(0, epoch, 0))[1].numpy()
        assert not valid[hard == PSEUDO_IGNORE].any()
        cut = ~valid & (hard != PSEUDO_IGNORE)  # the CutOut square (where it is not padding anyway)
        ys, xs = np.nonzero(cut)
        assert cut.sum() <= 8 * 8 and (not cut.any() or (np.ptp(ys) < 8 and np.ptp(xs) < 8))
        # filled with the dataset's mean pixel
        assert np.allclose(views["strong"].numpy()[:, cut], MEAN_PIXEL[:, None])
        # the weak view is the geometry alone: bright where the object is, and the prior follows it
        weak_bright = views["weak"].numpy().mean(0) > 0.5
        assert 0 <= strength.min() and strength.max() <= 1
        on_object.append((strength[weak_bright].mean() if weak_bright.any() else 1.0,
                          strength[~weak_bright & (hard != PSEUDO_IGNORE)].mean()))
    expected_top = 0.5 if model_votes else 1.0  # one of two models votes 9 on the object
    assert all(on > off for on, off in on_object)
    assert np.mean([on for on, _ in on_object]) > 0.8 * expected_top


def test_fused_views_are_pseudosegs_weak_and_strong_views_and_padding_never_counts(tmp_path):
    """The weak view: scale, crop and flip alone (no rotation); the strong view: the same pixels recoloured
    (no blur, no geometric change); padding excluded from the loss whatever pad_label says."""
    from pssl.data.pseudo import PSEUDO_IGNORE, PseudoLabelDataset

    stores, labels = one_image_store(tmp_path, model_votes=False)
    ignored = PseudoLabelDataset(stores, labels, 3, 32, fused=True, cutout=0.0)
    background = PseudoLabelDataset(stores, labels, 3, 32, fused=True, cutout=0.0, pad_label="background")
    weak_only = CropAugment(32, mask_fill=PSEUDO_IGNORE, heavy=False)
    padded = 0
    for epoch in range(8):
        ignored.set_epoch(epoch)
        background.set_epoch(epoch)
        views, other = ignored[0], background[0]
        assert torch.equal(views["valid"], other["valid"])
        _, _, rgb, mask = weak_only.geometry(*ignored.target(0), sample_generator(0, epoch, 0))
        assert np.allclose(views["weak"].numpy(), rgb.transpose(2, 0, 1) / 255.0)
        assert np.array_equal(views["valid"].numpy(), mask != PSEUDO_IGNORE)
        padded += int((mask == PSEUDO_IGNORE).sum())
        # a colour map of the weak view, pixel by pixel: equal weak colours stay equal (a blur would not keep it)
        weak = views["weak"].numpy().reshape(3, -1).T.round(5)
        strong = views["strong"].numpy().reshape(3, -1).T
        for colour in np.unique(weak, axis=0):
            same = (weak == colour).all(axis=1)
            assert np.allclose(strong[same], strong[same][0], atol=1e-6), epoch
    assert padded > 0


def test_the_strong_views_colours_are_the_authors_jitter_and_cutout_the_mean_pixel():
    """TensorFlow's colour ops as the authors' code applies them (brightness added, contrast about each
    channel's mean, saturation and hue in HSV, each clipped), computed pixel by pixel with colorsys."""
    import colorsys

    from pssl.data.strong_view import MEAN_PIXEL, StrongParams, strong_view

    weak = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    p = StrongParams(order=(2, 0, 3, 1), brightness=0.3, contrast=1.4, saturation=0.6, hue=0.1, cut=(3, 5, 0, 2))

    def hsv(image, change):
        return np.array([[colorsys.hsv_to_rgb(*change(*colorsys.rgb_to_hsv(*px))) for px in row] for row in image])

    ops = [lambda x: x + 0.3, lambda x: (x - x.mean(axis=(0, 1))) * 1.4 + x.mean(axis=(0, 1)),
           lambda x: hsv(x, lambda h, s, v: (h, min(s * 0.6, 1.0), v)),
           lambda x: hsv(x, lambda h, s, v: ((h + 0.1) % 1.0, s, v))]
    expected = weak.astype(np.float64)
    for i in p.order:
        expected = np.clip(ops[i](expected), 0.0, 1.0)
    expected[3:5, 0:2] = MEAN_PIXEL
    strong, cut = strong_view(weak, p)
    assert np.allclose(strong, expected, atol=1e-4)
    assert cut.sum() == 4 and cut[3:5, 0:2].all()


def test_cutout_is_the_papers_square_centred_anywhere_and_clipped_at_the_border():
    from pssl.data.strong_view import draw_strong
    sides, jitter = [], []
    for seed in range(300):
        p = draw_strong(torch.Generator().manual_seed(seed), 513, 0.1)
        top, bottom, left, right = p.cut
        assert 0 <= top < bottom <= 513 and 0 <= left < right <= 513
        sides += [bottom - top, right - left]
        jitter.append((p.brightness, p.contrast, p.saturation, p.hue))
    assert max(sides) == 52 and min(sides) < 52  # 50 x 50 in the paper; clipped where the centre is near a border
    low, high = np.min(jitter, axis=0), np.max(jitter, axis=0)
    assert (low >= [-0.5, 0.5, 0.5, -0.25]).all() and (high <= [0.5, 1.5, 1.5, 0.25]).all()
    assert draw_strong(torch.Generator().manual_seed(0), 32, 0.0).cut == (0, 0, 0, 0)


# ---- OHEM, the student's epochs, augmentation and pools --------------------------------------------------------


def two_class_logits(probabilities: list[list[float]]) -> torch.Tensor:
    """(B, 2, 1, N) logits whose softmax gives class 1 the given probabilities."""
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)[:, :, None].float()


def test_ohem_keeps_the_pixels_below_the_threshold_or_else_the_hardest_min_kept_per_image():
    logits = two_class_logits([[0.1, 0.2, 0.5, 0.8, 0.9, 0.95], [0.75, 0.8, 0.85, 0.9, 0.95, 0.5]])
    target = torch.tensor([[[1, 1, 1, 1, 1, 1]], [[1, 1, 1, 1, 1, 255]]])
    kept = Ohem(0.7, 2).select(logits, target, 255) != 255
    # image 0: three pixels are below 0.7; image 1: none, so its two hardest (0.75, 0.8)
    assert kept.tolist() == [[[True, True, True, False, False, False]], [[True, True, False, False, False, False]]]
    kept = Ohem(0.7, 5).select(logits, target, 255) != 255
    # image 0: the threshold rises to its 5th smallest probability (0.9); image 1 has only 5 labelled pixels
    assert kept.tolist() == [[[True, True, True, True, True, False]], [[True, True, True, True, True, False]]]
    # per image: an image's pixels do not depend on the others in its batch
    assert torch.equal(Ohem(0.7, 2).select(logits[1:], target[1:], 255), Ohem(0.7, 2).select(logits, target, 255)[1:])


def test_the_students_loss_is_cross_entropy_on_the_kept_pixels_only():
    from pssl.train.objectives import HardLabels
    logits = two_class_logits([[0.1, 0.2, 0.5, 0.8, 0.9, 0.95]])
    target = torch.ones(1, 1, 6, dtype=torch.long)
    objective = HardLabels(torch.ones(2), 255, 0.4, Ohem(0.7, 2))
    loss_sum, weight_sum, _ = objective(lambda x: {"out": logits}, (torch.zeros(1, 3, 1, 6), target),
                                        torch.device("cpu"), "fp32")
    assert float(weight_sum) == 3
    assert float(loss_sum) == pytest.approx(-(np.log(0.1) + np.log(0.2) + np.log(0.5)), rel=1e-5)


class NumberedImages:
    """A stand-in training set: image i's label map is 100 + i everywhere, so a sample names its image."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def read(self, i: int):
        return np.full((40, 60, 3), 20 * i, np.uint8), np.full((40, 60), 100 + i, np.uint8)


def images_of(data, epoch: int) -> list[int]:
    data.set_epoch(epoch)
    return [int(np.setdiff1d(data[i][1].numpy(), [IGNORE])[0]) - 100 for i in range(len(data))]


def test_a_student_epoch_is_a_random_real_half_and_k_times_as_many_pseudo_samples(tiny_demo, tmp_path):
    """Zhu et al.: each epoch a random half of the real set (the same half for every k) + k x as many pseudo
    samples; the control repeats the real set to the same size."""
    truth_as_pseudo_labels(tiny_demo, "cityscapes", tmp_path / "pool-0", tile=64)
    pool = PseudoPool([str(tmp_path / "pool-0/pseudo.parquet")], "cityscapes")
    real = NumberedImages(7)
    k1, k3 = (StudentDataset(real, pool, k, 32, 64, seed=0) for k in (1, 3))
    assert (len(k1), len(k3)) == (8, 16)  # half of 7 is 4
    halves = []
    for epoch in range(2):
        one, three = images_of(k1, epoch), images_of(k3, epoch)
        real_half = three[:4]
        assert len(set(real_half)) == 4 and set(real_half) <= set(range(7)) and one[:4] == real_half
        assert all(i < 0 for i in three[4:])  # pseudo samples: the pool's classes (train ids < 19), not 100 + i
        halves.append(real_half)
    assert halves[0] != halves[1]
    control = StudentDataset(real, None, 3, 32, 64, seed=0)
    assert len(control) == 16 and images_of(control, 0) == [i % 7 for i in range(16)]


def test_student_crops_are_blurred_and_jittered_but_never_rotated():
    data = StudentDataset(NumberedImages(4), None, 1, 32, 64, seed=0)
    draws = [data.transform.sample(torch.Generator().manual_seed(s), 90, 160, (45.0, 80.0)) for s in range(200)]
    assert all(p.angle == 0 for p in draws)
    assert 0 < sum(p.blur_sigma is not None for p in draws) < len(draws)
    factors = np.array([p.jitter for p in draws])
    assert (np.abs(factors - [1, 1, 1, 0]) <= 0.1).all() and factors.std(axis=0).min() > 0.03


def test_a_pool_of_several_folders_keeps_images_of_the_same_name_apart(teacher, tiny_demo, tmp_path):
    source = pool_dir("cityscapes", tiny_demo)
    names = list_pool([source])[:2]
    folders = [tmp_path / "coarse/train_extra", tmp_path / "mapillary/images"]
    for folder in folders:
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes((source / name).read_bytes())
    assert pool_folders("cityscapes", tiny_demo, [str(f) for f in folders]) == folders
    assert pool_folders("cityscapes", tiny_demo, str(folders[0])) == folders[:1]
    assert pool_folders("cityscapes", tiny_demo) == [source]
    assert pool_base(folders) == tmp_path.resolve() and pool_base(folders[:1]) == folders[0].resolve()
    listed = list_pool(folders)
    assert listed == sorted(f"{prefix}/{name}" for prefix in ("coarse/train_extra", "mapillary/images")
                            for name in names)
    table = label_pool(str(teacher / "lr0.01/final.pt"), "cityscapes", [str(f) for f in folders], tmp_path / "out",
                       geometry=GEOMETRY, settings=TeacherSettings(tile=64), device="cpu")
    assert sorted(table["relpath"]) == listed and (table["status"] == "done").all()
    assert len(list((tmp_path / "out/labels").rglob("*.png"))) == 4
    pseudo = PseudoPool([str(tmp_path / "out/pseudo.parquet")], "cityscapes")
    assert all(image.is_file() and label.is_file() for image, label in pseudo.images)


def test_the_paper_preset_trains_students_on_ohem_and_a_pool_may_be_a_list():

    from pssl.config import validate_config
    repo = Path(__file__).resolve().parents[1]
    paper = full_config(repo / "presets/paper.yaml")
    assert {k: paper["self_training"][k] for k in ("loss", "ohem_threshold", "ohem_min_kept")} == \
        {"loss": "ohem", "ohem_threshold": 0.7, "ohem_min_kept": 100000}
    config = full_config(repo / "config.yaml")
    config["self_training"]["pools"] = {"cityscapes": ["/data/coarse", "/data/mapillary"], "voc_aug": "/data/voc"}
    validate_config(config, str(repo / "workflow/schemas/config.schema.yaml"))


def test_fused_pretraining_trains_and_records_its_labels(tmp_path):
    from pssl.settings import PretrainSettings
    from pssl.train.pretrain import pretrain

    stores, labels = one_image_store(tmp_path, model_votes=True)
    settings = PretrainSettings(crop=32, label_mode="fused", fusion_gamma=0.3, fusion_temperature=0.7,
                                fusion_prior="models")
    train = TrainSettings(epochs=2, batch_size=2, lr=0.01, milestone=1, checkpoint_every=5, precision="fp32")
    # one image: the pseudo-labelled set repeats it so a batch of 2 exists
    final = pretrain(stores * 2, labels * 2, tmp_path / "out", head="pspnet", backbone="test_resnet",
                     backbone_init=None, settings=settings, train=train, device="cpu")
    config = torch.load(final, weights_only=True)["config"]
    assert config["label_mode"] == "fused"
    assert config["fusion"] == {"gamma": 0.3, "temperature": 0.7, "prior": "models", "calibration": "decoder",
                                "cutout": 0.1}
    losses = pd.read_csv(tmp_path / "out/log.csv")["loss"]
    assert len(losses) == 2 and np.isfinite(losses).all()


def test_pretraining_resumes_its_inputs_checkpoint_and_retrains_when_a_store_is_rewritten(tmp_path, caplog):
    """Pre-training keeps its checkpoints; a rerun on the same inputs resumes (here: at its end), a rerun after
    explain rewrote a store trains anew (a rewrite with the same deciles: the same weights as the first run)."""
    import shutil

    from pssl.io import fingerprint
    from pssl.settings import PretrainSettings
    from pssl.train.pretrain import pretrain

    stores, labels = one_image_store(tmp_path, model_votes=False)
    train = TrainSettings(epochs=2, batch_size=2, lr=0.01, milestone=1, checkpoint_every=5, precision="fp32")

    def run():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pssl"):
            final = pretrain(stores * 2, labels * 2, tmp_path / "out", head="pspnet", backbone="test_resnet",
                             backbone_init=None, settings=PretrainSettings(crop=32), train=train, device="cpu")
        return torch.load(final, weights_only=True)["model"]

    first, store_print, label_print = run(), fingerprint(stores[0]), fingerprint(labels[0])
    again = run()
    assert "resuming from state.pt at step 2/2" in caplog.text and "starting over" not in caplog.text
    assert all(torch.equal(first[k], again[k]) for k in first)
    shutil.copy(labels[0], tmp_path / "moved.parquet")
    assert fingerprint(tmp_path / "moved.parquet") == label_print and fingerprint(stores[0]) == store_print
    shutil.rmtree(stores[0])
    time.sleep(0.01)  # a later modification time, as any rerun of explain has
    one_image_store(tmp_path, model_votes=False)
    assert fingerprint(stores[0]) != store_print
    rewritten = run()
    assert "belongs to another job (changed: stores): starting over" in caplog.text
    assert all(torch.equal(first[k], rewritten[k]) for k in first)


def test_fusion_settings_touch_only_fused_pretrainings():
    """The fusion keys of the pretrain section do not change a hard-label job's settings (nor rerun it)."""

    from conftest import TINY
    from pssl.settings import pretrain_settings
    config = full_config(TINY)
    tuned = {**config, "pretrain": {**config["pretrain"], "fusion_gamma": 0.3, "fusion_prior": "models"}}
    assert pretrain_settings(tuned, "main") == pretrain_settings(config, "main")
    fused = pretrain_settings(tuned, "fused")[0]
    assert (fused.label_mode, fused.fusion_gamma, fused.fusion_prior) == ("fused", 0.3, "models")


def test_the_model_vote_prior_needs_per_model_deciles(tmp_path):
    from pssl.data.pseudo import PseudoLabelDataset
    stores, labels = one_image_store(tmp_path, model_votes=False)
    with pytest.raises(ValueError, match="keep_model_deciles true"):
        PseudoLabelDataset(stores, labels, 3, 32, fused=True, fusion_prior="models")
