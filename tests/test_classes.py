"""Class identity by name (pssl.classes): a tree of a subset of the zoo's classes explains, labels, pre-trains,
classifies and draws the right classes; a class folder no classifier knows stops the job with one line.

The zoo below knows the tiny demo's 3 classes plus one more, in an order unlike any index's, so a class number
used as an output index by position (the bug this guards against) explains another class."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import snakemake_env
from pssl import store
from pssl.classes import ClassSpaceError, columns, remap, run_space
from pssl.data.imagenet import build_index
from pssl.data.shard_images import ShardBatches
from pssl.explain.deciles import to_deciles
from pssl.explain.run import explain_shard, noise_seed, to_input
from pssl.explain.smoothgrad import TargetScore, prepare_classifier, saliency_map, smoothgrad
from pssl.labels import label_shard
from pssl.models.zoo import ClassifierSpec, load_classifier, save_classifier
from pssl.settings import ClassifySettings, ExplainSettings, LabelSettings, PretrainSettings, TrainSettings
from pssl.shards import write_shards
from pssl.tables import read_table

ZOO = {"test_efficientnet": ["n90000003", "n90000002", "n90000000", "n90000001"],
       "test_convnext": ["n90000001", "n90000003", "n90000000", "n90000002"]}
SUBSET = ["n90000001", "n90000002"]  # the demo's classes 1 and 2: positions 0 and 1 of the subset's index
PARAMS = ExplainSettings(image_size=32, n_samples=3, noise_level=0.15, batch_size=16, sample_chunk=3, seed=0,
                         precision="fp32")  # bf16 on a CPU with native bf16 would need its own reference


# ---- the mapping itself, against hand computations ------------------------------------------------------------

def test_columns_find_each_class_by_name():
    assert columns(["b", "d"], ["d", "c", "b", "a"], "m").tolist() == [2, 0]
    with pytest.raises(ClassSpaceError, match=r"^class x \(and 1 more\) is not among the 2 classes of m$"):
        columns(["a", "x", "y"], ["a", "b"], "m")


def test_run_space_is_the_index_with_labels_and_the_zoo_without():
    records = [{"name": "p", "classes": ["c", "a", "b"]}, {"name": "q", "classes": ["b", "c", "a", "z"]}]
    assert run_space(["a", "b"], records, use_labels=True) == ["a", "b"]
    assert run_space(["a", "b"], records, use_labels=False) == ["c", "a", "b"]
    assert run_space([], records, use_labels=True) == ["c", "a", "b"]  # an unlabelled index
    with pytest.raises(ClassSpaceError, match="class z is not among the 3 classes of classifier 'p'"):
        run_space(["a", "z"], records, use_labels=True)


def test_remap_by_name_keeps_no_class_and_drops_or_refuses_unknown_ones():
    assert remap(np.array([1, -1, 0, 2]), ["a", "b", "x"], ["x", "b", "a"], "t").tolist() == [1, -1, 2, 0]
    assert remap(np.array([2, 0]), ["a", "b", "y"], ["b", "a"], None).tolist() == [-1, 1]
    assert remap(np.array([-1, -1]), [], ["b", "a"], None).tolist() == [-1, -1]  # an unlabelled index
    with pytest.raises(ClassSpaceError, match="class y"):
        remap(np.array([2]), ["a", "b", "y"], ["b", "a"], "t")


# ---- the stages on a subset tree and on a tree with an extra folder ----------------------------------------------

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    import timm
    out = tmp_path_factory.mktemp("named_zoo")
    paths = []
    for arch, classes in ZOO.items():
        torch.manual_seed(1)
        save_classifier(out / f"{arch}.pt", ClassifierSpec(arch, arch), timm.create_model(arch, num_classes=4),
                        classes, "train")
        paths.append(str(out / f"{arch}.pt"))
    return paths


def tree(tiny_demo, root, wnids):
    """An ImageNet tree of the demo's class folders `wnids` (links), plus a synset mapping for the names."""
    (root / "train").mkdir(parents=True)
    for wnid in wnids:
        (root / "train" / wnid).symlink_to(tiny_demo / "imagenet/train" / wnid)
    (root / "LOC_synset_mapping.txt").write_text((tiny_demo / "imagenet/LOC_synset_mapping.txt").read_text())
    return root / "train"


def job_input(shard):
    """The shard's images as the explain and label jobs decode them, [0, 1] floats (one batch)."""
    frame, meta = read_table(shard)
    images = ShardBatches(Path(meta["root"]), frame["relpath"].tolist(), len(frame), 32, [0])[0][2]
    return to_input(images, torch.device("cpu"))


def shard_of(train, work):
    build_index(train, work / "index.parquet")
    write_shards(work / "index.parquet", 100, work / "shards")
    return work / "shards" / "shard-00000.parquet"


@pytest.fixture(scope="module")
def subset(tiny_demo, zoo, tmp_path_factory):
    work = tmp_path_factory.mktemp("subset")
    shard = shard_of(tree(tiny_demo, work / "imagenet", SUBSET), work)
    explain_shard(shard, zoo, work / "explain.zarr", PARAMS)
    return work, shard


