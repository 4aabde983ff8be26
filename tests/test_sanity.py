"""The sanity page's checks against hand-made inputs (label tables, explain stores, training logs, fine-tune
metrics, benchmark files): each passes, fails or is missing for the reason it names."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, full_config
from pssl import store
from pssl.cli import main
from pssl.cluster import runtime_minutes, work_minutes
from pssl.report.sanity import (
    FAIL,
    MISSING,
    NOT_APPLICABLE,
    PASS,
    chance_miou,
    finetune_miou,
    pretraining_loss,
    runtimes,
    sanity_section,
    stability,
    targets_match_labels,
    write_sanity,
    zoo_top1,
)
from pssl.settings import SanitySettings
from pssl.tables import write_table

INDEX_CLASSES = ["n01", "n02", "n03"]   # a 3-class slice of a larger tree
ZOO_CLASSES = ["n00", "n01", "n02", "n03", "n04"]  # what the classifiers' outputs (and the targets) number


def label_table(path, gt, teacher, conf=None, classes=INDEX_CLASSES):
    n = len(gt)
    frame = pd.DataFrame({"image_id": np.arange(n), "gt_class": gt, "teacher_class": teacher,
                          "teacher_conf": np.full(n, 0.9) if conf is None else conf, "label": gt,
                          "keep": np.ones(n, bool), "fg_fraction": np.full(n, 0.1)})
    write_table(frame, path, {"classes": classes, "teacher": ["resnet50.a1_in1k", "convnext_tiny.fb_in1k"]})
    return str(path)


def index_table(path, classes=INDEX_CLASSES):
    frame = pd.DataFrame({"image_id": np.arange(4), "relpath": [f"x/{i}.JPEG" for i in range(4)],
                          "wnid": "x", "class_idx": [0, 1, 2, -1]})
    write_table(frame, path, {"root": "/data", "classes": classes})
    return str(path)


def explain_store(path, class_idx, target, status=None, mode="class", classes=ZOO_CLASSES,
                  stable=0.45):
    n = len(class_idx)
    attrs = {"smoothgrad": {"target": mode, "n_samples": 50}}
    if classes is not None:
        attrs["classes"] = classes
    if stable is not None:
        attrs["stability"] = {"images": 8, "d9_iou": stable, "decile_agreement": 0.5}
    group = store.create_store(path, np.arange(100, 100 + n), np.asarray(class_idx), 4, 1, False, attrs)
    group["target"][:] = np.asarray(target, dtype="int16")
    group["status"][:] = np.full(n, store.DONE, "uint8") if status is None else np.asarray(status, "uint8")
    return str(path)


# ---- zoo top-1 ----------------------------------------------------------------------------------------------

def test_zoo_top1_counts_labelled_images_the_teacher_saw(tmp_path):
    a = label_table(tmp_path / "a.parquet", gt=[0, 1, 2, 2, -1], teacher=[0, 1, 2, 0, 1])
    # the last row was unreadable (confidence 0): not an image the zoo saw
    b = label_table(tmp_path / "b.parquet", gt=[1, 1, 0], teacher=[1, 1, 2], conf=[0.8, 0.7, 0.0])
    check = zoo_top1([a, b], 0.7)
    assert check.status == PASS and check.measured == pytest.approx(5 / 6, abs=1e-4)
    assert "5 of 6 labelled images" in check.reason and "3 classes" in check.reason
    assert "convnext_tiny.fb_in1k" in check.subject
    low = zoo_top1([label_table(tmp_path / "c.parquet", gt=[0, 1, 2, 0], teacher=[0, 2, 1, 1])], 0.7)
    assert low.status == FAIL and low.measured == 0.25


def test_zoo_top1_without_tables_is_missing(tmp_path):
    assert zoo_top1([], 0.7).status == MISSING
    check = zoo_top1([str(tmp_path / "labels/shard-00000.parquet")], 0.7)
    assert check.status == MISSING and "shard-00000.parquet" in check.reason
    nobody = zoo_top1([label_table(tmp_path / "u.parquet", gt=[-1, -1], teacher=[0, 1])], 0.7)
    assert nobody.status == MISSING and "no labelled image" in nobody.reason


# ---- targets equal to labels, by name -----------------------------------------------------------------------

def test_targets_compared_by_name_not_number(tmp_path):
    """The store numbers the zoo's 5 classes, the index its 3: target 1 (n01) is class_idx 0 (n01)."""
    index = index_table(tmp_path / "index.parquet")
    good = explain_store(tmp_path / "a.zarr", class_idx=[0, 1, 2, -1], target=[1, 2, 3, 4])
    check = targets_match_labels([good], index)
    assert check.status == PASS and check.measured == 1.0 and "all 3 finished labelled images" in check.reason


