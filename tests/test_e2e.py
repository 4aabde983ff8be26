"""The real Snakemake DAG on tests/configs/tiny.yaml: full run, no-op rerun, single-shard rebuild."""

import json
import re
import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import full_config, run_snakemake
from pssl import store
from pssl.report.summary import summarize
from pssl.shards import list_shards
from pssl.tables import read_table


def run_summary(workdir):
    return summarize(workdir / "results")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    proc = run_snakemake(workdir)
    return workdir, proc


def test_full_run_writes_every_stage(pipeline_run):
    workdir, _ = pipeline_run
    index, meta = read_table(workdir / "results/index.parquet")
    assert len(index) == 18 and meta["classes"] == ["n90000000", "n90000001", "n90000002"]
    assert list_shards(workdir / "results/shards") == ["shard-00000", "shard-00001", "shard-00002"]
    for shard in ("shard-00000", "shard-00001", "shard-00002"):
        group = store.open_store(workdir / f"results/explain/{shard}.zarr")
        assert (group["status"][:] == store.DONE).all() and group["deciles"].shape[1:] == (32, 32)
    assert sorted(p.name for p in (workdir / "results/zoo").glob("*.pt")) == [
        "hrnet_w18_small.pt", "test_convnext.pt", "test_efficientnet.pt", "test_resnet.pt", "test_vit_32.pt"]
    quality = pd.read_csv(workdir / "results/report/explain_quality.csv")
    assert quality["explainer"].iloc[0] == "ensemble" and len(quality) == 4
    assert quality["images"].iloc[0] == 18
    labels = pd.concat([read_table(workdir / f"results/labels/shard-0000{i}.parquet")[0] for i in range(3)])
    assert list(labels.columns) == ["image_id", "gt_class", "teacher_class", "teacher_conf", "label", "keep",
                                    "fg_fraction"] and len(labels) == 18
    for model in ("psp", "dlv3", "ocr"):
        final = torch.load(workdir / f"results/pretrain/{model}/main/final.pt", weights_only=True)
        assert final["config"]["num_classes"] == 4 and final["kind"] == "pssl-pretrain"
    assert len(list((workdir / "results/finetune").glob("*/*/*/seed*/metrics.json"))) == 2 * 3 * 2
    assert len(list((workdir / "results/finetune").glob("*/*/*/seed*/lr*/final.pt"))) == 2 * 3 * 2
    assert not list((workdir / "results/finetune").glob("*/*/*/seed*/lr*/ckpt-*.pt"))


def test_report_table_has_every_cell(pipeline_run):
    workdir, _ = pipeline_run
    table = pd.read_csv(workdir / "results/report/table3.csv", index_col=0)
    assert list(table.index) == ["CamVid", "Cityscapes"]
    assert table.shape == (2, 10) and table.notna().all().all()
    assert table.loc["CamVid", "split"] == "test" and set(table["split"].drop("CamVid")) == {"val"}
    camvid = json.loads((workdir / "results/finetune/camvid/psp/pssl/seed0/metrics.json").read_text())
    assert camvid["eval"]["split"] == "test" and camvid["selection"]["split"] == "val"
    assert camvid["eval"]["base_size"] == 48
    markdown = (workdir / "results/report/table3.md").read_text()
    assert "PSPNet-test_resnet diff" in markdown and "Learning rates (fixed)" in markdown
    for png in ("table3_gains.png", "pseudo_label_gallery.png", "figure3.png"):
        with Image.open(workdir / "results/report" / png) as image:
            image.verify()
    # the same tables as HTML, shown inline by snakemake --report and gathered in index.html
    page = (workdir / "results/report/table3.html").read_text()
    assert "<caption>Table 3: fine-tuning from ImageNet init vs PSSL init</caption>" in page
    row = f"<td>CamVid</td>\n      <td>test</td>\n      <td>{table.loc['CamVid', 'PSPNet-test_resnet ImageNet']:.2f}</td>"
    assert row in page
    index = (workdir / "results/report/index.html").read_text()
    assert row in index and '<img src="table3_gains.svg"' in index and '<img src="figure3.png"' in index
    assert "![Figure 3](figure3.png)" in (workdir / "results/report/report.md").read_text()
    quality = (workdir / "results/report/explain_quality.html").read_text()
    assert "<caption>Pseudo-label quality" in quality and "<td>ensemble</td>" in quality
    summary = run_summary(workdir)
    assert "report/table3.md" in summary and "pretrain pretrain/ (3)" in summary
    assert "finetune finetune/ (12)" in summary


