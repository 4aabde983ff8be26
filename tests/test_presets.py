"""Every preset validates and dry-runs on its own, and the paper preset plans exactly the paper's DAG at every
partial state of a run (fake data trees in the real layouts: empty files, nothing decoded)."""

import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, full_config, run_snakemake
from pssl.config import validate_config
from pssl.data.fake_tree import fake_downstream, fake_imagenet
from pssl.plan import parse_dry_run
from pssl.tables import read_table

PRESETS = sorted((REPO / "presets").glob("*.yaml"))
PAPER = REPO / "presets/paper.yaml"
PILOT = REPO / "presets/pilot.yaml"
DEMO = full_config(REPO / "config.yaml")
ALL_SPLITS = {"camvid": ("train", "val", "test"), "voc_aug": ("train", "val"), "pascal_context": ("train", "val"),
              "ade20k": ("train", "val"), "cityscapes": ("train", "val")}
IMAGES_PER_CLASS = 6  # 6000 images: two shards of the preset's 5000


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return fake_imagenet(root / "imagenet" / "train", IMAGES_PER_CLASS), fake_downstream(root / "seg", ALL_SPLITS)


def roots(trees) -> list[str]:
    # the fake train tree's class folders serve as the val set too (Table 4's top-1)
    return ["--config", f"imagenet_root={trees[0]}", f"downstream_root={trees[1]}", f"imagenet_val_root={trees[0]}"]


