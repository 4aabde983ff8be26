"""Explain stage: deciles (eq. 2), SmoothGrad arithmetic, stores (determinism, resume, bad images)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import snakemake_env
from pssl import store
from pssl.data.imagenet import build_index
from pssl.explain.deciles import minmax_normalize, to_deciles
from pssl.explain.run import explain_shard, explain_targets
from pssl.explain.smoothgrad import TargetScore, saliency_map, smoothgrad
from pssl.models.zoo import ClassifierSpec, save_classifier
from pssl.settings import ExplainSettings
from pssl.shards import write_shards
from pssl.tables import read_table

# ---- deciles ------------------------------------------------------------------------------------------

def deciles_by_counting(scores: np.ndarray) -> np.ndarray:
    """Independent eq. 2: for each pixel count the strictly lower pixels directly (O(N^2))."""
    out = np.empty(scores.shape, dtype=np.uint8)
    for b in range(scores.shape[0]):
        flat = scores[b].ravel()
        z = (flat[None, :] < flat[:, None]).sum(axis=1)
        out[b] = (10 * z // flat.size).reshape(scores.shape[1:])
    return out


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 5, 13), (1, 1, 7), (4, 10, 3)])
def test_deciles_match_counting_on_random_maps(shape):
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(to_deciles(scores).numpy(), deciles_by_counting(scores.numpy()))


def test_deciles_ties_share_the_lower_rank():
    scores = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 2.0, 2.0, 3.0]]])  # N = 10
    # Z: four 0s -> 0; three 1s -> 4; two 2s -> 7; one 3 -> 9.  D = floor(10 Z / 10) = Z.
    expected = np.array([[[0, 0, 0, 0, 4], [4, 4, 7, 7, 9]]], dtype=np.uint8)
    assert np.array_equal(to_deciles(scores).numpy(), expected)
    rand = torch.randint(0, 4, (2, 6, 9), generator=torch.Generator().manual_seed(2)).float()
    assert np.array_equal(to_deciles(rand).numpy(), deciles_by_counting(rand.numpy()))


def test_constant_map_is_all_zero_without_nan():
    maps = torch.full((2, 4, 6), 3.5)
    norm = minmax_normalize(maps)
    assert not torch.isnan(norm).any() and (norm == 0).all()
    assert (to_deciles(norm) == 0).all()


def test_minmax_per_image():
    maps = torch.stack([torch.arange(6.0).view(2, 3), 10 + 2 * torch.arange(6.0).view(2, 3)])
    norm = minmax_normalize(maps)
    assert torch.allclose(norm[0], norm[1]) and norm.min() == 0 and norm.max() == 1


# ---- SmoothGrad on models with closed-form gradients ----------------------------------------------------

class HalfSquare(nn.Module):
    """f_c(x) = 0.5 * c-th weight * sum(x^2): gradient w.r.t. x is w_c * x."""

    def __init__(self, weights):
        super().__init__()
        self.w = torch.tensor(weights)

    def forward(self, x):
        return 0.5 * (x ** 2).flatten(1).sum(1, keepdim=True) * self.w


class Linear(nn.Module):
    def __init__(self, n_in, n_out, seed=0):
        super().__init__()
        self.w = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def counted_deciles(scores: np.ndarray) -> np.ndarray:
    """Eq. 2 by counting, independent of to_deciles: floor(10 * #{strictly lower} / N) per pixel."""
    flat = scores.ravel()
    return np.array([10 * int((flat < v).sum()) // flat.size for v in flat]).reshape(scores.shape)


def test_ensemble_normalises_each_model_before_the_mean():
    """Eq. 1 on linear classifiers (logit gradient = the target's weight row, whatever the noise): the stored
    deciles are those of the mean of per-model min-max maps. Two models whose gradients differ in scale by
    1000x make averaging before normalising give other deciles, so the wrong order cannot pass."""
    from pssl.explain.run import explain_batch
    side, targets = 8, torch.tensor([1, 0])
    small, large = Linear(3 * side * side, 2, seed=1), Linear(3 * side * side, 2, seed=2)
    large.w *= 1000.0
    scorers = [TargetScore(small, "logit"), TargetScore(large, "logit")]
    params = ExplainSettings(image_size=side, n_samples=2, noise_level=0.1, sample_chunk=2, keep_model_deciles=True)
    torch.manual_seed(0)
    deciles, per_model = explain_batch(scorers, torch.rand(2, 3, side, side), targets, params, "fp32")
    for b, t in enumerate(targets.tolist()):
        maps = [np.abs(m.w[t].numpy().reshape(3, side, side)).sum(0) for m in (small, large)]
        normalised = [(m - m.min()) / (m.max() - m.min()) for m in maps]
        expected = counted_deciles((normalised[0] + normalised[1]) / 2)
        assert np.array_equal(deciles[b].numpy(), expected)
        for i, m in enumerate(normalised):
            assert np.array_equal(per_model[b, i].numpy(), counted_deciles(m))
        averaged_first = (maps[0] + maps[1]) / 2
        wrong = counted_deciles((averaged_first - averaged_first.min()) / np.ptp(averaged_first))
        assert not np.array_equal(wrong, expected), "the test must tell the two orders apart"


def test_noise_is_gaussian_in_pixel_space_with_the_given_sigma():
    # gradient of 0.5 * sum(x^2) at x + eps is x + eps: one sample exposes the noise itself.
    x = torch.full((2, 3, 40, 40), 0.5)
    torch.manual_seed(0)
    g = smoothgrad(TargetScore(HalfSquare([1.0]), "logit"), x, torch.tensor([0, 0]), n_samples=1,
                   noise_level=0.15)
    eps = g - x
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.std()) - 0.15) < 0.005


def test_signed_gradients_are_averaged_before_the_magnitude():
    # at x = 0 the gradient is the noise: the signed mean shrinks like sigma / sqrt(n); captum's default
    # abs=True would give E|eps| = 0.8 sigma instead.
    x = torch.zeros(1, 3, 32, 32)
    torch.manual_seed(0)
    g = smoothgrad(TargetScore(HalfSquare([1.0]), "logit"), x, torch.tensor([0]), n_samples=64,
                   noise_level=0.2, sample_chunk=16)
    assert float(g.abs().mean()) < 0.2 * 0.8 / 4  # sigma / sqrt(64) * sqrt(2/pi) = 0.02 expected
    assert float(g.mean().abs()) < 0.005


def test_target_selects_the_explained_logit_and_probability():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = Linear(48, 5)
    targets = torch.tensor([3, 1])
    g = smoothgrad(TargetScore(model, "logit"), x, targets, n_samples=3, noise_level=0.0)
    assert torch.allclose(g.flatten(1), model.w[targets], atol=1e-6)
    # d softmax_t / dx = p_t (w_t - sum_k p_k w_k)
    p = (x.flatten(1) @ model.w.T).softmax(1)
    expected = p.gather(1, targets[:, None]) * (model.w[targets] - p @ model.w)
    g = smoothgrad(TargetScore(model, "prob"), x, targets, n_samples=2, noise_level=0.0)
    assert torch.allclose(g.flatten(1), expected, atol=1e-6)


def test_saliency_map_sums_magnitudes_over_rgb_then_normalises():
    grads = torch.zeros(1, 3, 2, 2)
    grads[0, 0, 0, 0], grads[0, 1, 0, 0] = -1.0, 2.0  # |.| summed: 3
    grads[0, 2, 1, 1] = -1.5                             # 1.5
    assert torch.allclose(saliency_map(grads)[0], torch.tensor([[1.0, 0.0], [0.0, 0.5]]))


def test_explain_targets_class_top1_and_unlabelled():
    scorers = [TargetScore(Linear(12, 4, seed=s)) for s in (0, 1)]
    x = torch.rand(3, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    probs = torch.stack([s.classifier(x).softmax(1) for s in scorers]).mean(0)
    top = probs.argmax(1)
    labels = torch.tensor([2, -1, 0])
    assert explain_targets(scorers, x, labels, "class").tolist() == [2, int(top[1]), 0]
    assert explain_targets(scorers, x, labels, "top1").tolist() == top.tolist()


# ---- stores -----------------------------------------------------------------------------------------------

PARAMS = ExplainSettings(image_size=32, n_samples=3, noise_level=0.15, batch_size=4, sample_chunk=3,
                         keep_model_deciles=True, seed=0)


# The tiny demo's classes as the tiny zoo's outputs, in another order than the index's (and with one class
# the demo lacks), so an output index is never an index position by accident.
ZOO_CLASSES = [["n90000002", "n90000000", "n90000009", "n90000001"], ["n90000001", "n90000002", "n90000000"]]


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Two tiny randomly initialised timm classifiers saved through the real zoo format."""
    import timm
    out = tmp_path_factory.mktemp("zoo")
    paths = []
    for arch, classes in zip(("test_efficientnet", "test_convnext"), ZOO_CLASSES):
        torch.manual_seed(0)
        save_classifier(out / f"{arch}.pt", ClassifierSpec(arch, arch),
                        timm.create_model(arch, num_classes=len(classes)), classes, "train")
        paths.append(str(out / f"{arch}.pt"))
    return paths


@pytest.fixture(scope="module")
def demo_shard(tiny_demo, tmp_path_factory):
    work = tmp_path_factory.mktemp("shard")
    build_index(tiny_demo / "imagenet/train", work / "index.parquet")
    write_shards(work / "index.parquet", 100, work / "shards")
    return work / "shards" / "shard-00000.parquet"


# wall-clock time, absolute paths, the measured speed of each sample chunk (with the chunk it chose: the
# deciles do not depend on it, test_the_chunk_changes_the_speed_not_the_noise) and of each precision (the
# choice does not depend on it)
WHERE_IT_RAN = {"timing", "shard_table", "image_root", "sample_chunks", "precision_speed"}


def store_content(path: Path) -> dict:
    """Every array's bytes and the attrs, except those that say where and how long it ran."""
    group = store.open_store(path)
    content = {name: group[name][:].tobytes() for name in group.array_keys()}
    content["attrs"] = json.dumps({k: v for k, v in group.attrs.items() if k not in WHERE_IT_RAN}, sort_keys=True)
    return content


def test_store_contract_and_determinism(demo_shard, tiny_zoo, tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    explain_shard(demo_shard, tiny_zoo, a, PARAMS)
    explain_shard(demo_shard, tiny_zoo, b, PARAMS)
    assert store_content(a) == store_content(b)
    group = store.open_store(a)
    frame, _ = read_table(demo_shard)
    n = len(frame)
    assert group["deciles"].shape == (n, 32, 32) and group["deciles"].dtype == np.uint8
    assert group["deciles"].chunks == (1, 32, 32) and group["deciles"].shards is not None
    assert group["model_deciles"].shape == (n, 2, 32, 32)
    assert np.array_equal(group["image_id"][:], frame["image_id"].to_numpy())
    assert np.array_equal(group["class_idx"][:], frame["class_idx"].to_numpy())
    assert (group["status"][:] == store.DONE).all()
    assert (group["orig_hw"][:] > 0).all() and group["deciles"][:].max() == 9
    hist = np.bincount(group["deciles"][:].ravel(), minlength=10) / group["deciles"][:].size
    assert np.allclose(hist, 0.1, atol=0.02)  # eq. 2 puts ~10% of the pixels in each decile
    assert group.attrs["smoothgrad"]["n_samples"] == 3 and len(group.attrs["models"]) == 2
    assert "without keeping the aspect ratio" in group.attrs["preprocessing"]
    assert not list(tmp_path.glob(".*partial"))


def test_bad_images_get_a_status_and_a_reason(tiny_zoo, tmp_path):
    root = tmp_path / "train" / "n90000001"
    root.mkdir(parents=True)
    rgb = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "good.JPEG")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.JPEG")
    Image.fromarray(rgb).convert("L").save(root / "gray.JPEG")
    Image.fromarray(rgb).save(root / "png_bytes.JPEG", format="PNG")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "sixteen.png")
    (root / "empty.JPEG").write_bytes(b"")
    (root / "text.JPEG").write_bytes(b"this is not an image at all")
    (root / "truncated.JPEG").write_bytes((root / "good.JPEG").read_bytes()[:300])
    build_index(tmp_path / "train", tmp_path / "index.parquet")
    write_shards(tmp_path / "index.parquet", 100, tmp_path / "shards")
    out = tmp_path / "bad.zarr"
    explain_shard(tmp_path / "shards/shard-00000.parquet", tiny_zoo, out, PARAMS)
    group = store.open_store(out)
    frame, _ = read_table(tmp_path / "index.parquet")
    status = dict(zip(frame["relpath"].str.split("/").str[1], group["status"][:]))
    reasons = {frame["relpath"][int(k)].split("/")[1]: v for k, v in group.attrs["unreadable"].items()}
    for name in ("good.JPEG", "cmyk.JPEG", "gray.JPEG", "png_bytes.JPEG", "palette.png", "sixteen.png"):
        assert status[name] == store.DONE, name
    assert {k for k, v in status.items() if v == store.UNREADABLE} == {"empty.JPEG", "text.JPEG",
                                                                        "truncated.JPEG"}
    assert reasons["empty.JPEG"] == "zero-byte file"
    assert "not an image" in reasons["text.JPEG"]
    assert "truncated" in reasons["truncated.JPEG"].lower()
    hw = dict(zip(frame["relpath"].str.split("/").str[1], group["orig_hw"][:].tolist()))
    assert hw["cmyk.JPEG"] == [30, 40] and hw["empty.JPEG"] == [0, 0]


def test_each_batch_of_a_shard_draws_its_own_noise(tiny_zoo, tmp_path):
    """The same 4 pixels-identical images as batch 1 and batch 2 of one shard: their maps differ, because each
    batch seeds its noise from its first image id (a shard whose batches all drew the same noise would give
    equal maps here, and no resume test would see it: a resumed run repeats the same noise)."""
    rgb = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    root = tmp_path / "train" / "n90000001"
    root.mkdir(parents=True)
    for i in range(2 * PARAMS.batch_size):
        Image.fromarray(rgb).save(root / f"same_{i}.JPEG")
    build_index(tmp_path / "train", tmp_path / "index.parquet")
    write_shards(tmp_path / "index.parquet", 100, tmp_path / "shards")
    explain_shard(tmp_path / "shards/shard-00000.parquet", tiny_zoo, tmp_path / "same.zarr", PARAMS)
    deciles = store.open_store(tmp_path / "same.zarr")["deciles"][:]
    first, second = deciles[:PARAMS.batch_size], deciles[PARAMS.batch_size:]
    assert not np.array_equal(first, second)
    assert all(not np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.slow
def test_killed_job_resumes_to_the_identical_store(demo_shard, tiny_zoo, tmp_path):
    params = ExplainSettings(**{**PARAMS.__dict__, "batch_size": 2, "n_samples": 6})
    reference = tmp_path / "reference.zarr"
    explain_shard(demo_shard, tiny_zoo, reference, params)

    out = tmp_path / "resumed.zarr"
    partial = tmp_path / ".resumed.zarr.partial"
    flags = [f"--{k.replace('_', '-')}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in params.__dict__.items()]
    cmd = [sys.executable, "-m", "pssl", "explain", "--shard", str(demo_shard), "--zoo", *tiny_zoo,
           "--out", str(out), "--threads", "1", *flags]
    proc = subprocess.Popen(cmd, env=snakemake_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    n_total = len(read_table(demo_shard)[0])
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int((store.open_store(partial)["status"][:] != store.PENDING).sum())
        except Exception:
            done = 0
        if 0 < done < n_total - 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; make it slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.exists()

    rerun = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, check=True)
    batches_total = -(-n_total // params.batch_size)
    first_line = next(line for line in (rerun.stdout + rerun.stderr).splitlines() if "batches to do" in line)
    to_do = int(first_line.split("batches to do")[0].split(",")[-1].strip().split("/")[0])
    assert to_do <= batches_total - done // params.batch_size < batches_total  # finished rows not recomputed
    assert store_content(out) == store_content(reference)
    assert not partial.exists()


def test_changed_parameters_do_not_resume_a_stale_partial(demo_shard, tiny_zoo, tmp_path):
    out = tmp_path / "s.zarr"
    partial = tmp_path / ".s.zarr.partial"
    other = ExplainSettings(**{**PARAMS.__dict__, "noise_level": 0.3})
    explain_shard(demo_shard, tiny_zoo, partial, other)  # a finished store standing in for a stale partial
    group = store.open_store(partial, "r+")
    group["status"][:4] = store.PENDING
    explain_shard(demo_shard, tiny_zoo, out, PARAMS)
    reference = tmp_path / "r.zarr"
    explain_shard(demo_shard, tiny_zoo, reference, PARAMS)
    assert store_content(out) == store_content(reference)


def test_store_opens_in_xarray_with_named_dimensions(demo_shard, tiny_zoo, tmp_path):
    """xarray.open_zarr gives named dimensions and the image ids as a coordinate; listing the finished group
    (with Snakemake's marker file inside it, as the workflow leaves it) raises no warning."""
    import warnings

    import xarray as xr
    import zarr
    out = tmp_path / "s.zarr"
    explain_shard(demo_shard, tiny_zoo, out, PARAMS)
    (out / ".snakemake_timestamp").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out)
        assert sorted(zarr.open_group(str(out), mode="r").array_keys()) == [
            "class_idx", "deciles", "image_id", "model_deciles", "orig_hw", "status", "target"]
    assert ds["deciles"].dims == ("image", "y", "x") and ds.sizes == {"image": 18, "y": 32, "x": 32, "model": 2,
                                                                       "hw": 2}
    assert ds["model_deciles"].dims == ("image", "model", "y", "x")
    assert set(ds.coords) == {"image_id", "class_idx"}
    group = store.open_store(out)
    assert (ds["image_id"].values == group["image_id"][:]).all()
    assert (ds["deciles"].values == group["deciles"][:]).all()
    by_id = ds.set_index(image="image_id")  # select an image by its id
    first = int(group["image_id"][0])
    assert (by_id["deciles"].sel(image=first).values == group["deciles"][0]).all()


def test_gallery_sample_spreads_over_classes_and_names_them(demo_shard, tiny_zoo, tmp_path):
    from pssl.report.figures import class_names, read_image, spread_sample
    out = tmp_path / "s.zarr"
    explain_shard(demo_shard, tiny_zoo, out, PARAMS)
    targets = store.open_store(out)["target"][:]
    sample = spread_sample([str(out)], 4)
    assert len({int(targets[row]) for _, row in sample[:3]}) == 3  # one image of each class first
    assert len(sample) == 4 and len(set(sample)) == 4
    frame, meta = read_table(demo_shard)
    names = class_names(meta["root"])  # the demo's LOC_synset_mapping.txt, as ImageNet's
    assert names["n90000000"] == "orange stripes disc"
    image = read_image(store.open_store(out), 0)
    assert image.title == f"{names[meta['classes'][int(targets[0])]]} (image {int(frame['image_id'][0])})"
    assert image.rgb.shape[:2] == tuple(store.open_store(out)["orig_hw"][0])  # the image itself, not squashed


def test_inspect_and_show(demo_shard, tiny_zoo, tmp_path):
    out = tmp_path / "s.zarr"
    explain_shard(demo_shard, tiny_zoo, out, PARAMS)
    env = snakemake_env()
    text = subprocess.run([sys.executable, "-m", "pssl", "inspect", str(out)], env=env, capture_output=True,
                          text=True, check=True).stdout
    for needle in ("deciles", "(18, 32, 32)", "uint8", "Zstd", "per image", "'done': 18", "decile histogram",
                   "smoothgrad", "classes        3 (n90000000 .. n90000002)", "stability      D9 IoU"):
        assert needle in text, needle
    png = tmp_path / "show.png"
    subprocess.run([sys.executable, "-m", "pssl", "show", str(out), "--index", "3", "--out", str(png),
                    "--model-deciles"], env=env, check=True, capture_output=True)
    img = Image.open(png)
    assert img.format == "PNG" and img.width > 3 * 32 * 3


def test_every_store_records_the_labels_stability_between_two_noise_draws(demo_shard, tiny_zoo, tmp_path):
    explain_shard(demo_shard, tiny_zoo, tmp_path / "noisy.zarr", PARAMS)
    explain_shard(demo_shard, tiny_zoo, tmp_path / "still.zarr", ExplainSettings(**{**PARAMS.__dict__,
                                                                                  "noise_level": 0.0}))
    noisy, still = (store.open_store(tmp_path / f"{n}.zarr").attrs["stability"] for n in ("noisy", "still"))
    assert noisy["images"] == still["images"] == PARAMS.batch_size  # the first batch, at most 8 images
    assert still["d9_iou"] == 1.0 and still["decile_agreement"] == 1.0  # no noise: the two draws are one
    assert 0.0 < noisy["d9_iou"] < 1.0


# ---- quality formulas against hand counts ---------------------------------------------------------------------

def test_region_scores_by_hand():
    from pssl.explain.quality import region_scores
    deciles = np.array([[9, 9, 8, 0],
                        [9, 7, 8, 0],
                        [0, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 0, 0, 0]], dtype=bool)
    precision, best = region_scores(deciles, mask)
    assert precision == 2 / 3          # D9: 3 pixels, 2 on the object
    # t = 9: IoU 2/6; t = 8: {9, 8} = 5 px, 4 on the object, union 6 -> 4/6; t = 7 (or lower down to 1): 6 px
    # all 5 object pixels, union 6 -> 5/6 (the best)
    assert best == 5 / 6
    assert region_scores(np.zeros((2, 2), int), np.ones((2, 2), bool)) == (0.0, 0.0)  # no D9, nothing found


def test_foreground_scores_by_hand():
    from pssl.explain.quality import foreground_scores
    pred = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    mask = np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)
    acc, iou = foreground_scores(pred, mask)
    assert acc == 4 / 6 and iou == 1 / 3
    assert foreground_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == (1.0, 0.0)


# ---- speed: the sample chunk and the precision ----------------------------------------------------------

class ConvReluMean(nn.Module):
    """conv (frozen) -> ReLU -> spatial mean: autograd saves exactly the conv input and the ReLU output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


def test_the_chunk_changes_the_speed_not_the_noise():
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    scorer, targets = TargetScore(ConvReluMean()), torch.tensor([0, 5, 7])
    results = []
    for chunk in (1, 2, 3, 7, None):
        torch.manual_seed(11)
        results.append(smoothgrad(scorer, x, targets, n_samples=7, noise_level=0.3, sample_chunk=chunk))
    scale = float(results[0].abs().max())
    for other in results[1:]:
        assert float((results[0] - other).abs().max()) < 1e-5 * scale
    torch.manual_seed(12)
    other_noise = smoothgrad(scorer, x, targets, 7, 0.3, 2)
    assert float((results[0] - other_noise).abs().max()) > 0.1 * scale, "the test must see the noise"


def test_saved_activation_bytes_are_counted_per_sample():
    from pssl.explain.chunking import saved_bytes_per_sample
    image = torch.rand(2, 3, 16, 16)
    counted = saved_bytes_per_sample(TargetScore(ConvReluMean()), image, torch.tensor([1, 1]), bf16=False)
    conv_input, relu_output, softmax_output = 3 * 16 * 16 * 4, 8 * 16 * 16 * 4, 8 * 4
    noisy_input_and_gradients = 3 * (3 * 16 * 16 * 4)
    assert counted == conv_input + relu_output + softmax_output + noisy_input_and_gradients


def test_auto_chunk_fits_the_budget_and_keeps_the_fastest():
    from pssl.explain.chunking import IN_FLIGHT, candidates, choose_chunk, saved_bytes_per_sample
    assert candidates(50) == [1, 2, 4, 8, 16, 32, 50] and candidates(1) == [1] and candidates(4) == [1, 2, 4]
    scorer, images, targets = TargetScore(ConvReluMean()), torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    per_sample = saved_bytes_per_sample(scorer, images, targets, False)
    budget = int(4 * 4 * per_sample * IN_FLIGHT) + 1  # chunks 1, 2 and 4 fit, 8 and 16 do not
    choice = choose_chunk(scorer, images, targets, 16, 0.1, False, budget)
    assert set(choice.samples_per_s) <= {1, 2, 4} and choice.chunk == max(choice.samples_per_s,
                                                                          key=choice.samples_per_s.get)
    with pytest.raises(MemoryError, match="memory_budget_gb"):
        choose_chunk(scorer, images, targets, 16, 0.1, False, per_sample)


def test_d9_iou_is_intersection_over_union_of_the_top_decile():
    from pssl.explain.run import d9_iou
    a = torch.tensor([[9, 9, 9, 1], [0, 9, 2, 3]])
    b = torch.tensor([[9, 9, 0, 9], [0, 9, 2, 3]])
    assert d9_iou(a, b) == 3 / 5


def test_auto_chunk_and_precision_are_recorded_and_change_no_decile(demo_shard, tiny_zoo, tmp_path):
    fixed, auto = tmp_path / "fixed.zarr", tmp_path / "auto.zarr"
    explain_shard(demo_shard, tiny_zoo, fixed, ExplainSettings(**{**PARAMS.__dict__, "precision": "fp32"}))
    explain_shard(demo_shard, tiny_zoo, auto, ExplainSettings(**{**PARAMS.__dict__, "sample_chunk": "auto",
                                                                   "memory_budget_gb": 0.5}))
    attrs = store.open_store(auto).attrs
    assert set(attrs["sample_chunks"]) == {"test_efficientnet", "test_convnext"}
    for record in attrs["sample_chunks"].values():
        assert record["chunk"] in (1, 2, 3) and record["budget_gb"] == 0.5 and record["samples_per_s"]
    from pssl.device import native_bf16
    if native_bf16(torch.device("cpu")):  # this machine's CPU: the gate ran on the real tiny classifiers
        check = attrs["precision_check"]
        bf16 = check["candidates"]["bf16"]
        assert check["max_deviation_ratio"] == 0.5 and 0 <= bf16["d9_iou"] <= 1
        noise = 1 - attrs["stability"]["d9_iou"]
        assert bf16["passed"] == (1 - bf16["d9_iou"] <= 0.5 * noise + 1e-4)  # the figures are rounded
        assert attrs["precision_used"] == ("bf16" if bf16["passed"] else "fp32")
        speed = attrs["precision_speed"]
        assert speed["images"] == 4 and speed["seconds_per_image"]["fp32"] > 0 < speed["seconds_per_image"]["bf16"]
    if attrs["precision_used"] == "fp32":
        assert np.array_equal(store.open_store(fixed)["deciles"][:], store.open_store(auto)["deciles"][:])
    assert store.open_store(fixed).attrs["precision_used"] == "fp32"


@pytest.mark.gpu
def test_explain_on_the_device_measures_and_runs_every_precision_it_offers(device, demo_shard, tiny_zoo, tmp_path):
    """What the first GPU run does: `auto` measures each reduced precision the device offers (bf16 and TF32
    through cuBLAS and cuDNN on compute capability 8.0+) against fp32 and records it; then each of them,
    asked for explicitly, writes a complete store."""
    from pssl.device import explain_candidates
    candidates = explain_candidates(device)
    explain_shard(demo_shard, tiny_zoo, tmp_path / "auto.zarr", PARAMS, device=device.type)
    attrs = store.open_store(tmp_path / "auto.zarr").attrs
    assert set(attrs.get("precision_check", {}).get("candidates", {})) == set(candidates)
    assert attrs["precision_used"] in ["fp32", *candidates]
    for precision in ["fp32", *candidates]:
        out = tmp_path / f"{precision}.zarr"
        explain_shard(demo_shard, tiny_zoo, out, ExplainSettings(**{**PARAMS.__dict__, "precision": precision}),
                      device=device.type)
        group = store.open_store(out)
        assert group.attrs["precision_used"] == precision and (group["status"][:] == store.DONE).all()
        assert group["deciles"][:].max() == 9, precision


@pytest.mark.gpu
def test_ieee_fp32_math_is_exact_on_the_device(device):
    """'ieee' is true fp32 on the device: 1 + 2^-12 is exact in fp32 and rounds to 1 in TF32, and every partial
    sum of this product is exact in fp32, so only TF32 (or a wrong flag) changes it. The TF32 block must run."""
    from pssl.device import cuda_fp32_math
    a = torch.full((256, 256), 1 + 2 ** -12, device=device)
    with cuda_fp32_math("ieee"):
        assert bool(((a @ torch.ones_like(a)) == 256 * (1 + 2 ** -12)).all())
    with cuda_fp32_math("tf32"):
        assert torch.isfinite(a @ torch.ones_like(a)).all()


# ---- the precision gate: a reduced precision against the method's own noise (issue 29) ---------------------

def nines(length: int, *spans: range) -> torch.Tensor:
    """A decile map of `length` pixels whose decile-9 pixels are `spans`, 0 elsewhere."""
    deciles = torch.zeros(length, dtype=torch.uint8)
    for span in spans:
        deciles[list(span)] = 9
    return deciles


def test_the_gate_measures_a_reduced_precision_against_the_seed_to_seed_deviation():
    from pssl.explain.run import d9_iou, precision_gate
    fp32 = nines(30, range(10))                    # D9: pixels 0..9
    bf16 = nines(30, range(9), range(10, 11))      # 9 shared, 1 moved: IoU 9/11
    other_draw = nines(30, range(6), range(20, 24))  # 6 shared, 4 moved: IoU 6/14
    assert (d9_iou(fp32, bf16), d9_iou(fp32, other_draw)) == (9 / 11, 6 / 14)
    # deviation 2/11 = 0.18 against the noise's 8/14 = 0.57: a ratio of 0.32, under half. The fixed bar of
    # 0.98 refused this (IoU 0.82), although sampling alone moves the mask three times as far.
    verdict = precision_gate(9 / 11, 6 / 14)
    assert verdict["passed"] and verdict["deviation_ratio"] == round((2 / 11) / (8 / 14), 4)
    assert not precision_gate(6 / 14, 9 / 11)["passed"]   # ratio (8/14) / (2/11) = 3.1
    assert precision_gate(0.75, 0.5)["passed"] and not precision_gate(0.74, 0.5)["passed"]  # the bar: 0.25 of 0.5
    assert precision_gate(1.0, 1.0) == {"d9_iou": 1.0, "deviation_ratio": None, "passed": True}  # no noise:
    assert not precision_gate(0.99, 1.0)["passed"]                                              # exact only


def test_reduced_precisions_per_device():
    from pssl.device import reduced_precisions
    assert reduced_precisions("cuda", (8, 0), cpu_bf16=False) == ["bf16", "tf32"]  # A100
    assert reduced_precisions("cuda", (9, 0), cpu_bf16=False) == ["bf16", "tf32"]  # H100
    assert reduced_precisions("cuda", (7, 0), cpu_bf16=True) == []  # V100: emulated bf16, no TF32
    assert reduced_precisions("cpu", None, cpu_bf16=True) == ["bf16"]  # AVX512-BF16 / AMX: no TF32 on a CPU
    assert reduced_precisions("cpu", None, cpu_bf16=False) == []


def cuda_tf32_flags() -> tuple[bool, bool, bool, bool]:
    """Whether CUDA would run fp32 matmuls and convolutions in TF32, as cuBLAS and cuDNN ask torch for it (the
    allow_tf32 getters: torch raises there when its older and newer flags disagree, as CUDA's kernels do at
    their first fp32 call), and as the newer per-op flags say."""
    backends = torch.backends
    newer = getattr(backends.cuda.matmul, "fp32_precision", None), getattr(backends.cudnn, "conv", None)
    return (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32,
            backends.cuda.matmul.allow_tf32 if newer[0] is None else newer[0] == "tf32",  # torch < 2.9: none
            backends.cudnn.allow_tf32 if newer[1] is None else newer[1].fp32_precision == "tf32")


class FlagRecorder(nn.Module):
    """ConvReluMean that records which fp32 math CUDA would use for its convolution and matmuls."""

    def __init__(self):
        super().__init__()
        self.net, self.seen = ConvReluMean(), []

    def forward(self, x):
        self.seen.append(cuda_tf32_flags())
        return self.net(x)


def test_each_precision_sets_the_cuda_fp32_math_explicitly():
    """TF32 only where chosen: torch's default runs CUDA's fp32 convolutions in TF32 on an A100 or H100. The
    flags are what CUDA reads, consistently for both of torch's APIs (a disagreement is a RuntimeError at the
    first cuBLAS or cuDNN call); on this CPU they are recorded, not used."""
    from pssl.explain.run import explain_batch
    before = cuda_tf32_flags()
    params = ExplainSettings(image_size=8, n_samples=2, noise_level=0.1, sample_chunk=2)
    for precision, tf32 in (("fp32", False), ("bf16", False), ("tf32", True)):
        recorder = FlagRecorder()
        explain_batch([TargetScore(recorder)], torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), params, precision)
        assert recorder.seen and set(recorder.seen) == {(tf32,) * 4}, precision
    assert cuda_tf32_flags() == before


def test_tf32_goes_through_the_same_gate_and_is_recorded(tmp_path):
    """TF32's decision as an A100 or H100 makes it, on this CPU: TF32 flags change nothing here, so tf32
    matches fp32 exactly, passes and is used, with its speed recorded beside fp32's."""
    from pssl.explain.run import decide_speed
    scorers = [TargetScore(ConvReluMean()), TargetScore(ConvReluMean())]
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    settings = ExplainSettings(image_size=16, n_samples=4, noise_level=0.15, batch_size=4, sample_chunk="auto",
                               memory_budget_gb=0.5)
    decision = decide_speed(scorers, ["a", "b"], images, torch.tensor([0, 1, 2, 3]), settings, seed=7, known={},
                            candidates=["tf32"])
    assert decision["stability"]["images"] == 4 and decision["stability"]["precision"] == "fp32"
    tf32 = decision["precision_check"]["candidates"]["tf32"]
    assert tf32 == {"d9_iou": 1.0, "deviation_ratio": 0.0, "passed": True, "decile_agreement": 1.0}
    assert decision["precision_used"] == "tf32" and set(decision["sample_chunks"]) == {"a", "b"}
    assert set(decision["precision_speed"]["seconds_per_image"]) == {"fp32", "tf32"}
    assert decide_speed(scorers, ["a", "b"], images, torch.tensor([0, 1, 2, 3]), settings, seed=7,
                        known=decision, candidates=["tf32"]) == decision  # a resumed store keeps its choice
    with pytest.raises(ValueError, match="tf32 needs a CUDA GPU of compute capability 8.0"):
        explain_shard(tmp_path / "none.parquet", [], tmp_path / "s.zarr",
                      ExplainSettings(precision="tf32"), device="cpu")
