"""Every preset validates and dry-runs on its own, and the paper preset plans exactly the paper's DAG at every
partial state of a run (fake data trees in the real layouts: empty files, nothing decoded)."""

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_snakemake
from paper_trees import fake_downstream, fake_imagenet
from pssl.config import validate_config

PRESETS = sorted((REPO / "presets").glob("*.yaml"))
PAPER = REPO / "presets/paper.yaml"
DEMO = yaml.safe_load((REPO / "config.yaml").read_text())
ALL_SPLITS = {"camvid": ("train", "val", "test"), "voc_aug": ("train", "val"), "pascal_context": ("train", "val"),
              "ade20k": ("train", "val"), "cityscapes": ("train", "val")}
IMAGES_PER_CLASS = 6  # 6000 images: two shards of the preset's 5000


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return fake_imagenet(root / "imagenet" / "train", IMAGES_PER_CLASS), fake_downstream(root / "seg", ALL_SPLITS)


def roots(trees) -> list[str]:
    return ["--config", f"imagenet_root={trees[0]}", f"downstream_root={trees[1]}"]


def plan(workdir: Path, preset: Path, trees, *args: str) -> tuple[Counter, str]:
    """(jobs per rule, printed shell commands) of a dry run."""
    proc = run_snakemake(workdir, "-n", "-p", "--configfile", str(preset), *roots(trees), *args)
    stats = proc.stdout[proc.stdout.index("Job stats:"):]
    counts = Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M) if rule != "total"})
    return counts, proc.stdout


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_complete_on_its_own(preset):
    """No key comes from config.yaml: the preset alone passes the schema (which requires every key)."""
    cfg = yaml.safe_load(preset.read_text())
    cfg.update(imagenet_root="/data/imagenet/train", downstream_root="/data/segmentation")
    validate_config(cfg, REPO / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_dry_runs(preset, trees, tmp_path):
    counts, out = plan(tmp_path, preset, trees)
    assert counts["finetune"] > 0 and counts["report"] == 1
    assert not (tmp_path / "results").exists()


def demo_names() -> set[str]:
    zoo = [m if isinstance(m, str) else m["name"] for m in DEMO["zoo"]["models"] + DEMO["zoo"]["init_only"]]
    return set(zoo) | set(DEMO["pretrain"]["models"]) | {DEMO["demo"]["root"]}


def test_paper_dag_at_every_partial_state(trees, tmp_path):
    paper = yaml.safe_load(PAPER.read_text())
    n_zoo = len(paper["zoo"]["models"]) + len(paper["zoo"]["init_only"])
    n_cells = 5 * 3 * 2
    n_lrs = len(paper["finetune"]["lr_grid"])
    assert n_zoo == 17 and n_lrs == 9

    # 1. nothing run: everything but the per-shard jobs is planned (they follow the checkpoint)
    counts, out = plan(tmp_path, PAPER, trees)
    assert counts == Counter(fill_weights_cache=1, index_images=1, shard_index=1, zoo_model=n_zoo, pretrain=3,
                             finetune=n_cells * n_lrs, select_lr=n_cells, report=1, all=1)

    # 2. shards written (index and shard run for real on the empty files)
    run_snakemake(tmp_path, "stage_shards", "--configfile", str(PAPER), *roots(trees))
    assert sorted(p.name for p in (tmp_path / "results/paper/shards").glob("*.parquet")) == [
        "shard-00000.parquet", "shard-00001.parquet"]
    counts, out = plan(tmp_path, PAPER, trees)
    assert counts == Counter(fill_weights_cache=1, zoo_model=n_zoo, explain_shard=2, label_shard=2, pretrain=3,
                             finetune=n_cells * n_lrs, select_lr=n_cells, report=1, all=1)
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if " -m pssl " in line]
    explain = [c for c in commands if "pssl explain" in c]
    assert len(explain) == 2
    for flag in ("--image-size 224", "--n-samples 50", "--noise-level 0.1 ", "--output prob", "--target class"):
        assert all(flag in c for c in explain), flag
    pretrain = [c for c in commands if "pssl pretrain" in c]
    assert len(pretrain) == 3 and all(c.startswith("torchrun --standalone --nproc_per_node 8") for c in pretrain)
    for flag in ("--crop 256", "--batch-size 64", "--epochs 30", "--lr 0.01 ", "--schedule step", "--milestone 20",
                 "--gamma 0.1", "--w-bg 0.1", "--backbone-lr-mult 0.1", "--pad-label background"):
        assert all(flag in c for c in pretrain), flag
    assert any("--backbone resnet50d --backbone-init results/paper/zoo/resnet50d.gluon_in1k.pt" in c for c in pretrain)

    finetune = [c for c in commands if "pssl finetune" in c]
    assert len(finetune) == n_cells * n_lrs

    def cell(dataset: str, model: str, init: str) -> list[str]:
        return [c for c in finetune if f"--dataset {dataset} " in c and f"/finetune/{dataset}/{model}/{init}/" in c]

    expected = {  # dataset: (crop, base, epochs, weight decay, eval split, window)
        "camvid": (480, 520, 30, 0.001, "test", None), "voc_aug": (480, 520, 50, 0.0001, "val", None),
        "pascal_context": (480, 520, 50, 0.0001, "val", None), "ade20k": (480, 520, 100, 0.0001, "val", None),
        "cityscapes": (864, 1024, 100, 0.0001, "val", 864)}
    for dataset, (crop, base, epochs, wd, split, window) in expected.items():
        for model, init in ((m, i) for m in paper["finetune"]["models"] for i in ("imagenet", "pssl")):
            jobs = cell(dataset, model, init)
            assert len(jobs) == n_lrs and all(f"--init {init} " in j for j in jobs)
            want_epochs = 180 if (dataset, model) == ("ade20k", "deeplabv3_resnest50d") else epochs
            for flag in (f"--crop {crop} ", f"--base-size {base} ", f"--epochs {want_epochs} ",
                         f"--weight-decay {wd} ", f"--eval-split {split} ", "--batch-size 16 ", "--schedule poly ",
                         "--scales 0.5 0.75 1.0 1.25 1.5 1.75 ", "--flip true"):
                assert all(flag in j for j in jobs), (dataset, model, flag)
            assert all((f"--window {window} " in j) == bool(window) for j in jobs)
            assert sorted(float(re.search(r" --lr (\S+)", j).group(1)) for j in jobs) == \
                sorted(paper["finetune"]["lr_grid"])
            assert all(j.startswith("torchrun --standalone --nproc_per_node 4") for j in jobs)
    for name in demo_names():
        assert not re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", out), f"demo entry {name!r} in the plan"

    # 3. explain stores written (marked complete): labels, pre-training and fine-tuning remain
    zoo = tmp_path / "results/paper/zoo"
    zoo.mkdir()
    (zoo / ".weights_cached").touch()
    for name in paper["zoo"]["models"] + paper["zoo"]["init_only"]:
        (zoo / f"{name}.pt").touch()
    for shard in ("shard-00000", "shard-00001"):
        (tmp_path / f"results/paper/explain/{shard}.zarr").mkdir(parents=True)
    run_snakemake(tmp_path, "--touch", "stage_explain", "--configfile", str(PAPER), *roots(trees))
    counts, _ = plan(tmp_path, PAPER, trees)
    assert counts == Counter(label_shard=2, pretrain=3, finetune=n_cells * n_lrs, select_lr=n_cells, report=1,
                             all=1)


