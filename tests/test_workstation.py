"""profiles/workstation (no scheduler) on the tiny config's DAG with two fake GPU slots: no two GPU jobs that ran
at once shared a slot (from each job's logged CUDA_VISIBLE_DEVICES), pre-training on 2 GPUs held both and ran
2 ranks; a kill -9 of the controller mid-run and a rerun end with the same Table 3; `pssl status` on the run,
with running and failed jobs."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY, full_config, run_snakemake, snakemake_env
from pssl.gpu_slots import try_take
from pssl.status import DONE, FAILED, RUNNING, job_states, stage_table

pytestmark = pytest.mark.e2e

SLOTS = ("4", "6")
TABLE3 = "results/report/table3.csv"
GPU_LOGS = ("zoo/*.log", "explain/*.log", "labels/*.log", "pretrain/*/*.log", "finetune/*/*/*/seed*/lr*.log")


def workstation_config(tmp: Path) -> Path:
    """The tiny config, smaller where the checks allow: one classifier, two shards, one model (pre-trained on 2
    GPUs: torchrun with 2 ranks), CamVid only."""
    config = full_config(TINY)
    config["zoo"]["models"] = ["test_efficientnet"]
    config["shard_size"] = 9
    config["pretrain"]["gpus_per_node"] = 2
    config["finetune"]["models"] = ["psp"]
    config["finetune"]["datasets"] = {"camvid": config["finetune"]["datasets"]["camvid"]}
    path = tmp / "workstation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def slots_env(locks: Path) -> tuple[str, ...]:
    """A machine without SLURM whose GPUs are the fake SLOTS (env(1) in front of snakemake)."""
    return ("env", "-u", "SLURM_JOB_ID", "-u", "CUDA_VISIBLE_DEVICES", f"PSSL_GPU_SLOTS={','.join(SLOTS)}",
            f"PSSL_GPU_LOCK_DIR={locks}")


def workstation_args(config: Path) -> list[str]:
    """After the targets: --resources takes every word that follows."""
    return ["--configfile", str(config), "--profile", str(REPO / "profiles/workstation"), "--resources", "gpu=2"]


@pytest.fixture(scope="module")
def workstation_run(tmp_path_factory):
    """(work dir, config, lock dir) of one run up to Table 3."""
    tmp = tmp_path_factory.mktemp("workstation")
    config, locks, workdir = workstation_config(tmp), tmp / "locks", tmp / "run"
    workdir.mkdir()
    run_snakemake(workdir, TABLE3, *workstation_args(config), prefix=slots_env(locks))
    return workdir, config, locks


def held_slots(log: Path) -> tuple[set[str], float, float]:
    """The slots a GPU job held (the allocator's line, and every CUDA_VISIBLE_DEVICES the job itself logged
    must name the same), from its first log line's time to the log's last write."""
    text = log.read_text()
    granted = re.search(r"^(\S+ \S+) INFO pssl.gpu_slots: GPU slots: CUDA_VISIBLE_DEVICES=(\S+) ", text,
                        re.MULTILINE)
    assert granted, f"{log}: no slots granted"
    assert set(re.findall(r"CUDA_VISIBLE_DEVICES=([\w-]+(?:,[\w-]+)*)", text)) == {granted.group(2)}, log
    start = datetime.strptime(granted.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return set(granted.group(2).split(",")), start, log.stat().st_mtime


def test_gpu_jobs_that_overlapped_held_distinct_slots(workstation_run):
    workdir, _, _ = workstation_run
    logs = sorted(p for pattern in GPU_LOGS for p in (workdir / "results/logs").glob(pattern))
    assert len(logs) == 2 + 2 + 2 + 1 + 2  # zoo (1 + the backbone's init), explain, labels, pretrain, finetune
    held = {log: held_slots(log) for log in logs}
    overlapping = 0
    for i, (a, (sa, a0, a1)) in enumerate(held.items()):
        assert sa <= set(SLOTS)
        for b, (sb, b0, b1) in list(held.items())[i + 1:]:
            if a0 < b1 and b0 < a1:
                overlapping += 1
                assert not sa & sb, f"{a.name} and {b.name} shared {sa & sb} while both ran"
    assert overlapping >= 2, "too few GPU jobs ran at once to show anything"
    (pretrain,) = [log for log in logs if "pretrain" in log.parts]
    assert held[pretrain][0] == set(SLOTS) and "2 process(es)" in pretrain.read_text()


def copy_run(source: Path, workdir: Path, drop: tuple[str, ...] = ()) -> None:
    """Another work dir with `source`'s data, results (less `drop`) and Snakemake records, file times kept,
    so Snakemake reruns only what a test removes or changes."""
    shutil.copytree(source / "data", workdir / "data")
    shutil.copytree(source / "results", workdir / "results", ignore=shutil.ignore_patterns(*drop))
    shutil.copytree(source / ".snakemake/metadata", workdir / ".snakemake/metadata")


def test_kill_9_of_the_controller_mid_run_then_a_rerun_gives_the_same_table3(workstation_run, tmp_path):
    """Killed while both fine-tune jobs train: they go on as orphans holding both slots, `pssl status` shows
    them running, and the rerun (after --unlock, as Snakemake asks) waits for their slots and ends with the
    Table 3 of the uninterrupted run."""
    source, config, locks = workstation_run
    workdir = tmp_path / "killed"
    copy_run(source, workdir, drop=("finetune", "report"))
    snakemake = [shutil.which("snakemake", path=snakemake_env()["PATH"]), "--snakefile", str(REPO / "Snakefile"),
                 "--directory", str(workdir), "--cores", "2", TABLE3, *workstation_args(config)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([*slots_env(locks), *snakemake], cwd=workdir, env=snakemake_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        training = []
        while time.monotonic() < deadline and proc.poll() is None and len(training) < 2:
            time.sleep(0.2)
            training = [p for p in (workdir / "results/logs/finetune").glob("*/*/*/seed0/lr*.log")
                        if "process(es)" in p.read_text()]
        assert len(training) == 2, "the fine-tune jobs were not caught training"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert try_take(1, list(SLOTS), locks) is None, "the orphaned jobs' slots were given away"
        states = job_states(workdir / "results", workdir / ".snakemake/log")
        running = [job for job in states if job.state == RUNNING]
        assert {job.rule for job in running} == {"finetune"} and len(running) == 2
        assert all(job.last_line() != "(no log yet)" for job in running)

        run_snakemake(workdir, "--unlock", "--configfile", str(config))
        run_snakemake(workdir, TABLE3, *workstation_args(config), prefix=slots_env(locks))
    finally:  # whatever is left of the session: snakemake's process group holds the jobs it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    pd.testing.assert_frame_equal(pd.read_csv(workdir / TABLE3), pd.read_csv(source / TABLE3))
    table = {row["stage"]: row for row in stage_table(job_states(workdir / "results", workdir / ".snakemake/log"))}
    assert table["finetune"][DONE] == 2 and table["finetune"][RUNNING] == 0


def test_status_counts_stages_and_shows_a_failed_jobs_last_log_line(workstation_run, tmp_path):
    source, config, locks = workstation_run
    workdir = tmp_path / "failed"
    copy_run(source, workdir)
    shutil.copytree(source / ".snakemake/log", workdir / ".snakemake/log")
    (workdir / "results/finetune/camvid/psp/imagenet/seed0/lr0.01/metrics.json").write_text("{")
    failed = run_snakemake(workdir, TABLE3, *workstation_args(config), prefix=slots_env(locks), check=False)
    assert failed.returncode != 0
    proc = subprocess.run([sys.executable, "-m", "pssl", "status", "--results", "results"], cwd=workdir,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.split("\n\n")[0].splitlines()[1:]}
    assert rows["explain_shard"][:3] == ["2", "0", "0"] and rows["pretrain"][:3] == ["1", "0", "0"]
    assert rows["select_lr"][:3] == ["1", "0", "1"]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("  select_lr ")]
    assert "results/logs/finetune/camvid/psp/imagenet/seed0/select_lr.log (failed" in line
    assert "JSONDecodeError" in line  # a corrupt artifact is no input error: its traceback's last line
    assert [job.state for job in job_states(workdir / "results", workdir / ".snakemake/log")
            if job.rule == "finetune"] == [DONE, DONE]
    assert FAILED in proc.stdout