def plan(workdir: Path, preset: Path, trees, *args: str, target: str | None = None) -> tuple[Counter, str]:
    """(jobs per rule, printed shell commands) of a dry run (of `target`, else the default target)."""
    proc = run_snakemake(workdir, "-n", "-p", *([target] if target else []), "--configfile", str(preset),
                         *roots(trees), *args)
    stats = proc.stdout[proc.stdout.index("Job stats:"):]
    counts = Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M) if rule != "total"})
    return counts, proc.stdout


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_complete_on_its_own(preset):
    """No key comes from config.yaml: the preset alone passes the schema (which requires every key)."""
    cfg = yaml.safe_load(preset.read_text())
    cfg.update(imagenet_root="/data/imagenet/train", downstream_root="/data/segmentation",
               imagenet_val_root="/data/imagenet/val")
    validate_config(cfg, REPO / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_dry_runs(preset, trees, tmp_path):
    counts, out = plan(tmp_path, preset, trees)
    assert counts["finetune"] > 0 and counts["report"] == 1
    assert not (tmp_path / "results").exists()


def gpu_minutes(dry_run: str) -> dict[str, list[int]]:
    """Per rule, each planned job's runtime x GPUs (minutes) from a dry run's printed resources: what the
    jobs would ask SLURM for (runtime: pssl.cluster.runtime_minutes)."""
    jobs: dict[str, list[int]] = {}
    for job in parse_dry_run(dry_run):
        jobs.setdefault(job.rule, []).append(job.runtime_min * job.gpus)
    return jobs


@pytest.fixture(scope="module")
def pilot_tree(tmp_path_factory):
    """1000 class folders of 50 empty images: every 10th folder's 50 are the pilot's slice."""
    return fake_imagenet(tmp_path_factory.mktemp("pilot") / "train", 50)


@pytest.mark.slow
def test_pilot_plans_the_slice_within_two_gpu_hours(pilot_tree, trees, tmp_path):
    """The pilot: 100 classes x 50 images (one paper-sized shard), 3 classifiers + PSPNet's init, one
    pre-training, CamVid x 2 inits x 2 lrs, the sanity page; by the workflow's own runtime estimates at most
    2 GPU-hours: explain 18 + labels 6 + pre-training 13 + 4 fine-tunes x 20 = 117 GPU-minutes."""
    pilot = full_config(PILOT)
    args = ("--config", f"imagenet_root={pilot_tree}", f"downstream_root={trees[1]}")

    def planned():
        proc = run_snakemake(tmp_path, "-n", "-p", "--configfile", str(PILOT), *args)
        stats = proc.stdout[proc.stdout.index("Job stats:"):]
        return Counter({r: int(n) for r, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M) if r != "total"}), \
            proc.stdout

    common = dict(fill_weights_cache=1, zoo_model=4, pretrain=1, finetune=4, select_lr=2, table3=1, figure3=1,
                  sanity=1, report=1, all=1)
    counts, before = planned()
    assert counts == Counter(index_images=1, shard_index=1, **common)
    run_snakemake(tmp_path, "stage_shards", "--configfile", str(PILOT), *args)
    index, meta = read_table(tmp_path / "results/pilot/index.parquet")
    assert len(index) == 5000 and meta["classes"] == [f"n{c:08d}" for c in range(0, 1000, 10)]
    counts, after = planned()
    assert counts == Counter(explain_shard=1, label_shard=1, **common)

    minutes = gpu_minutes(after)
    assert gpu_minutes(before)["pretrain"] == minutes["pretrain"]  # the slice's size bounds it before indexing
    per_rule = {rule: sum(jobs) for rule, jobs in minutes.items() if sum(jobs)}
    assert per_rule == {"explain_shard": 18, "label_shard": 6, "pretrain": 13, "finetune": 4 * 20}
    assert sum(per_rule.values()) <= 2 * 60
    assert all(sum(jobs) == 0 for rule, jobs in minutes.items() if rule == "zoo_model")  # timm weights: CPU

    commands = [line.removeprefix("Shell command: ") for line in after.splitlines() if " -m pssl " in line]
    (index_cmd,) = [c for c in before.splitlines() if "pssl index" in c]
    assert "--classes 100 --images-per-class 50" in index_cmd
    (explain,) = [c for c in commands if "pssl explain" in c]
    for flag in ("--image-size 224", "--n-samples 50", "--noise-level 0.1 ", "--target class"):
        assert flag in explain
    assert explain.count("results/pilot/zoo/") == len(pilot["zoo"]["models"]) == 3
    (pretrain,) = [c for c in commands if "pssl pretrain" in c]
    assert pretrain.startswith("python -m pssl gpu-slots 1 -- python -m pssl pretrain")
    assert "--epochs 2 " in pretrain and "--crop 256" in pretrain
    finetune = [c for c in commands if "pssl finetune" in c]
    assert sorted(re.search(r" --lr (\S+)", c).group(1) for c in finetune) == ["0.001", "0.001", "0.01", "0.01"]
    assert all("--dataset camvid " in c and "--epochs 30 " in c and "--eval-split test" in c for c in finetune)
    (sanity,) = [c for c in commands if "pssl sanity" in c]
    assert "--stores results/pilot/explain/shard-00000.zarr" in sanity and "--min-stability-iou 0.3" in sanity
    (report,) = [c for c in commands if "pssl report" in c]
    assert "--sanity results/pilot/report/sanity.csv" in report


def test_pilot_differs_from_the_paper_only_where_it_says_why():
    """Every key of the pilot file whose value is not the paper preset's has a comment saying why in its block
    (the lines above it, up to a blank line)."""
    paper, raw = full_config(PAPER), yaml.safe_load(PILOT.read_text())
    lines = PILOT.read_text().splitlines()

    def line_of(key: tuple[str, ...]) -> int:
        row = next(i for i, line in enumerate(lines) if line.startswith(f"{key[0]}:"))
        if len(key) == 2:
            row = next(i for i in range(row + 1, len(lines)) if re.match(rf"\s+{re.escape(key[1])}:", lines[i]))
        return row

    # top-level keys, and the keys of block sections one level down (flow mappings count as one value)
    keys = []
    for top, value in raw.items():
        block = isinstance(value, dict) and any(line == f"{top}:" for line in lines)
        keys += [((top, k), v) for k, v in value.items()] if block else [((top,), value)]
    differing = []  # (what the pilot states as the paper preset does, e.g. its loader workers, needs no why)
    for key, v in keys:
        reference = paper[key[0]] if len(key) == 1 else paper[key[0]][key[1]]
        if ({**reference, **v} if isinstance(v, dict) and isinstance(reference, dict) else v) != reference:
            differing.append(key)
    assert {k[-1] for k in differing} >= {"results", "imagenet_subset", "models", "init_only", "epochs",
                                         "datasets", "lr_grid", "startup_min"}
    for key in differing:
        row = line_of(key)
        start = max([i for i in range(row) if not lines[i].strip()] + [0])
        block = lines[start:row + 1]
        assert any("#" in line for line in block), f"{'.'.join(key)}: no comment why"