def test_targets_equal_as_numbers_but_not_as_names_fail(tmp_path):
    """The bug of issue 24: the position among the tree's folders used as the classifier's output index. The
    numbers agree, the names do not: the check must fail, naming an image and both classes."""
    index = index_table(tmp_path / "index.parquet")
    wrong = explain_store(tmp_path / "a.zarr", class_idx=[0, 1, 2, -1], target=[0, 1, 2, 0])
    check = targets_match_labels([wrong], index)
    assert check.status == FAIL and check.measured == 0.0
    assert "3 of 3 images explained another class" in check.reason
    assert "a.zarr image 100 explained n00, labelled n01" in check.reason


def test_targets_skip_unfinished_and_unlabelled_rows_and_flag_each_bad_store(tmp_path):
    index = index_table(tmp_path / "index.parquet")
    # row 1 is wrong but unreadable (status 2), row 3 is unlabelled: neither is compared
    a = explain_store(tmp_path / "a.zarr", class_idx=[0, 1, 2, -1], target=[1, 0, 3, 0],
                      status=[store.DONE, store.UNREADABLE, store.DONE, store.DONE])
    assert targets_match_labels([a], index).status == PASS
    b = explain_store(tmp_path / "b.zarr", class_idx=[2, 2], target=[3, 4])  # one wrong of two
    check = targets_match_labels([a, b], index)
    assert check.status == FAIL and check.measured == pytest.approx(3 / 4)
    assert "b.zarr image 101 explained n04, labelled n03" in check.reason


def test_a_store_without_class_names_fails_with_the_reason(tmp_path):
    index = index_table(tmp_path / "index.parquet")
    old = explain_store(tmp_path / "old.zarr", class_idx=[0, 1], target=[0, 1], classes=None)
    check = targets_match_labels([old], index)
    assert check.status == FAIL and "old.zarr records no class names" in check.reason


def test_targets_under_top1_are_not_applicable_and_absent_stores_missing(tmp_path):
    index = index_table(tmp_path / "index.parquet")
    top1 = explain_store(tmp_path / "t.zarr", class_idx=[0, 1], target=[3, 3], mode="top1")
    assert targets_match_labels([top1], index).status == NOT_APPLICABLE
    assert targets_match_labels([str(tmp_path / "none.zarr")], index).status == MISSING
    assert targets_match_labels([], index).status == MISSING


# ---- D9 stability -------------------------------------------------------------------------------------------

def test_stability_is_the_mean_over_stores(tmp_path):
    a = explain_store(tmp_path / "a.zarr", [0], [1], stable=0.5)
    b = explain_store(tmp_path / "b.zarr", [0], [1], stable=0.36)
    check = stability([a, b], 0.3)
    assert check.status == PASS and check.measured == pytest.approx(0.43) and "lowest 0.360" in check.reason
    assert stability([a, b], 0.45).status == FAIL


def test_stability_not_recorded_fails(tmp_path):
    a = explain_store(tmp_path / "a.zarr", [0], [1], stable=0.5)
    b = explain_store(tmp_path / "b.zarr", [0], [1], stable=None)
    check = stability([a, b], 0.3)
    assert check.status == FAIL and "not recorded in 1 of 2 store(s) (b.zarr" in check.reason
    assert stability([], 0.3).status == MISSING


# ---- pre-training loss --------------------------------------------------------------------------------------

def training_log(folder, losses_per_epoch):
    folder.mkdir(parents=True)
    rows = ["step,epoch,loss,lr,images_per_s"]
    step = 0
    for epoch, losses in enumerate(losses_per_epoch):
        for loss in losses:
            step += 1
            rows.append(f"{step},{epoch},{loss},0.01,100.0")
    (folder / "log.csv").write_text("\n".join(rows) + "\n")
    (folder / "final.pt").touch()
    return str(folder / "final.pt")


