"""MDP (multi-dataset pixel-to-prototype pre-training): the union label space, the mixed views, eq. 2's
prototype memory, the InfoNCE and consistency terms against hand computations, the key encoder, DDP
equivalence, kill-and-resume, the pre-training command and fine-tuning from it."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, kill_at_first_checkpoint, snakemake_env
from pssl.data.downstream import DATASETS, SegmentationSet
from pssl.data.multi_dataset import UNION_IGNORE, MultiDatasetViews, cutmix_keep, union_labels
from pssl.models.segmenter import build_segmenter
from pssl.train.prototypes import (
    PrototypeMemory,
    class_loss_sums,
    class_sums,
    class_weights_map,
    consistency_sums,
    labels_at,
    prototype_logits,
)
from pssl.train.schedules import lr_multiplier

WORKER = str(REPO / "tests" / "ddp_worker.py")


# ---- the union label space and the views -------------------------------------------------------------------

def test_union_keeps_datasets_apart_unless_names_merge():
    voc, ade = DATASETS["voc_aug"].classes, DATASETS["ade20k"].classes
    space = union_labels(["voc_aug", "ade20k"])
    assert len(space.classes) == len(voc) + len(ade)
    assert space.classes[voc.index("person")] == "voc_aug/person"
    assert space.classes[len(voc) + ade.index("person")] == "ade20k/person"
    train_ids = np.array([[ade.index("person"), 255]], dtype=np.uint8)
    assert space.union_ids(1, train_ids).tolist() == [[len(voc) + ade.index("person"), UNION_IGNORE]]

    merged = union_labels(["voc_aug", "ade20k"], merge_names=True)
    shared = set(voc) & set(ade)
    assert "person" in shared and len(merged.classes) == len(voc) + len(ade) - len(shared)
    person = merged.classes.index("person")
    assert merged.union_ids(0, np.array([voc.index("person")]))[0] == person
    assert merged.union_ids(1, np.array([ade.index("person")]))[0] == person
    assert merged.sources[person] == ("voc_aug", "ade20k")


def test_cutmix_box_is_cutmix_rand_bbox():
    """A box of side size x sqrt(1 - lam) at a uniform centre (two draws), clipped: Yun et al.'s rand_bbox."""
    g = torch.Generator().manual_seed(3)
    keep = cutmix_keep(g, 40, 0.64)
    g = torch.Generator().manual_seed(3)
    cy, cx = int(torch.randint(40, (), generator=g)), int(torch.randint(40, (), generator=g))
    cut = int(40 * math.sqrt(1 - 0.64))  # 24
    expected = np.ones((40, 40), dtype=bool)
    expected[max(cy - 12, 0):min(cy + 12, 40), max(cx - 12, 0):min(cx + 12, 40)] = False
    assert cut == 24 and np.array_equal(keep, expected)


@pytest.fixture(scope="module")
def views(tiny_demo):
    space = union_labels(["voc_aug", "ade20k"])
    sets = [SegmentationSet(d, tiny_demo, "train") for d in space.datasets]
    return MultiDatasetViews(sets, space, 32, seed=0, cutmix=True, mixup=True, mix_prob=0.75)


def test_views_mix_across_datasets_and_repeat_per_seed_epoch_index(views):
    voc = len(DATASETS["voc_aug"].classes)
    kinds = {}
    for i in range(len(views)):
        item = views[i]
        assert item["views"].shape == (2, 3, 32, 32) and item["colour"].shape == (3, 32, 32)
        own = i >= len(views.sets[0])  # the item's dataset: 0 VOC, 1 ADE20K
        in_ade = lambda labels: labels[labels >= 0] >= voc  # noqa: E731
        kinds.setdefault(int(item["mixed"]), []).append(i)
        if item["mixed"] == 0:  # its own labels only, weight 1
            assert (item["label_b"] == UNION_IGNORE).all() and item["lam"].tolist() == [1.0, 1.0]
            assert (in_ade(item["label_a"]) == own).all()
        elif item["mixed"] == 2:  # Mixup: label a its own dataset's, label b the other's, weighted lam
            assert (in_ade(item["label_a"]) == own).all() and (in_ade(item["label_b"]) != own).all()
            assert item["lam"][0] == item["lam"][1] and 0 <= float(item["lam"][0]) <= 1
        else:  # CutMix: one label map with both datasets' classes
            assert (item["label_b"] == UNION_IGNORE).all() and item["lam"].tolist() == [1.0, 1.0]
    assert set(kinds) == {0, 1, 2}, f"8 images at mix_prob 0.75 drew every kind: {kinds}"
    again = views[3]
    assert all(torch.equal(again[k], views[3][k]) for k in again)
    views.set_epoch(1)
    assert not torch.equal(views[3]["views"], again["views"])
    views.set_epoch(0)