def test_table3_is_made_of_the_cells_metrics(pipeline_run):
    """Every Table 3 value is 100 x the mIoU of its cell's metrics.json (split, lr and all), and the Markdown
    rows print the same numbers."""
    workdir, _ = pipeline_run
    table = pd.read_csv(workdir / "results/report/table3.csv", index_col=0)
    markdown = (workdir / "results/report/table3.md").read_text()
    titles = {"camvid": "CamVid", "cityscapes": "Cityscapes"}
    heads = {"psp": "PSPNet-test_resnet", "dlv3": "DeepLabV3-test_resnet", "ocr": "OCRNet-hrnet_w18_small"}
    for dataset, title in titles.items():
        row = [title, table.loc[title, "split"]]
        for model, head in heads.items():
            miou = {}
            for init, column in (("imagenet", "ImageNet"), ("pssl", "PSSL")):
                cell = json.loads((workdir / f"results/finetune/{dataset}/{model}/{init}/seed0/metrics.json")
                                  .read_text())
                lr_run = json.loads((workdir / f"results/finetune/{dataset}/{model}/{init}/seed0/lr0.01/metrics.json")
                                    .read_text())
                assert cell["miou"] == lr_run["miou"] and cell["lr"] == 0.01  # the one lr of the tiny config
                assert cell["eval"]["split"] == table.loc[title, "split"]
                miou[init] = 100 * cell["miou"]
                assert table.loc[title, f"{head} {column}"] == pytest.approx(miou[init], abs=0.005)
            assert table.loc[title, f"{head} diff"] == pytest.approx(miou["pssl"] - miou["imagenet"], abs=0.01)
            row += [f"{miou['imagenet']:.2f}", f"{miou['pssl']:.2f}", f"{miou['pssl'] - miou['imagenet']:+.2f}"]
        assert "| " + " | ".join(row) + " |" in markdown


def test_rerun_has_nothing_to_do(pipeline_run):
    workdir, _ = pipeline_run
    proc = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _jobs_planned(dry_run_output: str) -> dict[str, int]:
    """Rule -> count from the job-stats table of a dry run."""
    table = dry_run_output.split("Job stats:")[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m[0] != "total"}


def test_changed_label_policy_reruns_labels_not_explain(pipeline_run):
    workdir, _ = pipeline_run
    proc = run_snakemake(workdir, "-n", "--config", "labels={policy: agree}")
    planned = _jobs_planned(proc.stdout + proc.stderr)
    assert planned.get("label_shard") == 3 and planned.get("pretrain") == 3
    assert "explain_shard" not in planned and "zoo_model" not in planned


def test_changed_shard_size_reshards_but_keeps_demo_data(pipeline_run):
    workdir, _ = pipeline_run
    proc = run_snakemake(workdir, "-n", "--config", "shard_size=5")
    planned = _jobs_planned(proc.stdout + proc.stderr)
    assert planned.get("shard_index") == 1 and "make_demo_data" not in planned and "index_images" not in planned


def test_a_learning_rate_grid_runs_end_to_end(pipeline_run):
    """A 2-value grid on one cell: the lr wildcard, a job per lr, select_lr keeping the better on val, and the
    report's 'best of a grid' note. (After the tests that expect nothing to do: it changes that cell.)"""
    from pssl.report.table3 import write_table3
    workdir, _ = pipeline_run
    cell = "results/finetune/camvid/psp/pssl/seed0/metrics.json"
    proc = run_snakemake(workdir, cell, "--config", "finetune={lr_grid: [0.01, 0.05], lr_search: {mode: grid}}")
    planned = _jobs_planned(proc.stdout + proc.stderr)
    assert planned == {"finetune": 1, "select_lr": 1}  # lr 0.01 exists: only lr 0.05 and the selection
    runs = {lr: json.loads((workdir / f"results/finetune/camvid/psp/pssl/seed0/lr{lr}/metrics.json").read_text())
            for lr in ("0.01", "0.05")}
    best = json.loads((workdir / cell).read_text())
    assert best["lrs_tried"] == {lr: r["selection"]["miou"] for lr, r in runs.items()}
    winner = max(runs, key=lambda lr: runs[lr]["selection"]["miou"])
    assert best["lr"] == float(winner) and best["miou"] == runs[winner]["miou"]
    cells = sorted(str(p) for p in (workdir / "results/finetune").glob("*/*/*/seed*/metrics.json"))
    markdown = write_table3(cells, str(workdir / "grid_report"), {})
    assert "best of the lrs tried, chosen on val" in markdown
    assert f"psp pssl: {', '.join(sorted({'0.01', winner}))}" in markdown  # the other datasets' cells: 0.01


