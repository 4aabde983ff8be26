"""Pre-training: loss weighting, label maps, label policy, models, DDP equivalence, kill-and-resume."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, kill_at_first_checkpoint, snakemake_env
from pssl.data.images import resize_nearest
from pssl.data.pseudo import label_map
from pssl.labels import apply_policy
from pssl.models.segmenter import build_segmenter
from pssl.models.weights import load_backbone_weights
from pssl.train.losses import class_weights, weighted_ce_sums
from pssl.train.schedules import lr_multiplier

WORKER = str(REPO / "tests" / "ddp_worker.py")


# ---- loss --------------------------------------------------------------------------------------------------

def test_weighted_ce_against_a_hand_computation():
    logits = torch.tensor([[[[2.0]], [[0.0]], [[1.0]]], [[[0.5]], [[0.5]], [[3.0]]]])  # B=2, C=3, 1x1
    target = torch.tensor([[[0]], [[2]]])
    weight = class_weights(3, background=2, w_bg=0.1)
    assert weight.tolist() == pytest.approx([1.0, 1.0, 0.1])
    loss_sum, weight_sum = weighted_ce_sums(logits, target, weight)
    ce0 = -np.log(np.exp(2) / (np.exp(2) + np.exp(0) + np.exp(1)))
    ce1 = -np.log(np.exp(3) / (np.exp(0.5) + np.exp(0.5) + np.exp(3)))
    assert float(loss_sum) == pytest.approx(1.0 * ce0 + 0.1 * ce1, rel=1e-6)
    assert float(weight_sum) == pytest.approx(1.1)


def test_weighted_ce_mean_matches_torch_with_ignore():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, 6, generator=g)
    target = torch.randint(0, 5, (3, 7, 6), generator=g)
    target[0, :2] = -1
    weight = class_weights(5, background=4, w_bg=0.1)
    loss_sum, weight_sum = weighted_ce_sums(logits, target, weight)
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=-1)
    assert float(loss_sum / weight_sum) == pytest.approx(float(expected), rel=1e-5)


def test_step_and_poly_schedules():
    step = lr_multiplier("step", steps_per_epoch=10, total_steps=300, milestones=(20,), gamma=0.1)
    assert step(0) == 1.0 and step(199) == 1.0 and step(200) == pytest.approx(0.1) and step(299) == pytest.approx(0.1)
    poly = lr_multiplier("poly", steps_per_epoch=10, total_steps=100, power=0.9)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.5 ** 0.9) and poly(100) == 0.0


# ---- label maps and policy ---------------------------------------------------------------------------------

def test_label_map_threshold_background_and_ignore():
    deciles = np.array([[9, 8, 7], [0, 9, 5]], dtype=np.uint8)
    assert label_map(deciles, 3, 10).tolist() == [[3, 10, 10], [10, 3, 10]]
    assert label_map(deciles, 3, 10, threshold=8).tolist() == [[3, 3, 10], [10, 3, 10]]
    assert label_map(deciles, 3, 10, ignore_deciles=(7, 8)).tolist() == [[3, -1, -1], [10, 3, 10]]


@pytest.mark.parametrize("hw", [(64, 64), (50, 77), (7, 3), (31, 128)])
def test_resize_nearest_matches_torch_pixel_centre_sampling(hw):
    # PIL's NEAREST rounds exact ties differently; torch's nearest-exact samples pixel centres like we do.
    labels = np.random.default_rng(0).integers(0, 1001, size=(16, 16)).astype(np.int64)
    ref = F.interpolate(torch.tensor(labels, dtype=torch.float64)[None, None], size=hw, mode="nearest-exact")
    assert np.array_equal(resize_nearest(labels, hw), ref[0, 0].long().numpy())


def test_label_policies():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]], dtype=np.float32)
    gt = np.array([0, 2, -1, 0])
    done = np.array([True, True, True, False])
    label, keep = apply_policy(gt, probs, done, "gt", top_k=1, min_conf=0.0)
    assert label.tolist() == [0, 2, -1, 0] and keep.tolist() == [True, True, False, False]
    label, keep = apply_policy(gt, probs, done, "teacher", top_k=1, min_conf=0.0)
    assert label.tolist() == [0, 1, 2, 1] and keep.tolist() == [True, True, True, False]
    label, keep = apply_policy(gt, probs, done, "agree", top_k=1, min_conf=0.0)
    assert label.tolist() == [0, 2, -1, 0] and keep.tolist() == [True, False, False, False]  # the dataset's class
    label, keep = apply_policy(gt, probs, done, "agree", top_k=2, min_conf=0.0)
    assert label.tolist() == [0, 2, -1, 0] and keep.tolist() == [True, True, False, False]
    label, keep = apply_policy(gt, probs, done, "teacher", top_k=1, min_conf=0.45)
    assert keep.tolist() == [True, True, False, False]


# ---- models ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head, backbone", [("pspnet", "resnet50"), ("deeplabv3", "resnest50d"),
                                            ("ocrnet", "hrnet_w18")])
def test_paper_models_output_shapes(head, backbone):
    torch.set_num_threads(2)
    model = build_segmenter(head, backbone, 7)
    x = torch.rand(2, 3, 64, 48)
    model.train()
    out = model(x)
    assert out["out"].shape == (2, 7, 64, 48) and out["aux"].shape == (2, 7, 64, 48)
    model.eval()
    with torch.no_grad():
        assert set(model(x)) == {"out"}
    if head != "ocrnet":
        reductions = model.backbone.feature_info.reduction()
        assert reductions[-1] == 8, "dilated backbone, output stride 8"
    assert all(layer.out_channels == 7 for layer in model.classifier_layers())


def test_backbone_takes_classifier_weights_of_the_same_architecture():
    import timm
    classifier = timm.create_model("resnet10t", num_classes=5)
    model = build_segmenter("pspnet", "resnet10t", 3)
    loaded, expected = load_backbone_weights(model, classifier.state_dict())
    assert loaded == expected
    assert torch.equal(model.backbone.state_dict()["conv1.0.weight"], classifier.state_dict()["conv1.0.weight"])


# ---- distributed and resume --------------------------------------------------------------------------------

def run_worker(out, ckpt, nproc=1, extra=()):
    if nproc == 1:
        cmd = [sys.executable, WORKER, str(out), str(ckpt), *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               WORKER, str(out), str(ckpt), *extra]
    return subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("labels", ["hard", "fused"])
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, labels):
    """Label maps (eq. 3) and PseudoSeg's fused soft labels (whose logit RMS spans the global batch)."""
    extra = ["--fused"] if labels == "fused" else []
    single = run_worker(tmp_path / "one.pt", tmp_path / "one", extra=extra)
    assert single.returncode == 0, single.stdout + single.stderr
    double = run_worker(tmp_path / "two.pt", tmp_path / "two", nproc=2, extra=extra)
    assert double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    logged = [pd.read_csv(tmp_path / run / "log.csv")["loss"] for run in ("one", "two")]
    assert np.allclose(logged[0], logged[1], rtol=1e-4), "log.csv: the global batch's loss on any ranks"
    start = build_segmenter("pspnet", "resnet10t", 3).state_dict()
    moved = 0
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
            moved += not torch.equal(a[k], start[k])
    assert moved > 10, "training changed the weights"


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tmp_path):
    reference = run_worker(tmp_path / "ref.pt", tmp_path / "ref", extra=["--epochs", "3"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    ckpt = tmp_path / "run"
    cmd = [sys.executable, WORKER, str(tmp_path / "resumed.pt"), str(ckpt), "--epochs", "3",
           "--checkpoint-every", "3"]
    assert kill_at_first_checkpoint(cmd, ckpt) < 12, "killed mid-run (3 epochs x 4 steps)"
    resumed = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr  # the pssl logger's line
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