# ---- eq. 2: prototypes and their FIFO memory ---------------------------------------------------------------

def test_class_sums_and_the_fifo_memory_against_eq2():
    """p_ij = mean embedding of image i's pixels of class j; P_j = sum_i p_ij / #images containing j, over
    the stored batches; a third batch pushes the first out of a memory of two."""
    g = torch.Generator().manual_seed(0)

    def batch():
        emb = F.normalize(torch.randn(2, 4, 3, 3, generator=g), dim=1)
        labels = torch.randint(-1, 3, (2, 3, 3), generator=g)
        labels[1][labels[1] == 2] = 0  # image 1 has no class 2
        return emb, labels

    def by_hand(emb, labels):
        sums, counts = torch.zeros(3, 4), torch.zeros(3)
        for i in range(2):
            for j in range(3):
                pixels = [emb[i, :, y, x] for y in range(3) for x in range(3) if labels[i, y, x] == j]
                if pixels:
                    sums[j] += torch.stack(pixels).mean(0)
                    counts[j] += 1
        return sums, counts

    memory = PrototypeMemory(3, 4, slots=2)
    batches = [batch() for _ in range(3)]
    for emb, labels in batches:
        sums, counts = class_sums(emb, class_weights_map(labels, torch.full_like(labels, -1), torch.ones(2), 3))
        hand_sums, hand_counts = by_hand(emb, labels)
        assert torch.allclose(sums, hand_sums, atol=1e-6) and torch.equal(counts, hand_counts)
        memory.push(sums, counts)
    kept = [by_hand(*b) for b in batches[1:]]  # the first batch left
    expected = (kept[0][0] + kept[1][0]) / (kept[0][1] + kept[1][1]).unsqueeze(1)
    prototypes, present = memory.prototypes()
    assert torch.allclose(prototypes, expected, atol=1e-6) and present.all()
    assert int(memory.pushed) == 3


def test_mixup_pixels_weigh_both_classes_in_the_prototypes():
    emb = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # 1 image, D=2, 1 x 2 pixels: e0 and e1
    a, b = torch.tensor([[[0, 0]]]), torch.tensor([[[1, -1]]])
    weights = class_weights_map(a, b, torch.tensor([0.25]), 2)
    sums, counts = class_sums(emb, weights)
    # class 0: pixels 0 and 1 at 0.25 each -> mean (e0 + e1) / 2, the image counts 0.25;
    # class 1: pixel 0 at 0.75 -> e0, the image counts 0.75
    assert torch.allclose(sums, torch.tensor([[0.125, 0.125], [0.75, 0.0]])) and counts.tolist() == [0.25, 0.75]
    memory = PrototypeMemory(2, 2, slots=1)
    memory.push(sums, counts)
    assert torch.allclose(memory.prototypes()[0], torch.tensor([[0.5, 0.5], [1.0, 0.0]]))


def test_labels_at_takes_each_feature_cells_centre():
    labels = torch.arange(64).view(1, 8, 8)
    assert labels_at(labels, 4).tolist() == [[[18, 22], [50, 54]]]


# ---- eq. 3, 6, 7-8 ------------------------------------------------------------------------------------------

