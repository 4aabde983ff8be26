"""The real Snakemake DAG on tests/configs/tiny.yaml: full run, no-op rerun, single-shard rebuild."""

import re
import shutil

import pandas as pd
import pytest

from pssl import store
from pssl.data.imagenet import read_table
from pssl.shards import list_shards

from conftest import run_snakemake

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
        "test_convnext.pt", "test_efficientnet.pt", "test_vit_32.pt"]
    quality = pd.read_csv(workdir / "results/report/explain_quality.csv")
    assert quality["explainer"].iloc[0] == "ensemble" and len(quality) == 4
    assert quality["images"].iloc[0] == 18


def test_rerun_has_nothing_to_do(pipeline_run):
    workdir, _ = pipeline_run
    proc = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _jobs_planned(dry_run_output: str) -> dict[str, int]:
    """Rule -> count from the job-stats table of a dry run."""
    table = dry_run_output.split("Job stats:")[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m[0] != "total"}


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
    proc = run_snakemake(workdir)
    planned = _jobs_planned(proc.stdout + proc.stderr)
    assert planned.get("explain_shard") == 1 and "zoo_model" not in planned and "shard_index" not in planned
    assert target.exists()
    after = {s: (workdir / f"results/explain/{s}.zarr/zarr.json").stat().st_mtime_ns for s in before}
    assert after == before