@pytest.mark.slow
def test_paper_preset_with_segmentation_teachers(trees, tmp_path):
    """Self-training on Cityscapes (its train_extra pool) and the PSSL-fused column on top of the paper's DAG:
    16 teacher jobs (2 inits x 8 pool parts), 2 x 2 students x 9 lrs, one fused pre-training per model (the lr
    grid: with the preset's peak search the teachers wait for their cells' searches)."""
    (trees[1] / "cityscapes/leftImg8bit/train_extra").mkdir(parents=True, exist_ok=True)
    args = ("self_training={datasets: [cityscapes], models: [pspnet_resnet50d]}",  # more --config values
            "finetune={inits: [imagenet, pssl, pssl-fused], lr_search: {mode: grid}}")
    base, _ = plan(tmp_path, PAPER, trees, "finetune={lr_search: {mode: grid}}")
    counts, out = plan(tmp_path, PAPER, trees, *args)
    assert counts["teacher_labels"] == 2 * 8 and counts["self_train"] == 2 * 2 * 9
    assert counts["pretrain"] == base["pretrain"] + 3 and counts["finetune"] == base["finetune"] + 5 * 3 * 9
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if " -m pssl " in line]
    teachers = [c for c in commands if "pssl teacher-labels" in c]
    assert len(teachers) == 16 and all(f"{trees[1]}/cityscapes/leftImg8bit/train_extra" in c for c in teachers)
    for flag in ("--parts 8 ", "--base-size 1024 ", "--window 864 ", "--scales 0.5 0.75 1.0 1.25 1.5 1.75 ",
                 "--flip true ", "--confidence 0.0 ", "--tile 1024 "):
        assert all(flag in c for c in teachers), flag
    assert not any("--crop " in c or "--eval-split " in c for c in teachers)  # geometry of evaluation only
    students = [c for c in commands if "pssl self-train" in c]
    assert sum("--data pseudo " in c and "pool-7/pseudo.parquet" in c for c in students) == 2 * 9
    assert sum("--data duplicate " in c for c in students) == 2 * 9
    assert all("--multiplier 7 " in c and c.startswith("python -m pssl gpu-slots 4 -- torchrun --standalone "
                                                         "--nproc_per_node 4") for c in students)
    fused = [c for c in commands if "pssl pretrain" in c and "--label-mode fused " in c]
    assert len(fused) == 3 and all("/fused --head" in c for c in fused)


@pytest.mark.slow
def test_self_training_needs_a_pool(trees, tmp_path):
    voc = run_snakemake(tmp_path, "-n", "--configfile", str(PAPER), *roots(trees),
                        "self_training={datasets: [voc_aug], models: [pspnet_resnet50d]}", check=False)
    assert voc.returncode != 0 and "self_training.pools.voc_aug is required" in voc.stderr
    missing = run_snakemake(tmp_path, "-n", "--configfile", str(PAPER), *roots(trees),
                            f"self_training={{datasets: [voc_aug], models: [pspnet_resnet50d], "
                            f"pools: {{voc_aug: {tmp_path}/nowhere}}}}", check=False)
    assert missing.returncode != 0 and "nowhere, is not a directory" in missing.stderr