def test_pretraining_loss_falling_rising_and_missing(tmp_path):
    falling = training_log(tmp_path / "pretrain/psp/main", [[3.0, 2.8], [2.0, 1.8]])
    rising = training_log(tmp_path / "pretrain/dlv3/main", [[2.0, 2.0], [2.5, float("nan")]])
    one_epoch = training_log(tmp_path / "pretrain/ocr/main", [[4, 4, 4, 4, 4, 3, 3, 2, 2, 1]])
    checks = pretraining_loss([falling, rising, one_epoch, str(tmp_path / "pretrain/x/main/final.pt")])
    assert [c.status for c in checks] == [PASS, FAIL, PASS, MISSING]
    assert checks[0].subject == "psp/main" and checks[0].measured == 1.9 and "2.9000 -> 1.9000" in checks[0].reason
    assert "not falling" in checks[1].reason
    assert "first vs last 2 steps" in checks[2].reason
    assert pretraining_loss([])[0].status == MISSING


def test_a_resumed_log_counts_each_step_once(tmp_path):
    final = training_log(tmp_path / "pretrain/psp/main", [[3.0, 2.0], [1.0]])
    with open(tmp_path / "pretrain/psp/main/log.csv", "a") as f:
        f.write("3,1,1.0,0.01,100\n")  # the resumed run logged step 3 again
    assert pretraining_loss([final])[0].measured == 1.0


# ---- fine-tune mIoU -----------------------------------------------------------------------------------------

def cell(root, dataset, init, miou, classes=11):
    path = root / f"finetune/{dataset}/psp/{init}/seed0/metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"miou": miou, "classes": [f"c{i}" for i in range(classes)], "lr": 0.01,
                                "eval": {"split": "test"},
                                "cell": {"dataset": dataset, "model": "psp", "init": init, "seed": 0}}))
    return str(path)


def test_finetune_miou_against_chance_plus_margin(tmp_path):
    assert chance_miou(11) == pytest.approx(100 / 21)
    good = cell(tmp_path, "camvid", "imagenet", 0.62)
    bad = cell(tmp_path, "camvid", "pssl", 0.09)  # 9.0 < 4.76 + 5
    checks = finetune_miou([good, bad, str(tmp_path / "finetune/camvid/psp/x/seed0/metrics.json")], 5.0)
    # the identity comes from the file, not its path: a cell copied elsewhere keeps its name
    moved = tmp_path / "elsewhere/metrics.json"
    moved.parent.mkdir()
    moved.write_text(Path(good).read_text())
    assert finetune_miou([str(moved)], 5.0)[0].subject == "camvid psp imagenet seed0"
    assert [c.status for c in checks] == [PASS, FAIL, MISSING]
    assert checks[0].subject == "camvid psp imagenet seed0" and checks[0].measured == 62.0
    assert checks[1].expected == "> 9.76" and "chance 4.76 (11 classes)" in checks[1].reason


# ---- minutes against the estimate ---------------------------------------------------------------------------

def pilot(tmp_path) -> dict:
    config = full_config(REPO / "presets/pilot.yaml")
    config["results"] = str(tmp_path)
    return config


def benchmark(root, rel, seconds):
    path = root / "benchmarks" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\n" + "".join(f"{s}\t0:00:00\t100\n" for s in seconds))


def test_runtimes_per_rule_against_the_estimate(tmp_path):
    config = pilot(tmp_path)
    shard = {"shard": "shard-00000"}
    assert runtime_minutes(config, "explain_shard", shard) == 18  # 10 / 2 + 5000 x 3 x 51 / 60000 = 17.75
    assert work_minutes(config, "explain_shard", shard) == pytest.approx(12.75)
    benchmark(tmp_path, "explain_shard/shard-00000.tsv", [600.0, 1530.0])  # the longest repeat: 25.5 min
    ft = "finetune/camvid/pspnet_resnet50d/{}/seed0/lr0.01.tsv"
    benchmark(tmp_path, ft.format("imagenet"), [300.0])
    benchmark(tmp_path, ft.format("pssl"), [420.0])
    checks = {c.subject.split()[0]: c for c in runtimes(config)}
    explain = checks["explain_shard"]
    assert explain.status == FAIL and explain.measured == 25.5 and explain.expected == "<= 18.0 min (estimate, mean)"
    assert "measured / estimate 1.42" in explain.reason and "1 job(s) ran past their estimate" in explain.reason
    assert "runtime_scale >= 2.00" in explain.reason  # 25.5 / 12.75
    finetune = checks["finetune"]
    assert finetune.status == PASS and finetune.subject == "finetune (2 jobs)" and finetune.measured == 6.0
    assert "measured / estimate 0.30" in finetune.reason  # 6 / 20
    assert "runtime_scale >= 0.72" in finetune.reason  # 7 / (1.5 x 367 x 30 x (480 / 256)^2 / 6000)
    for rule in ("zoo_model", "label_shard", "pretrain"):
        assert checks[rule].status == MISSING


