"""The real Snakemake DAG on tests/configs/tiny.yaml: full run, no-op rerun, single-shard rebuild."""

import json
import re
import shutil

import pandas as pd
import pytest
import torch

from pssl import store
from pssl.data.imagenet import read_table
from pssl.shards import list_shards

from pssl.report.summary import summarize

from conftest import run_snakemake


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
        final = torch.load(workdir / f"results/pretrain/{model}/final.pt", weights_only=False)
        assert final["config"]["num_classes"] == 4 and final["kind"] == "pssl-pretrain"
    assert len(list((workdir / "results/finetune").glob("*/*/*/metrics.json"))) == 5 * 3 * 2
    assert len(list((workdir / "results/finetune").glob("*/*/*/lr*/final.pt"))) == 5 * 3 * 2
    assert not list((workdir / "results/finetune").glob("*/*/*/lr*/ckpt-*.pt"))


def test_report_table_has_every_cell(pipeline_run):
    workdir, _ = pipeline_run
    table = pd.read_csv(workdir / "results/report/table3.csv", index_col=0)
    assert list(table.index) == ["CamVid", "VOC-Aug", "VOC-Context", "ADE20K", "Cityscapes"]
    assert table.shape == (5, 10) and table.notna().all().all()
    assert table.loc["CamVid", "split"] == "test" and set(table["split"].drop("CamVid")) == {"val"}
    camvid = json.loads((workdir / "results/finetune/camvid/psp/pssl/metrics.json").read_text())
    assert camvid["eval"]["split"] == "test" and camvid["selection"]["split"] == "val"
    assert camvid["eval"]["base_size"] == 48
    markdown = (workdir / "results/report/table3.md").read_text()
    assert markdown.count("\n| ") >= 6 and "PSPNet-test_resnet diff" in markdown
    for png in ("table3_gains.png", "pseudo_label_gallery.png"):
        assert (workdir / "results/report" / png).stat().st_size > 1000
    assert "report/table3.md" in run_summary(workdir)


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