@pytest.mark.slow
def test_pssl_plan_prices_the_paper_preset_for_every_lr_search(trees, tmp_path):
    """`pssl plan` on the paper preset before anything ran: 43 Table 1-4 cells x 9 lrs in the grid; the peak
    search trains 3 (round 0 from 0.01) to 5 (max_values) of them per cell; shard jobs estimated from
    ImageNet's 1,281,167 images in shards of 5000 (257 each); the per-job GPU-hours are the dry run's own."""
    import subprocess
    import sys

    out = tmp_path / "plan.csv"
    proc = subprocess.run([sys.executable, "-m", "pssl", "plan", "--snakefile", str(REPO / "Snakefile"),
                           "--configfile", str(PAPER), "--config", *roots(trees)[1:], "--directory", str(tmp_path),
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out, index_col="rule")
    n_cells = 43
    finetune = table.loc["finetune"]
    assert (finetune["jobs grid"], finetune["jobs peak best"], finetune["jobs peak worst"], finetune["jobs fixed"]) \
        == (n_cells * 9, n_cells * 3, n_cells * 5, n_cells)
    per_job = finetune["GPU-h grid"] / (n_cells * 9)  # every paper cell's job asks alike within a dataset
    assert finetune["GPU-h peak worst"] <= 0.6 * finetune["GPU-h grid"]
    assert finetune["GPU-h peak best"] == pytest.approx(finetune["GPU-h grid"] / 3, rel=1e-3)
    assert per_job > 1
    assert table.loc["explain_shard", "jobs grid"] == table.loc["label_shard", "jobs grid"] == 257
    dry = run_snakemake(tmp_path, "-n", "-p", "--configfile", str(PAPER), *roots(trees),
                        "finetune={lr_search: {mode: grid}}").stdout
    assert table.loc["pretrain", "GPU-h grid"] == pytest.approx(sum(gpu_minutes(dry)["pretrain"]) / 60, abs=0.01)
    assert "Fine-tuning: grid" in proc.stdout and "peak worst (configured)" in proc.stdout


def demo_names() -> set[str]:
    zoo = [m if isinstance(m, str) else m["name"] for m in DEMO["zoo"]["models"] + DEMO["zoo"]["init_only"]]
    return set(zoo) | set(DEMO["pretrain"]["models"]) | {DEMO["demo"]["root"]}


@pytest.mark.slow
def test_paper_dag_at_every_partial_state(trees, tmp_path):
    paper = full_config(PAPER)
    n_zoo = len(paper["zoo"]["models"]) + len(paper["zoo"]["init_only"])
    n_cells = 5 * 3 * 2
    n_lrs = len(paper["finetune"]["lr_grid"])
    assert n_zoo == 17 and n_lrs == 9 and paper["finetune"]["lr_search"]["mode"] == "peak"
    first_round = [0.005, 0.01, 0.02]  # a peak search's round 0 from 0.01: the rest follows from results
    n_first = len(first_round)
    # The experiments (run_experiments: all four) add pre-training variants and VOC-Aug cells, sharing what
    # they can: Table 1's 8 variants of DeepLabV3-R50 (bg0.1-50k and bg0.1-500k are also Table 2's), Table 2's
    # 200k and 1m and its ImageNet cell, the D8 ablation's and Table 4's one variant each of PSPNet (their main
    # and ImageNet cells are Table 3's).
    n_pretrain = 3 + 8 + 2 + 1 + 1
    n_cells_all = n_cells + 8 + 3 + 1 + 1
    # Table 4 scores its three rows' models on ImageNet val; Figure 3 is in every report
    reports = dict(eval_classify=3, experiment_table=4, table3=1, figure3=1, report=1, all=1)

    # 1. nothing run: everything but the per-shard jobs is planned (they follow the checkpoint)
    counts, out = plan(tmp_path, PAPER, trees)
    assert counts == Counter(fill_weights_cache=1, index_images=1, shard_index=1, zoo_model=n_zoo,
                             pretrain=n_pretrain, finetune=n_cells_all * n_first, lr_search=n_cells_all,
                             select_lr=n_cells_all, **reports)

    # 2. shards written (index and shard run for real on the empty files)
    run_snakemake(tmp_path, "stage_shards", "--configfile", str(PAPER), *roots(trees))
    assert sorted(p.name for p in (tmp_path / "results/paper/shards").glob("*.parquet")) == [
        "shard-00000.parquet", "shard-00001.parquet"]
    counts, out = plan(tmp_path, PAPER, trees)
    assert counts == Counter(fill_weights_cache=1, zoo_model=n_zoo, explain_shard=2, label_shard=2,
                             pretrain=n_pretrain, finetune=n_cells_all * n_first, lr_search=n_cells_all,
                             select_lr=n_cells_all, **reports)
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if " -m pssl " in line]
    explain = [c for c in commands if "pssl explain" in c]
    assert len(explain) == 2
    for flag in ("--image-size 224", "--n-samples 50", "--noise-level 0.1 ", "--output prob", "--target class"):
        assert all(flag in c for c in explain), flag
    pretrain = [c for c in commands if "pssl pretrain" in c]
    assert len(pretrain) == n_pretrain
    assert all(c.startswith("python -m pssl gpu-slots 8 -- torchrun --standalone --nproc_per_node 8") for c in pretrain)
    main = [c for c in pretrain if "/main --head" in c]
    assert len(main) == 3
    for flag in ("--crop 256", "--batch-size 64", "--epochs 30", "--lr 0.01 ", "--schedule step", "--milestone 20",
                 "--gamma 0.1", "--w-bg 0.1", "--backbone-lr-mult 0.1", "--pad-label background", "--images 0 "):
        assert all(flag in c for c in main), flag
    variant = {re.search(r"/pretrain/([^ ]+) --head", c).group(1): c for c in pretrain}
    assert "--w-bg 0.001 " in variant["deeplabv3_resnet50d/bg0.001-500k"]
    assert "--images 500000 " in variant["deeplabv3_resnet50d/bg0.001-500k"]
    assert "--epochs 15 " in variant["deeplabv3_resnet50d/bg0.001-500k"]  # Tables 1, 2: "the training epoch is less"
    assert "--ignore-deciles 8 " in variant["pspnet_resnet50d/d8-ignored"]
    longer = variant["pspnet_resnet50d/epochs60"]  # Table 4: the 30-epoch model trained on to 60
    assert all(flag in longer for flag in ("--epochs 60 ", "--milestone 20 ", "--continue-from main ",
                                           "--continue-state results/paper/pretrain/pspnet_resnet50d/main/state.pt "))
    assert any("--backbone resnet50d --backbone-init results/paper/zoo/resnet50d.gluon_in1k.pt" in c for c in pretrain)

    finetune = [c for c in commands if "pssl finetune" in c]
    assert len(finetune) == n_cells_all * n_first

    def cell(dataset: str, model: str, init: str) -> list[str]:
        return [c for c in finetune if f"--dataset {dataset} " in c and f"/finetune/{dataset}/{model}/{init}/" in c]

    expected = {  # dataset: (crop, base, epochs, weight decay, eval split, window)
        "camvid": (480, 520, 30, 0.001, "test", None), "voc_aug": (480, 520, 50, 0.0001, "val", None),
        "pascal_context": (480, 520, 50, 0.0001, "val", None), "ade20k": (480, 520, 100, 0.0001, "val", None),
        "cityscapes": (864, 1024, 100, 0.0001, "val", 864)}
    for dataset, (crop, base, epochs, wd, split, window) in expected.items():
        for model, init in ((m, i) for m in paper["finetune"]["models"] for i in ("imagenet", "pssl")):
            jobs = cell(dataset, model, init)
            assert len(jobs) == n_first and all(f"--init {init} " in j for j in jobs)
            want_epochs = 180 if (dataset, model) == ("ade20k", "deeplabv3_resnest50d") else epochs
            for flag in (f"--crop {crop} ", f"--base-size {base} ", f"--epochs {want_epochs} ",
                         f"--weight-decay {wd} ", f"--eval-split {split} ", "--batch-size 16 ", "--schedule poly ",
                         "--scales 0.5 0.75 1.0 1.25 1.5 1.75 ", "--flip true"):
                assert all(flag in j for j in jobs), (dataset, model, flag)
            assert all((f"--window {window} " in j) == bool(window) for j in jobs)
            assert sorted(float(re.search(r" --lr (\S+)", j).group(1)) for j in jobs) == first_round
            assert all(j.startswith("python -m pssl gpu-slots 4 -- torchrun --standalone --nproc_per_node 4")
                       for j in jobs)
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
    assert counts == Counter(label_shard=2, pretrain=n_pretrain, finetune=n_cells_all * n_first,
                             lr_search=n_cells_all, select_lr=n_cells_all, **reports)

    # 4. each experiment alone: its own pre-training and cells, the shared labels, never explain
    for target, (n_pre, n_ft) in {"table1": (8, 8), "table2": (4, 5), "ablation_d8": (2, 2),
                                  "table4": (2, 3), "table3": (3, n_cells)}.items():
        counts, _ = plan(tmp_path, PAPER, trees, target=target)
        assert counts == Counter({"label_shard": 2, "pretrain": n_pre, "finetune": n_ft * n_first, "lr_search": n_ft,
                                  "select_lr": n_ft,
                                  target: 1, **({} if target == "table3" else {"experiment_table": 1}),
                                  **({"eval_classify": 3} if target == "table4" else {})}), target