def test_wrong_roots_fail_before_any_job_with_one_line(trees, tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(PAPER), "--config", f"imagenet_root={missing}",
                         f"downstream_root={trees[1]}", check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ConfigError" in line]
    assert errors == [f"ConfigError: config key imagenet_root: {missing} is not a directory"]
    assert "Traceback" not in proc.stderr

    partial = fake_downstream(tmp_path / "seg", {**ALL_SPLITS, "camvid": ("train", "val")})  # no CamVid test
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(PAPER), "--config", f"imagenet_root={trees[0]}",
                         f"downstream_root={partial}", check=False)
    assert proc.returncode != 0
    assert f"config key downstream_root: camvid needs {partial}/CamVid/test (missing, and 1 more)" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_nested_command_line_values_are_typed_like_yaml(trees, tmp_path):
    """`--config demo='{enabled: false}'` on the demo config, and typed nested numbers and lists."""
    counts, out = plan(tmp_path, REPO / "tests/configs/tiny.yaml", trees, "demo={enabled: false}",
                       "finetune={lr: 1e-3, lr_grid: [0.002, 0.004]}", "eval={flip: true}")
    assert "make_demo_data" not in counts and counts["finetune"] == 2 * 3 * 2 * 2
    assert "lr0.002/metrics.json" in out and "--flip true" in out


def test_the_demo_plans_every_table3_cell(tmp_path):
    """The demo config's fan-out: 5 datasets x 3 models x 2 inits fine-tune jobs and their selections, one
    report (the e2e tests run two of the datasets for real)."""
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    counts = Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)})
    assert counts["finetune"] == counts["select_lr"] == 5 * 3 * 2 and counts["report"] == 1


@pytest.mark.parametrize("target", ["stage_zoo", "stage_explain", "stage_pretrain", "stage_report"])
def test_stage_targets_dry_run_on_an_empty_results_folder(tmp_path, target):
    """Nothing run yet: runtimes and inputs of every stage target are planned without reading a job's output."""
    proc = run_snakemake(tmp_path, "-n", target)
    assert "Job stats:" in proc.stdout and not (tmp_path / "results").exists()