def test_jobs_too_short_to_calibrate_say_so(tmp_path):
    config = pilot(tmp_path)  # the pilot's pre-training: 2.5 minutes of estimated work, mostly start-up
    assert work_minutes(config, "pretrain", {"model": "pspnet_resnet50d", "variant": "main"}) == pytest.approx(2.5)
    benchmark(tmp_path, "pretrain/pspnet_resnet50d/main.tsv", [240.0])
    check = next(c for c in runtimes(config) if c.subject.startswith("pretrain"))
    assert check.status == PASS and "too short to calibrate runtime_scale (work term 2.5 min < 5)" in check.reason


def test_timm_zoo_jobs_have_no_work_term(tmp_path):
    config = pilot(tmp_path)
    benchmark(tmp_path, "zoo_model/resnet50.a1_in1k.tsv", [60.0])
    zoo = next(c for c in runtimes(config) if c.subject.startswith("zoo_model"))
    assert zoo.status == PASS and zoo.expected == "<= 20.0 min (estimate, mean)"
    assert "runtime_scale >=" not in zoo.reason


# ---- the page -----------------------------------------------------------------------------------------------

def test_pssl_sanity_writes_the_table_and_page(tmp_path):
    index = index_table(tmp_path / "index.parquet")
    labels = label_table(tmp_path / "labels/shard-00000.parquet", gt=[0, 1, 2], teacher=[0, 1, 2])
    a = explain_store(tmp_path / "explain/shard-00000.zarr", [0, 1, 2, -1], [1, 2, 3, 0])
    final = training_log(tmp_path / "pretrain/psp/main", [[3.0], [2.0]])
    cells = [cell(tmp_path, "camvid", "imagenet", 0.6), cell(tmp_path, "camvid", "pssl", 0.55)]
    benchmark(tmp_path, "pretrain/psp/main.tsv", [120.0])
    config = pilot(tmp_path)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "report/sanity.csv"
    assert main(["sanity", "--index", index, "--labels", labels, "--stores", a, "--pretrained", final,
                 "--cells", *cells, "--config", str(config_file), "--min-stability-iou", "0.5",
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["check", "subject", "expected", "measured", "status", "reason"]
    verdicts = dict(zip(frame["check"] + " | " + frame["subject"], frame["status"]))
    assert verdicts["zoo top-1 on the explained images | ensemble of 2: convnext_tiny.fb_in1k, resnet50.a1_in1k"] \
        == PASS
    assert verdicts["explain targets equal the labels (by class name) | 1 explain store(s)"] == PASS
    assert verdicts["D9 stability between two noise draws | 1 explain store(s)"] == FAIL  # 0.45 < 0.5 (the flag)
    assert verdicts["pre-training loss falling | psp/main"] == PASS
    assert verdicts["minutes per job vs estimate | pretrain (1 job)"] == PASS
    assert verdicts["minutes per job vs estimate | explain_shard"] == MISSING
    html = (tmp_path / "report/sanity.html").read_text()
    assert "Sanity checks" in html and "MISSING" in html and "FAIL" in html
    body, md = sanity_section(out)
    assert body.count("<tr>") == len(frame) and md.startswith("## Sanity checks")  # + the styled header row
    assert f"{(frame['status'] == PASS).sum()} pass" in md


def test_write_sanity_with_nothing_run_reports_missing_not_pass(tmp_path):
    config = pilot(tmp_path)
    write_sanity(tmp_path / "sanity.csv", index=str(tmp_path / "index.parquet"), labels=[], stores=[],
                 pretrained=[], cells=[], config=config, settings=SanitySettings())
    frame = pd.read_csv(tmp_path / "sanity.csv", keep_default_na=False)
    assert set(frame["status"]) == {MISSING}