@pytest.mark.slow
def test_wrong_roots_fail_before_any_job_with_one_line(trees, tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(PAPER), "--config", f"imagenet_root={missing}",
                         f"imagenet_val_root={trees[0]}",
                         f"downstream_root={trees[1]}", check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ConfigError" in line]
    assert errors == [f"ConfigError: config key imagenet_root: {missing} is not a directory"]
    assert "Traceback" not in proc.stderr

    partial = fake_downstream(tmp_path / "seg", {**ALL_SPLITS, "camvid": ("train", "val")})  # no CamVid test
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(PAPER), "--config", f"imagenet_root={trees[0]}",
                         f"imagenet_val_root={trees[0]}",
                         f"downstream_root={partial}", check=False)
    assert proc.returncode != 0
    assert f"config key downstream_root: camvid needs {partial}/CamVid/test (missing, and 1 more)" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_nested_command_line_values_are_typed_like_yaml(trees, tmp_path):
    """`--config demo='{enabled: false}'` on the demo config, and typed nested numbers and lists."""
    counts, out = plan(tmp_path, REPO / "tests/configs/tiny.yaml", trees, "demo={enabled: false}",
                       "finetune={lr: 1e-3, lr_grid: [0.002, 0.004], lr_search: {mode: grid}}", "eval={flip: true}")
    assert "make_demo_data" not in counts and counts["finetune"] == 2 * 3 * 2 * 2
    assert "lr0.002/metrics.json" in out and "--flip true" in out


