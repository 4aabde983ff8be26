"""The paper's experiments as pre-training variants, and seeds to statistics (issue 14): the formulas against
independent computations, the variants' settings, the nested subsets, and the tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, full_config
from pssl.config import ConfigError, check_config
from pssl.data.pseudo import Sample, nested_subset
from pssl.errors import InputError
from pssl.report.experiments import experiment_table
from pssl.report.stats import mean_sd, paired_difference, t975
from pssl.report.table3 import formatted, markdown, table3
from pssl.settings import pretrain_settings, pssl_init, settings_flags

DEMO = full_config(REPO / "config.yaml")


def test_t_quantiles_match_the_t_distribution():
    # t_{0.975, df} by bisection on the t CDF, computed here from its density with the trapezoid rule
    def cdf(t, df):
        x = np.linspace(0, t, 200001)
        density = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x ** 2 / df) ** (
            -(df + 1) / 2)
        return 0.5 + float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))

    for df in (1, 2, 4, 9, 30, 45, 200):
        lo, hi = 0.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cdf(mid, df) < 0.975 else (lo, mid)
        assert t975(df) == pytest.approx(lo, abs=2e-3), df


def test_paired_interval_is_the_t_interval_of_the_differences():
    runs = pd.DataFrame([{"dataset": "camvid", "seed": s, "init": i, "miou": v}
                         for s, (a, b) in enumerate([(50.0, 52.5), (48.0, 49.0), (51.0, 54.5)])
                         for i, v in (("imagenet", a), ("pssl", b))])
    got = paired_difference(runs, "pssl", "imagenet", ["dataset"]).iloc[0]
    d = np.array([2.5, 1.0, 3.5])
    half = 4.303 * d.std(ddof=1) / math.sqrt(3)
    assert got["diff"] == pytest.approx(d.mean()) and got["ci95"] == pytest.approx(half)
    assert got["pairs"] == 3 and got["excludes_zero"] == (abs(d.mean()) > half)
    # unpaired seeds do not count: seed 3 has only one init
    more = pd.concat([runs, pd.DataFrame([{"dataset": "camvid", "seed": 3, "init": "pssl", "miou": 99.0}])])
    assert paired_difference(more, "pssl", "imagenet", ["dataset"]).iloc[0]["pairs"] == 3
    assert math.isnan(mean_sd([1.0])[1]) and mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    # an init no run has, on either side: no pairs, the table's columns all the same
    for treated, control in (("pssl-x", "imagenet"), ("pssl", "imagenet-x"), ("a", "b")):
        none = paired_difference(runs, treated, control, ["dataset"])
        assert none.empty and list(none.columns) == ["dataset", "diff", "ci95", "pairs", "excludes_zero"]


def test_table3_with_seeds_gives_mean_sd_and_interval():
    cells = pd.DataFrame([{"dataset": "camvid", "model": "a", "init": i, "seed": s, "split": "test", "miou": v,
                           "pixel_acc": 0.0, "lr": 0.01, "lrs_tried": 1}
                          for s, (a, b) in enumerate([(50.0, 52.5), (48.0, 49.0), (51.0, 54.5)])
                          for i, v in (("imagenet", a), ("pssl", b))])
    table = table3(cells, {"a": "PSPNet-R"})
    assert table.loc["CamVid", "PSPNet-R ImageNet"] == pytest.approx(49.6667, abs=1e-3)
    assert table.loc["CamVid", "PSPNet-R PSSL sd"] == pytest.approx(np.std([52.5, 49.0, 54.5], ddof=1))
    assert table.loc["CamVid", "PSPNet-R diff seeds"] == 3
    shown = formatted(table).loc["CamVid"]
    half = table.loc["CamVid", "PSPNet-R diff ci95"]
    assert shown["PSPNet-R diff"] == f"+2.33 ± {half:.2f}" + (" *" if 2.3333 > half else "")
    md = markdown(table, cells)
    assert "ci95" not in md.splitlines()[0] and "seeds 0, 1, 2" in md


def test_a_variant_overrides_the_pretrain_section_and_nothing_else():
    main, main_train = pretrain_settings(DEMO)
    small, small_train = pretrain_settings(DEMO, "bg0.01-24")
    assert (small.w_bg, small.images, main.w_bg, main.images) == (0.01, 24, 0.1, 0)
    assert small.crop == main.crop and small_train == main_train
    d8, _ = pretrain_settings(DEMO, "d8-ignored")
    assert d8.ignore_deciles == (8,) and main.ignore_deciles == ()
    assert "--ignore-deciles 8 " in settings_flags(d8)
    assert pssl_init("main") == "pssl" and pssl_init("n48") == "pssl-n48"
    with pytest.raises(InputError, match="no pre-training variant 'nope'"):
        pretrain_settings(DEMO, "nope")


@pytest.mark.parametrize("change, message", [
    ({"experiments": {"t": {"title": "t", "model": "nope", "datasets": ["camvid"], "variants": ["main"],
                            "imagenet": False}}}, "experiments.t.model: 'nope'"),
    ({"experiments": {"t": {"title": "t", "model": "pspnet_resnet10t", "datasets": ["camvid"],
                            "variants": ["n49"], "imagenet": False}}}, "experiments.t.variants: 'n49'"),
    ({"run_experiments": ["table9"]}, "run_experiments: 'table9'"),
])
def test_experiments_must_name_what_exists(change, message):
    """(A variant's unknown setting is the schema's to reject: tests/test_settings.py.)"""
    check_config(DEMO)
    with pytest.raises(ConfigError, match=message):
        check_config({**DEMO, **change})


def test_subsets_are_nested_and_deterministic():
    samples = [Sample(f"c/{i}.JPEG", 0, i, 0) for i in range(1000)]
    small, medium, large = (nested_subset(samples, n, seed=3) for n in (50, 200, 500))
    assert (len(small), len(medium), len(large)) == (50, 200, 500)
    assert set(small) < set(medium) < set(large)
    assert nested_subset(samples, 200, seed=3) == medium and nested_subset(samples, 200, seed=4) != medium
    assert medium == sorted(medium, key=lambda s: s.row)  # the original order is kept
    assert nested_subset(samples, 5000, seed=3) == samples


def test_experiment_table_rows_are_variants_and_gains_are_paired():
    rows = []
    for seed, (imagenet, small, main) in enumerate([(40.0, 41.0, 45.0), (42.0, 42.5, 44.0)]):
        for init, v in (("imagenet", imagenet), ("pssl-n48", small), ("pssl", main)):
            rows.append({"dataset": "voc_aug", "model": "m", "init": init, "seed": seed, "split": "val", "miou": v,
                         "pixel_acc": 0.0, "lr": 0.01, "lrs_tried": 1})
    table = experiment_table(pd.DataFrame(rows), {"n48": {"images": 48}, "main": None}, ["voc_aug"], imagenet=True)
    assert list(table.index) == ["ImageNet init", "PSSL n48 (images 48)", "PSSL (main pre-training)"]
    assert table.loc["PSSL n48 (images 48)", "VOC-Aug"] == pytest.approx(41.75)
    assert table.loc["PSSL (main pre-training)", "VOC-Aug diff"] == pytest.approx(3.5)  # (5 + 2) / 2
    assert np.isnan(table.loc["ImageNet init", "VOC-Aug diff"])
    assert table.loc["PSSL n48 (images 48)", "VOC-Aug diff ci95"] == pytest.approx(
        12.706 * np.std([1.0, 0.5], ddof=1) / math.sqrt(2))


def test_validation_layouts_class_folders_and_solution_table(tmp_path):
    from PIL import Image

    from pssl.eval.classify import val_images
    pixel = Image.new("RGB", (8, 8))
    for wnid, name in (("n02", "a"), ("n01", "b"), ("n09", "c")):  # n09: not a class of the index
        (tmp_path / "folders" / wnid).mkdir(parents=True)
        pixel.save(tmp_path / "folders" / wnid / f"{name}.JPEG")
    assert [(p.name, k) for p, k in val_images(tmp_path / "folders", ["n01", "n02"])] == [("b.JPEG", 0), ("a.JPEG", 1)]
    flat = tmp_path / "flat" / "val"
    flat.mkdir(parents=True)
    for name in ("ILSVRC2012_val_1", "ILSVRC2012_val_2"):
        pixel.save(flat / f"{name}.JPEG")
    (tmp_path / "flat" / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_1,n02 1 2 3 4 n02 5 6 7 8\nILSVRC2012_val_2,n01 1 2 3 4\n")
    assert [(p.name, k) for p, k in val_images(flat, ["n01", "n02"])] == [("ILSVRC2012_val_1.JPEG", 1),
                                                                          ("ILSVRC2012_val_2.JPEG", 0)]
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        val_images(tmp_path / "folders" / "n09", ["n01"])


def test_a_segmenter_classifies_by_its_mean_pixel_softmax_without_background():
    import torch

    from pssl.eval.classify import class_scores

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return {"out": self.logits}

    # 2 pixels, classes 0..2 and background 3: background dominates everywhere, class 2 wins on average
    logits = torch.tensor([[[[0.0, 0.0]], [[2.0, -1.0]], [[1.5, 1.5]], [[5.0, 5.0]]]])  # (1, 4, 1, 2)
    scores = class_scores(Fixed(logits), "segmenter", torch.zeros(1, 3, 1, 2))
    softmax = np.exp(logits[0, :, 0].numpy()) / np.exp(logits[0, :, 0].numpy()).sum(0)
    assert np.allclose(scores[0].numpy(), softmax.mean(1)[:3]) and int(scores.argmax()) == 2


# ---- Table 4: the 60-epoch row continues the 30-epoch model; one top-1 protocol (issue 29) -------------------

def test_a_continuation_ends_where_the_uninterrupted_run_does(tmp_path):
    """The paper's 60 epochs are the 30-epoch model "trained for another 30": from its final state (weights,
    optimizer, schedule position, random streams), the continuation ends with the weights of one uninterrupted
    run of all the epochs, and not with those of the shorter run."""
    from ddp_worker import SyntheticSegmentation
    from pssl.distributed import DistInfo
    from pssl.models.segmenter import build_segmenter
    from pssl.settings import TrainSettings
    from pssl.train.checkpoint import FINAL_STATE, keep_final_state
    from pssl.train.loop import fit
    from pssl.train.losses import class_weights

    def run(out, epochs, start=None):
        torch.manual_seed(0)
        model = build_segmenter("pspnet", "test_resnet", 3)
        params = TrainSettings(epochs=epochs, batch_size=4, lr=0.02, milestone=1, checkpoint_every=1000, seed=0)
        return fit(model, SyntheticSegmentation(n=8), class_weights(3, 2, 0.1), params, out,
                   DistInfo(0, 1, 0, torch.device("cpu")), ignore_index=-1, start=start).state_dict()

    reference = run(tmp_path / "two", 2)  # the step (milestone 1) falls between the two epochs
    short = run(tmp_path / "one", 1)
    state = keep_final_state(tmp_path / "one")
    assert state.name == FINAL_STATE and not list((tmp_path / "one").glob("ckpt-*.pt"))
    continued = run(tmp_path / "one-more", 2, start=state)
    for key, value in reference.items():
        assert torch.equal(value, continued[key]), key
    assert any(v.is_floating_point() and not torch.equal(v, short[k]) for k, v in continued.items())
    with pytest.raises(ValueError, match="not at an epoch end before this run's 2 steps"):
        run(tmp_path / "no-more", 1, start=state)  # its epoch is already trained: nothing to continue


@pytest.mark.parametrize("variants, message", [
    ({"epochs4": {"epochs": 4, "continue_from": "epochs9"}}, "pretrain_variants.epochs4.continue_from: 'epochs9'"),
    ({"epochs4": {"continue_from": "n48"}, "n48": {"continue_from": "epochs4"}},
     "epochs4.continue_from: n48 -> epochs4 -> n48 continues itself"),
])
def test_a_continuation_names_a_pretraining_and_never_itself(variants, message):
    assert pretrain_settings(DEMO, "epochs4")[0].continue_from == "main"  # the demo's Table 4, checked below
    check_config(DEMO)
    with pytest.raises(ConfigError, match=message):
        check_config({**DEMO, "pretrain_variants": {**DEMO["pretrain_variants"], **variants}})


def test_centre_crop_by_hand():
    from pssl.eval.classify import centre_crop
    rgb = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    # shorter side already 8: no resampling, the central 4 x 4 is rows 2..5, columns 4..7
    assert np.array_equal(centre_crop(rgb, 8, 4), rgb[2:6, 4:8])
    assert centre_crop(rgb, 4, 2).shape == (2, 2, 3)  # 8 x 12 -> 4 x 6 -> the central 2 x 2
    with pytest.raises(ValueError, match="crop 5 is larger than the resized shorter side 4"):
        centre_crop(rgb, 4, 5)


def test_every_top1_row_reads_the_same_input(tmp_path, monkeypatch):
    """A pre-trained segmenter (pre-trained at crop 24) and a zoo classifier are both read at the classify
    setting's crop, 16 x 16 after the shorter side is resized to 20, and say so in their results."""
    import timm
    from PIL import Image

    from pssl.data.imagenet import build_index
    from pssl.eval import classify
    from pssl.models.segmenter import build_segmenter
    from pssl.models.zoo import ClassifierSpec, save_classifier
    from pssl.settings import ClassifySettings

    wnids = ["n01000001", "n01000002"]
    for split, size in (("train", (30, 20)), ("val", (60, 40))):
        for k, wnid in enumerate(wnids):
            (tmp_path / split / wnid).mkdir(parents=True)
            Image.new("RGB", size, (200 * k, 50, 100)).save(tmp_path / split / wnid / f"{wnid}_1.JPEG")
    build_index(tmp_path / "train", tmp_path / "index.parquet")
    torch.manual_seed(0)
    save_classifier(tmp_path / "zoo.pt", ClassifierSpec("test_resnet", "test_resnet"),
                    timm.create_model("test_resnet", num_classes=2), wnids, "train")
    torch.save({"kind": "pssl-pretrain", "model": build_segmenter("pspnet", "test_resnet", 3).state_dict(),
                "config": {"head": "pspnet", "backbone": "test_resnet", "num_classes": 3, "classes": wnids,
                           "crop": 24}}, tmp_path / "final.pt")
    seen = []
    original = classify.class_scores
    monkeypatch.setattr(classify, "class_scores", lambda model, kind, x: (seen.append((kind, tuple(x.shape))),
                                                                          original(model, kind, x))[1])
    settings = ClassifySettings(resize=20, crop=16)
    results = [classify.evaluate_classification(str(tmp_path / m), str(tmp_path / "index.parquet"),
                                                str(tmp_path / "val"), str(tmp_path / f"{m}.json"), settings,
                                                device="cpu") for m in ("final.pt", "zoo.pt")]
    assert seen == [("segmenter", (2, 3, 16, 16)), ("classifier", (2, 3, 16, 16))]
    assert results[0]["input"] == results[1]["input"] == "shorter side 20, centre crop 16 x 16, single scale"