def test_subset_targets_are_each_classifiers_output_of_the_images_wnid(subset, zoo):
    work, shard = subset
    frame, meta = read_table(shard)
    assert meta["classes"] == SUBSET
    group = store.open_store(work / "explain.zarr")
    assert group.attrs["classes"] == SUBSET
    names = [group.attrs["classes"][t] for t in group["target"][:]]
    assert names == frame["wnid"].tolist()
    # An independent computation: SmoothGrad of every classifier's own output of the image's wnid, with the
    # job's noise (one batch), gives the store's deciles bit for bit.
    images = job_input(shard)
    loaded = [load_classifier(path) for path in zoo]  # before seeding: building a model draws random numbers
    torch.manual_seed(noise_seed(PARAMS.seed, int(frame["image_id"].iloc[0])))
    ensemble = 0
    for model, record in loaded:
        outputs = torch.tensor([record["classes"].index(w) for w in frame["wnid"]])
        ensemble = ensemble + saliency_map(smoothgrad(TargetScore(prepare_classifier(model)), images, outputs,
                                                      3, 0.15, 3))
    assert np.array_equal(group["deciles"][:], to_deciles(ensemble / len(zoo)).numpy())


@pytest.mark.parametrize("policy", ["gt", "agree", "teacher"])
def test_label_policies_on_a_subset_number_the_tables_classes(subset, zoo, policy):
    work, shard = subset
    table = label_shard(shard, work / "explain.zarr", zoo, work / f"labels-{policy}.parquet",
                        LabelSettings(policy=policy, top_k=1), device="cpu")
    meta = read_table(work / f"labels-{policy}.parquet")[1]
    classes = SUBSET if policy != "teacher" else ZOO["test_efficientnet"]  # teacher: the zoo's space
    assert meta["classes"] == classes and meta["num_classes"] == len(classes)
    frame = read_table(shard)[0]
    images = job_input(shard)
    probs = 0
    for path in zoo:  # the ensemble by hand: each softmax over all 4 outputs, read at the space's classes
        model, record = load_classifier(path)
        with torch.no_grad():
            probs = probs + model(images).softmax(1)[:, [record["classes"].index(c) for c in classes]] / len(zoo)
    assert table["teacher_class"].tolist() == probs.argmax(1).tolist()
    assert [classes[g] for g in table["gt_class"]] == frame["wnid"].tolist()
    if policy == "agree":
        assert table["keep"].tolist() == (table["teacher_class"] == table["gt_class"]).tolist()
    if policy == "gt":
        assert [classes[k] for k in table["label"]] == frame["wnid"].tolist() and table["keep"].all()


@pytest.mark.slow
def test_pretraining_figure3_and_top1_read_the_label_tables_classes(subset, zoo, tiny_demo, tmp_path):
    from pssl.eval.classify import evaluate_classification
    from pssl.report.figure3 import figure3
    from pssl.train.pretrain import pretrain
    work, shard = subset
    label_shard(shard, work / "explain.zarr", zoo, tmp_path / "labels.parquet", LabelSettings(), device="cpu")
    final = pretrain([str(work / "explain.zarr")], [str(tmp_path / "labels.parquet")], tmp_path / "pre",
                     head="pspnet", backbone="resnet10t", backbone_init=None,
                     settings=PretrainSettings(crop=32), train=TrainSettings(epochs=1, batch_size=4), device="cpu")
    config = torch.load(final, weights_only=True)["config"]
    assert config["classes"] == SUBSET and config["num_classes"] == len(SUBSET) + 1
    figure3(str(final), "voc_aug", str(tiny_demo), str(work / "index.parquet"),
            tmp_path / "figure3.png", images=2, device="cpu")
    assert (tmp_path / "figure3.png").stat().st_size > 0
    for model in (final, zoo[0]):  # a segmenter of the subset and a classifier of 4 classes: the subset's images
        result = evaluate_classification(str(model), str(work / "index.parquet"), str(tiny_demo / "imagenet/val"),
                                         str(tmp_path / "top1.json"), ClassifySettings(37, 32), device="cpu")
        assert result["classes"] == 2 and result["images"] > 0


@pytest.mark.slow
def test_a_class_folder_no_classifier_knows_stops_with_one_line(tiny_demo, zoo, tmp_path):
    train = tree(tiny_demo, tmp_path / "imagenet", [*SUBSET, "n90000000"])
    (train / "n99999999").mkdir()
    (train / "n99999999" / "stray.JPEG").symlink_to(next((tiny_demo / "imagenet/train/n90000000").iterdir()))
    shard = shard_of(train, tmp_path)
    with pytest.raises(ClassSpaceError, match="class n99999999 is not among the 4 classes of classifier "
                                              "'test_efficientnet'"):
        explain_shard(shard, zoo, tmp_path / "explain.zarr", PARAMS)
    assert not list(tmp_path.glob(".explain.zarr.partial")), "stopped before any work"
    cli = subprocess.run([sys.executable, "-m", "pssl", "explain", "--shard", str(shard), "--zoo", *zoo,
                          "--out", str(tmp_path / "explain.zarr"), "--device", "cpu"],
                         check=False, env=snakemake_env(), capture_output=True, text=True, timeout=300)
    assert cli.returncode != 0
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "n99999999" in lines[0] and "test_efficientnet" in lines[0], cli.stderr
    # top1 needs no label: the same tree explains the zoo's own top-1, in the zoo's class space
    top1 = ExplainSettings(**{**PARAMS.__dict__, "target": "top1"})
    explain_shard(shard, zoo, tmp_path / "top1.zarr", top1)
    assert store.open_store(tmp_path / "top1.zarr").attrs["classes"] == ZOO["test_efficientnet"]