def test_agree_policy_end_to_end(pipeline_run, tmp_path):
    """labels.policy agree on the fixture's stores and zoo: only the label tables and the pre-training rerun;
    an image keeps its class exactly when the teacher's top-1 agrees, and pre-training uses only those."""
    workdir, _ = pipeline_run
    copy = tmp_path / "agree"
    for part in ("data", "results/index.parquet", "results/shards", "results/zoo", "results/explain",
                 "results/labels", ".snakemake/metadata"):  # the metadata: so changed params are seen
        (copy / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (workdir / part).is_dir() else shutil.copy2)(workdir / part, copy / part)
    proc = run_snakemake(copy, "results/pretrain/psp/main/final.pt", "--config", "labels={policy: agree, top_k: 1}")
    assert _jobs_planned(proc.stdout + proc.stderr) == {"label_shard": 3, "pretrain": 1}
    tables = [read_table(copy / f"results/labels/{s}.parquet") for s in list_shards(copy / "results/shards")]
    labels = pd.concat([t for t, _ in tables])
    agrees = labels["teacher_class"] == labels["gt_class"]
    assert all(meta["policy"] == "agree" for _, meta in tables)
    assert (labels["keep"] == agrees).all() and (labels["label"] == labels["gt_class"]).all()
    assert 0 < agrees.sum() < len(labels), "the tiny zoo agrees on some images, not all: both branches run"
    log = (copy / "results/logs/pretrain/psp/main.log").read_text()
    assert f"pseudo-labelled set: {int(agrees.sum())} images used" in log


def test_every_experiment_with_two_seeds(pipeline_run, tmp_path):
    """The experiment targets and a second seed on a copy of the finished run: the variants add pre-training
    and fine-tune jobs only (no zoo, explain or label job), and every table has every cell, with seeds."""
    workdir, _ = pipeline_run
    copy = tmp_path / "experiments"
    for part in ("data", "results", ".snakemake/metadata"):
        shutil.copytree(workdir / part, copy / part)
    experiments = ["table1", "table2", "ablation_d8", "table4"]
    seeds = ("--config", "finetune={seeds: [0, 1]}", f"run_experiments=[{', '.join(experiments)}]")
    planned = _jobs_planned((p := run_snakemake(copy, "-n", *experiments, "report", *seeds)).stdout + p.stderr)
    # variants n8, bg1-n8, d8-ignored, epochs2; seed 1 of Table 3's 12 cells, Table 1's 2 x 2, the ablation's and
    # Table 4's 1 x 2; Table 4's three top-1 evaluations (one more selection where the lr-grid test left a
    # two-lr cell: its selection now sees one lr again)
    assert planned.pop("select_lr") in (20, 21)
    assert planned == {"pretrain": 4, "finetune": 12 + 4 + 2 + 2, "eval_classify": 3, "experiment_table": 4,
                       "table3": 1, "report": 1, **dict.fromkeys(experiments, 1)}
    run_snakemake(copy, *experiments, "report", *seeds)
    report = copy / "results/report"
    for name in experiments:
        table = pd.read_csv(report / f"experiments/{name}.csv", index_col=0)
        assert table["CamVid"].notna().all() and table["CamVid sd"].notna().all(), name
        runs = pd.read_csv(report / f"experiments/{name}_runs.csv")
        assert sorted(set(runs["seed"])) == [0, 1] and len(runs) == 2 * len(table), name
    table2 = pd.read_csv(report / "experiments/table2.csv", index_col=0)
    assert list(table2.index) == ["ImageNet init", "PSSL n8 (images 8)", "PSSL (main pre-training)"]
    assert table2["CamVid diff"].iloc[1:].notna().all() and table2["CamVid diff ci95"].iloc[1:].notna().all()
    log = (copy / "results/logs/pretrain/psp/n8.log").read_text()
    assert "pseudo-labelled set: 8 images used (the first 8 of a fixed random order)" in log
    table3 = pd.read_csv(report / "table3.csv", index_col=0)
    assert table3["PSPNet-test_resnet diff seeds"].eq(2).all() and table3["PSPNet-test_resnet diff ci95"].notna().all()
    markdown = (report / "report.md").read_text()
    assert "seeds 0, 1" in markdown and all(f"## {t}" in markdown for t in
                                            ("background weight x images", "images vs ImageNet init", "D8 ignored"))
    assert "images vs ImageNet init" in (report / "index.html").read_text()
    table4 = pd.read_csv(report / "experiments/table4.csv", index_col=0)
    top1 = table4["ImageNet val top-1 (%)"]
    assert top1.notna().all() and top1.between(0, 100).all() and len(top1) == 3
    evaluated = json.loads((copy / "results/classify/psp/pssl-epochs2.json").read_text())
    assert evaluated["images"] == 3 * 2 and evaluated["kind"] == "segmenter"
    assert "background excluded" in evaluated["prediction"]