def test_pixel_to_prototype_infonce_with_mixup_against_a_hand_computation():
    tau = 0.07
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0], [5.0, 5.0]])  # class 3: no prototype yet
    present = torch.tensor([True, True, True, False])
    f = F.normalize(torch.tensor([0.6, 0.8]), dim=0)
    emb = f.view(1, 2, 1, 1).repeat(1, 1, 1, 2)  # two pixels, the same embedding
    logits = prototype_logits(emb, protos, present, tau)
    unit = F.normalize(protos[:3], dim=1)
    z = torch.exp(unit @ f / tau)
    nll = -torch.log(z / z.sum())  # over the 3 classes with a prototype
    a, b = torch.tensor([[[0, 3]]]), torch.tensor([[[2, 1]]])
    total, weight = class_loss_sums(logits, a, b, torch.tensor([0.3]), present)
    # pixel 0: 0.3 L(0) + 0.7 L(2); pixel 1: its label a (class 3) has no prototype, 0.7 L(1)
    assert float(total) == pytest.approx(float(0.3 * nll[0] + 0.7 * nll[2] + 0.7 * nll[1]), rel=1e-5)
    assert float(weight) == pytest.approx(0.3 + 0.7 + 0.7)


def test_consistency_term_against_a_hand_computation():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    present = torch.tensor([True, True, True])
    q = F.normalize(torch.tensor([[0.9, 0.1], [0.2, 0.7]]), dim=1)
    k = F.normalize(torch.tensor([[1.0, 0.3], [0.1, 1.0]]), dim=1)
    unit = F.normalize(protos, dim=1)
    s = torch.softmax(q @ unit.T / 0.07, dim=1)
    s_key = torch.softmax(k @ unit.T / 0.04, dim=1)
    expected = -(s_key * torch.log(s)).sum()
    as_maps = lambda x: x.T.reshape(1, 2, 1, 2)  # noqa: E731  (N=1, D=2, 1 x 2 pixels)
    total, count = consistency_sums(as_maps(q), as_maps(k), protos, present, 0.07, 0.04)
    assert float(total) == pytest.approx(float(expected), rel=1e-5) and float(count) == 2


def test_cosine_schedule():
    cosine = lr_multiplier("cosine", steps_per_epoch=10, total_steps=100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    assert cosine(25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


# ---- the model ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head,backbone", [("pspnet", "resnet10t"), ("deeplabv3", "resnet10t"),
                                           ("ocrnet", "hrnet_w18_small")])
def test_features_are_what_the_classifier_sees(head, backbone):
    torch.manual_seed(0)
    model = build_segmenter(head, backbone, 5).eval()
    x = torch.rand(1, 3, 64, 64)
    logits = model.classifier_layers()[0](model.features(x))
    upsampled = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(upsampled, model(x)["out"], atol=1e-5)


def test_key_encoder_is_an_ema_of_the_query_and_unused_layers_are_frozen():
    from pssl.train.multi_dataset import MultiDatasetModel, freeze_unreached
    torch.manual_seed(0)
    model = MultiDatasetModel(build_segmenter("pspnet", "resnet10t", 4), (8, 8), PrototypeMemory(4, 8, slots=2))
    frozen = freeze_unreached(model, 64)
    assert set(frozen) == {f"segmenter.{n}" for n, _ in model.query.segmenter.named_parameters()
                           if n.startswith(("head.classifier", "head.aux"))}
    assert not any(p.requires_grad for p in model.key.parameters())
    model.train()  # the key's BatchNorm on batch statistics, its dropout off: the same batch, the same embeddings
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.key(x), model.key(x)))
        assert not torch.equal(model.query(x)[0], model.query(x)[0])  # the query's dropout is on
    before = {k: v.clone() for k, v in model.key.state_dict().items()}
    with torch.no_grad():
        for p in model.query.parameters():
            p.add_(1.0)
    model.update_key(0.9)
    query = model.query.state_dict()
    for name, value in model.key.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * query[name]), name