def test_the_demo_plans_every_table3_cell(tmp_path):
    """The demo config's fan-out: 5 datasets x 3 models x 3 inits (ImageNet, PSSL, the oracle control)
    fine-tune jobs and their selections, one pre-training per model and variant, one report (the e2e tests
    run two of the datasets for real)."""
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    counts = Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)})
    assert counts["finetune"] == counts["select_lr"] == 5 * 3 * 3 and counts["report"] == 1
    assert counts["pretrain"] == 3 * 2


@pytest.mark.parametrize("target", ["stage_zoo", "stage_explain", "stage_pretrain", "stage_report"])
def test_stage_targets_dry_run_on_an_empty_results_folder(tmp_path, target):
    """Nothing run yet: runtimes and inputs of every stage target are planned without reading a job's output."""
    proc = run_snakemake(tmp_path, "-n", target)
    assert "Job stats:" in proc.stdout and not (tmp_path / "results").exists()


def test_pssl_fake_tree_lets_the_paper_preset_pass_its_data_checks(tmp_path, capsys):
    """`pssl fake-tree` builds what the checks expect and prints the --config values that point to it."""
    from pssl.cli import main
    from pssl.config import check_data_roots, load_config
    assert main(["fake-tree", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == "--config" and [v.split("=")[0] for v in printed[1:]] == [
        "imagenet_root", "imagenet_val_root", "downstream_root"]
    config, _ = load_config([str(PAPER)], [*printed[1:], "self_training={datasets: [cityscapes], models: "
                                                          "[pspnet_resnet50d]}"], REPO)
    check_data_roots(config)  # every dataset's documented tree, Cityscapes' unlabelled pool, 1000 classes
    assert len(list((tmp_path / "imagenet/train").iterdir())) == 1000


def test_paper_preset_multi_dataset_experiment(trees, tmp_path):
    """`snakemake multi_dataset`: MDP's and MS3's pre-trainings of DeepLabV3-ResNet50 on VOC-Aug + ADE20K train
    at their papers' settings on the pre-training's 8 GPUs (MS3's from CLIP's class vectors), then ImageNet,
    PSSL, MDP and MS3 inits fine-tuned on both sets (each cell's lr search: its first round), and the figures."""
    counts, out = plan(tmp_path, PAPER, trees, target="multi_dataset")
    assert counts["pretrain_multi"] == 2 and counts["embed_classes"] == 1 and counts["experiment_table"] == 1
    assert counts["mdp_prototypes"] == 1 and counts["ms3_mapping"] == 1
    assert counts["finetune"] == 2 * 4 * 3  # 2 datasets x 4 inits x round 0's three lrs
    lines = out.splitlines()
    assert any("pssl embed-classes --datasets voc_aug ade20k --merge-names false --source clip " in c for c in lines)
    for method in ("mdp", "ms3"):
        command = next(line for line in lines if f"pssl pretrain-{method} " in line)
        assert command.startswith("Shell command: python -m pssl gpu-slots 8 -- torchrun --standalone "
                                  "--nproc_per_node 8")
        assert f"--roots voc_aug={trees[1]} ade20k={trees[1]} " in command
        for flag in ("--head deeplabv3 ", "--backbone resnet50d ", "--datasets voc_aug ade20k ", "--crop 224 ",
                     "--memory-images 10240 ", "--temperature 0.07 ", "--backbone-start scratch ", "--epochs 100 ",
                     "--batch-size 128 ", "--lr 0.8 ", "--weight-decay 4e-05 ", "--schedule cosine ",
                     "--num-workers 8 "):
            assert flag in command, (method, flag)
        assert "--backbone-init" not in command  # from scratch, as the papers
        finetunes = [c for c in lines if "pssl finetune" in c and f"/{method}/" in c]
        assert len(finetunes) == 6 and all(f"--init-from results/paper/{method}/deeplabv3_resnet50d/final.pt" in c
                                           for c in finetunes)
    mdp = next(line for line in lines if "pssl pretrain-mdp " in line)
    assert all(flag in mdp for flag in ("--consistency-weight 0.2 ", "--temperature-query 0.07 ",
                                        "--temperature-key 0.04 "))
    ms3 = next(line for line in lines if "pssl pretrain-ms3 " in line)
    assert all(flag in ms3 for flag in ("--class-embeddings results/paper/ms3/class_embeddings.parquet ",
                                        "--embed-dim 512 ", "--visual-weight 1.0 ", "--multi-label true "))