def test_the_top1_column_takes_one_input_protocol(tmp_path):
    from pssl.report.experiments import write_experiment
    cells = []
    for i, init in enumerate(("imagenet", "pssl")):
        cell = tmp_path / "finetune/voc_aug/m" / init / "seed0/metrics.json"
        cell.parent.mkdir(parents=True)
        cell.write_text(json.dumps({"miou": 0.4 + i / 100, "pixel_acc": 0.5, "lr": 0.01, "eval": {"split": "val"},
                                    "cell": {"dataset": "voc_aug", "model": "m", "init": init, "seed": 0}}))
        cells.append(str(cell))
    same = "shorter side 256, centre crop 224 x 224, single scale"
    for init, size in (("imagenet", 224), ("pssl", 256)):
        (tmp_path / "classify").mkdir(exist_ok=True)
        (tmp_path / "classify" / f"{init}.json").write_text(json.dumps(
            {"top1": 0.5, "input": same if size == 224 else "shorter side 256, centre crop 256 x 256"}))
    classify = [str(tmp_path / "classify" / f"{i}.json") for i in ("imagenet", "pssl")]
    with pytest.raises(ValueError, match="the top-1 column would compare 2 input protocols"):
        write_experiment("t4", "Table 4", cells, {"main": None}, ["voc_aug"], True, tmp_path / "out", classify)
    (tmp_path / "classify" / "pssl.json").write_text(json.dumps({"top1": 0.25, "input": same}))
    write_experiment("t4", "Table 4", cells, {"main": None}, ["voc_aug"], True, tmp_path / "out", classify)
    table = pd.read_csv(tmp_path / "out/t4.csv", index_col=0)
    assert table["ImageNet val top-1 (%)"].tolist() == [50.0, 25.0]
    assert f"every row's model on the same input ({same})" in (tmp_path / "out/t4.md").read_text()


# ---- the paper preset: Tables 1 and 2's shorter schedule, Table 4's continuation ----------------------------

def test_the_paper_preset_shortens_tables_1_and_2_and_continues_table_4():
    text = (REPO / "presets/paper.yaml").read_text()
    assert '"The experiment setups here are the same as those in Sect. 5, except that the\n# training epoch is less' \
           ' here' in text  # the paper's words, quoted where the schedule is set
    paper = full_config(REPO / "presets/paper.yaml")
    main, _ = pretrain_settings(paper)
    _, main_train = pretrain_settings(paper)
    assert (main_train.epochs, main_train.milestone, main.continue_from) == (30, 20, None)
    for table in ("table1", "table2"):
        for variant in paper["experiments"][table]["variants"]:
            _, train = pretrain_settings(paper, variant)
            assert (train.epochs, train.milestone) == (15, 10), variant
    longer, longer_train = pretrain_settings(paper, "epochs60")
    assert longer.continue_from == "main" and (longer_train.epochs, longer_train.milestone) == (60, 20)
    assert paper["classify"] == {"resize": 256, "crop": 224}
    assert paper["figure3"] | {"model": None} == {"model": None, "dataset": "voc_aug", "images": 3,
                                                  "contains": "person"}