# ---- training: DDP, resume, the command ---------------------------------------------------------------------

def run_worker(out, ckpt, root, nproc=1, extra=()):
    args = [WORKER, str(out), str(ckpt), "--mdp", str(root), *extra]
    cmd = [sys.executable, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_memory_included(tmp_path, tiny_demo):
    single = run_worker(tmp_path / "one.pt", tmp_path / "one", tiny_demo)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_worker(tmp_path / "two.pt", tmp_path / "two", tiny_demo, nproc=2)
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert int(a["memory.pushed"]) == 4 and float(a["memory.counts"].sum()) > 0
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    logged = [pd.read_csv(tmp_path / run / "log.csv") for run in ("one", "two")]
    assert list(logged[0].columns[:5]) == ["step", "epoch", "loss", "class", "consistency"]
    assert np.allclose(logged[0][["loss", "class", "consistency"]], logged[1][["loss", "class", "consistency"]],
                       rtol=1e-4)


@pytest.mark.slow
def test_killed_mdp_training_resumes_to_the_same_weights_and_memory(tmp_path, tiny_demo):
    reference = run_worker(tmp_path / "ref.pt", tmp_path / "ref", tiny_demo, extra=["--epochs", "3"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    ckpt = tmp_path / "run"
    cmd = [sys.executable, WORKER, str(tmp_path / "resumed.pt"), str(ckpt), "--mdp", str(tiny_demo),
           "--epochs", "3", "--checkpoint-every", "1"]
    assert kill_at_first_checkpoint(cmd, ckpt) < 6, "killed mid-run (3 epochs x 2 steps)"
    resumed = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert int(a["memory.pushed"]) == 6
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_mdp_command_then_finetune_from_it_and_the_prototype_figure(tmp_path, tiny_demo):
    """`pssl pretrain-mdp` writes final.pt (the segmenter, the prototypes, the union classes); fine-tuning
    loads all but the per-class layers; `pssl mdp-prototypes` lists each class's nearest other-dataset
    classes."""
    from pssl.models.weights import init_from_pretrained
    out = tmp_path / "mdp"
    cmd = [sys.executable, "-m", "pssl", "pretrain-mdp", "--roots", f"voc_aug={tiny_demo}", f"ade20k={tiny_demo}",
           "--out-dir", str(out), "--head", "deeplabv3", "--backbone", "resnet10t", "--crop", "32",
           "--embed-dim", "8", "--memory-images", "8", "--epochs", "2", "--batch-size", "4", "--lr", "0.05",
           "--sync-bn", "false", "--device", "cpu"]
    run = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    record = torch.load(out / "final.pt", weights_only=True)
    classes = len(DATASETS["voc_aug"].classes) + len(DATASETS["ade20k"].classes)
    assert record["kind"] == "mdp-pretrain" and len(record["config"]["classes"]) == classes
    assert record["prototypes"].shape == (classes, 8) and 0 < int(record["present"].sum()) < classes
    log = pd.read_csv(out / "log.csv")
    assert len(log) == 4 and np.isfinite(log[["loss", "class", "consistency"]].to_numpy()).all()
    assert (out / "state.pt").exists() and not list(out.glob("ckpt-*.pt"))

    model = build_segmenter("deeplabv3", "resnet10t", 11)
    loaded = init_from_pretrained(model, str(out / "final.pt"))
    assert loaded.startswith(f"{tmp_path.name}/mdp (full: ")
    backbone = {k: v for k, v in record["model"].items() if k.startswith("backbone.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())

    table, figure = tmp_path / "near.csv", tmp_path / "near.png"
    run = subprocess.run([sys.executable, "-m", "pssl", "mdp-prototypes", "--model", str(out / "final.pt"),
                          "--out", str(table), "--figure", str(figure)], env=snakemake_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    near = pd.read_csv(table)
    assert figure.stat().st_size > 0 and set(near["rank"]) == {1, 2, 3}
    assert (near["dataset"] != near["nearest_dataset"]).all()
    voc = near[near["dataset"] == "voc_aug"]
    assert voc["nearest"].str.startswith("ade20k/").all()


# ---- configuration ------------------------------------------------------------------------------------------

def test_mdp_config_checks():
    from pssl.config import ConfigError, load_config
    demo = [str(REPO / "config.yaml")]
    config = load_config(demo, ["finetune={inits: [imagenet, mdp]}"])[0]
    assert config["mdp"]["datasets"] == ["voc_aug", "ade20k"] and config["mdp"]["lr"] == 0.1  # the demo's
    tiny = [str(REPO / "tests/configs/tiny.yaml")]  # fine-tunes on CamVid and Cityscapes
    assert load_config(tiny, ["finetune={inits: [imagenet, mdp]}", "mdp={datasets: [camvid, cityscapes]}"])
    with pytest.raises(ConfigError, match=r"mdp.datasets: voc_aug not in finetune.datasets \(finetune.inits"):
        load_config(tiny, ["finetune={inits: [imagenet, mdp]}", "mdp={datasets: [voc_aug, cityscapes]}"])
    with pytest.raises(ConfigError, match="pretrain_variants.mdp"):
        load_config(demo, ["pretrain_variants={mdp: {w_bg: 0.5}}"])


def test_mdp_runtime_estimate_counts_both_views_and_the_key_passes():
    from pssl.cluster import PASSES, train_work, training_job
    from pssl.config import load_config
    config = load_config([str(REPO / "presets/paper.yaml")], ["imagenet_root=/x", "downstream_root=/y"], check=False)[0]
    images, epochs, crop, gpus = training_job(config, "pretrain_multi", {"method": "mdp", "model": "deeplabv3_resnet50d"})
    train = DATASETS["voc_aug"].train_images + DATASETS["ade20k"].train_images
    assert (images, epochs, crop, gpus) == (train * PASSES["mdp"], 100, 224, 8) and PASSES["mdp"] == 2 + 2 / 3
    assert train_work(images, epochs, crop, gpus) > 60  # hours of 8 GPUs, not minutes


@pytest.mark.e2e
def test_the_dag_pretrains_mdp_fine_tunes_from_it_and_draws_the_prototypes(tmp_path):
    """The real rules on the tiny config: MDP on its CamVid + Cityscapes (backbone from the zoo classifier), a
    fine-tune cell of init mdp, the prototype figure; a rerun has nothing to do."""
    from conftest import run_snakemake
    config = ["--config", "mdp={datasets: [camvid, cityscapes], crop: 32, embed_dim: 8, memory_images: 4, "
              "epochs: 1, batch_size: 2, sync_bn: false, backbone_start: imagenet}",
              "finetune={inits: [imagenet, mdp]}"]
    targets = ["results/report/mdp_prototypes_psp.png", "results/finetune/camvid/psp/mdp/seed0/metrics.json"]
    run_snakemake(tmp_path, *targets, *config)
    record = torch.load(tmp_path / "results/mdp/psp/final.pt", weights_only=True)
    assert record["config"]["datasets"] == ["camvid", "cityscapes"] and record["config"]["backbone_init"] != "random"
    assert (tmp_path / "results/benchmarks/multi_dataset/mdp/psp.tsv").exists()
    near = pd.read_csv(tmp_path / "results/report/mdp_prototypes_psp.csv")
    assert set(near["dataset"]) <= {"camvid", "cityscapes"} and len(near) > 0
    cell = json.loads((tmp_path / "results/finetune/camvid/psp/mdp/seed0/metrics.json").read_text())
    assert cell["cell"]["init"] == "mdp" and cell["init_from"].startswith("mdp/psp (full: ")
    again = run_snakemake(tmp_path, *targets, *config, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_an_experiment_cannot_score_mdp_as_an_imagenet_classifier():
    from pssl.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="experiments.table4.classify: mdp's model has no ImageNet classes"):
        load_config([str(REPO / "config.yaml")], ["experiments={table4: {variants: [main, mdp]}}"])