def test_self_training_and_fused_pretraining_after_a_finished_run(pipeline_run, tmp_path):
    """Turning self-training on plans teachers, students and tables only (no explain, label or pre-training
    job); a PSSL-fused column adds one pre-training per model; every new cell and quality table is filled."""
    workdir, _ = pipeline_run
    copy = tmp_path / "teachers"
    for part in ("data", "results", ".snakemake/metadata"):
        shutil.copytree(workdir / part, copy / part)
    st = "self_training={datasets: [camvid], models: [psp]}"
    planned = _jobs_planned((p := run_snakemake(copy, "-n", "--config", st)).stdout + p.stderr)
    assert planned.pop("select_lr") in (4, 5)  # 4 students (+1 where the lr-grid test left a two-lr cell)
    assert planned == {"teacher_labels": 2 * 2, "self_train": 2 * 2, "selftrain_quality": 1, "table3": 1,
                       "report": 1, "all": 1}
    fused = "finetune={inits: [imagenet, pssl, pssl-fused]}"
    planned = _jobs_planned((p := run_snakemake(copy, "-n", "--config", st, fused)).stdout + p.stderr)
    assert planned["pretrain"] == 3 and planned["finetune"] == 3 * 2 and planned["eval_pretrain"] == 1
    assert not {"zoo_model", "explain_shard", "label_shard"} & set(planned)
    run_snakemake(copy, "--config", st, fused)

    table = pd.read_csv(copy / "results/report/table3.csv", index_col=0)
    psp = "PSPNet-test_resnet"
    new = [f"{psp} {c}" for c in ("PSSL-fused", "ImageNet+ST", "ImageNet+dup", "PSSL+ST", "PSSL+dup",
                                  "PSSL-fused diff", "ImageNet+ST gain", "PSSL+ST gain", "ImageNet+dup gain")]
    assert table.loc["CamVid", new].notna().all()
    assert pd.isna(table.loc["Cityscapes", f"{psp} PSSL+ST"])  # self-training on CamVid only
    columns = list(table.columns)
    assert columns.index(f"{psp} ImageNet+ST") < columns.index(f"{psp} ImageNet+dup") < columns.index(f"{psp} PSSL+ST")
    assert table.loc["CamVid", f"{psp} ImageNet+ST gain"] == pytest.approx(
        table.loc["CamVid", f"{psp} ImageNet+ST"] - table.loc["CamVid", f"{psp} ImageNet"], abs=0.02)

    quality = pd.read_csv(copy / "results/report/selftrain_quality.csv")
    assert list(quality["init"]) == ["imagenet", "pssl"] and (quality["images"] == 4).all()
    assert quality["pseudo_miou"].between(0, 100).all() and quality["teacher_miou"].notna().all()
    student = json.loads((copy / "results/finetune/camvid/psp/pssl+st/seed0/metrics.json").read_text())
    assert student["student"]["data"] == "pseudo" and len(student["student"]["pseudo"]) == 2  # both pool parts
    labelled = sorted((copy / "results/pseudo/camvid/psp/pssl/seed0").glob("pool-*/labels/*.png"))
    assert len(labelled) == 4

    pretrain = pd.read_csv(copy / "results/report/pretrain_quality.csv").set_index("source")
    assert {"psp fused", "psp fused: its fused labels", "D9 pseudo labels"} <= set(pretrain.index)
    assert torch.load(copy / "results/pretrain/psp/fused/final.pt", weights_only=True)["config"]["label_mode"] == \
        "fused"
    index = (copy / "results/report/index.html").read_text()
    assert 'src="selftrain_labels.png"' in index and 'src="fused_labels.png"' in index
    for png in ("selftrain_labels.png", "fused_labels.png"):
        assert Image.open(copy / "results/report" / png).size[0] > 300


def test_deleting_one_store_rebuilds_exactly_that_shard(pipeline_run):
    workdir, _ = pipeline_run
    target = workdir / "results/explain/shard-00001.zarr"
    before = {s: (workdir / f"results/explain/{s}.zarr/zarr.json").stat().st_mtime_ns
              for s in ("shard-00000", "shard-00002")}
    shutil.rmtree(target)
    proc = run_snakemake(workdir, "stage_explain")  # up to the explain stage: downstream reruns are not the point
    planned = _jobs_planned(proc.stdout + proc.stderr)
    assert planned == {"explain_shard": 1, "stage_explain": 1}
    assert target.exists()
    after = {s: (workdir / f"results/explain/{s}.zarr/zarr.json").stat().st_mtime_ns for s in before}
    assert after == before




def fill_weights_cache_offline(cache, archs):
    """A Hugging Face hub cache as `pssl zoo-fetch` leaves it on a login node, with timm's own layout, holding
    (random) weights for `archs`: the compute-node path that loads pretrained weights offline."""
    import timm
    from safetensors.torch import save_file
    for arch in archs:
        model = timm.create_model(arch, pretrained=False)
        repo = cache / ("models--" + model.pretrained_cfg["hf_hub_id"].replace("/", "--"))
        commit = "0" * 40
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs/main").write_text(commit)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(repo / "snapshots" / commit / "model.safetensors"))


def test_unlabelled_images_with_a_pretrained_zoo_and_teacher_labels(tmp_path, monkeypatch):
    """labelled: false end to end, as on a cluster: timm classifiers from an offline weights cache (1000
    classes), no class folders used, SmoothGrad of the zoo's top-1, the teacher's labels, pre-training on them."""
    import yaml

    from conftest import TINY
    cache = tmp_path / "weights"
    fill_weights_cache_offline(cache, ["test_efficientnet", "test_convnext", "test_resnet"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network on this machine either: the cache must suffice
    config = full_config(TINY)
    config.update(labelled=False, shard_size=18)
    config["zoo"].update(source="timm", cache_dir=str(cache), models=["test_efficientnet", "test_convnext"],
                         init_only=["test_resnet"])
    config["labels"]["policy"] = "teacher"
    config["pretrain"]["models"] = {"psp": {"head": "pspnet", "backbone": "test_resnet", "init": "test_resnet"}}
    config["finetune"].update(models=["psp"], datasets={"camvid": config["finetune"]["datasets"]["camvid"]})
    path = tmp_path / "unlabelled.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = run_snakemake(workdir, "stage_pretrain", "--configfile", str(path))
    assert _jobs_planned(proc.stdout + proc.stderr)["fill_weights_cache"] == 1
    index, meta = read_table(workdir / "results/index.parquet")
    assert (index["class_idx"] == -1).all() and meta["classes"] == []
    zoo = json.loads((workdir / "results/zoo/test_convnext.json").read_text())
    assert zoo["source"] == "timm" and zoo["num_classes"] == 1000
    group = store.open_store(workdir / "results/explain/shard-00000.zarr")
    labels, label_meta = read_table(workdir / "results/labels/shard-00000.parquet")
    assert (group["status"][:] == store.DONE).all() and (group["class_idx"][:] == -1).all()
    # the explained class is the zoo's top-1, which is also the teacher's label for the image
    assert (group["target"][:] == labels["label"].to_numpy()).all() and labels["keep"].all()
    assert (labels["label"] == labels["teacher_class"]).all() and (labels["gt_class"] == -1).all()
    assert label_meta["policy"] == "teacher" and label_meta["num_classes"] == 1000
    final = torch.load(workdir / "results/pretrain/psp/main/final.pt", weights_only=True)
    assert final["config"]["num_classes"] == 1001 and final["config"]["background"] == 1000
