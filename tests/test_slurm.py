"""The SLURM profile on a real local cluster (scripts/slurm-cluster.sh start; .ci/run does it).

Runs the tiny config through `snakemake --profile profiles/slurm`, with the test-cluster settings a cluster
without an accounting database needs (shared/notes/local-slurm.md): --slurm-status-command squeue,
--slurm-no-account, a short --slurm-init-seconds-before-status-checks.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from pssl import store
from pssl.data.imagenet import read_table

from conftest import REPO, TINY, run_snakemake, snakemake_env
from test_explain import store_content

pytestmark = pytest.mark.slurm
SBATCH_LOG = Path(os.environ.get("PSSL_SBATCH_LOG", "/tmp/pssl-slurm-sbatch-lines.txt"))


def cluster_up() -> str | None:
    if not shutil.which("sinfo"):
        return "SLURM is not installed"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if proc.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in proc.stdout.split()):
        return "no SLURM cluster is running"
    return None


reason = cluster_up()
if reason:
    pytest.skip(f"{reason}: start the local test cluster with `sudo scripts/slurm-cluster.sh start` "
                f"(CI's .ci/run does), then rerun the tests", allow_module_level=True)

def overlay(tmp: Path, name: str, text: str) -> list[str]:
    """A config overlay on top of the tiny config (nested values in --config are not type-converted)."""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return ["--configfile", str(TINY), str(path)]
SLURM_ARGS = ["--profile", str(REPO / "profiles/slurm"), "--default-resources", "slurm_partition=debug",
              "mem_mb=1000", "cpus_per_task=1", "runtime=30", "--slurm-status-command", "squeue",
              "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "10",
              "--retries", "0", "--jobs", "4", "--seconds-between-status-checks", "2", "--verbose"]
# Every stage up to pre-training, and one fine-tune cell per init: what the checks below need, at a CI-sized cost
# (the whole tiny DAG under SLURM took 12 minutes on the 2-core CI machine).
TARGETS = ["stage_pretrain", "results/finetune/camvid/psp/imagenet/metrics.json",
           "results/finetune/camvid/psp/pssl/metrics.json"]


def slurm_run(workdir, *args, check=True):
    return run_snakemake(workdir, *SLURM_ARGS, *args, check=check)


def executed_jobs(output: str) -> list[tuple[str, str, int]]:
    """(kind, rule, snakemake job id) of every job the run executed; kind is 'rule' or 'localrule'."""
    return [(kind, rule, int(jobid)) for kind, rule, jobid in
            re.findall(r"^(rule|localrule|checkpoint|localcheckpoint) (\w+):\n(?:[ \t]+.*\n)*?[ \t]+jobid: (\d+)", output, flags=re.M)]


@pytest.fixture(scope="module")
def slurm_and_local(tmp_path_factory):
    # The cluster has 2 fake GPUs: pretraining runs as 2 ranks under torchrun (gloo on CPU).
    two_ranks = overlay(tmp_path_factory.mktemp("config"), "two_ranks", "pretrain: {gpus_per_node: 2}\n")
    on_slurm = tmp_path_factory.mktemp("slurm")
    proc = slurm_run(on_slurm, *TARGETS, *two_ranks)
    local = tmp_path_factory.mktemp("local")
    run_snakemake(local, "stage_labels", *two_ranks)
    return on_slurm, local, proc.stdout + proc.stderr


def test_every_non_local_job_ran_as_a_slurm_job(slurm_and_local):
    workdir, _, output = slurm_and_local
    jobs = executed_jobs(output)
    remote = {(rule, jobid) for kind, rule, jobid in jobs
              if kind in ("rule", "checkpoint") and not rule.startswith("stage_")}
    assert {rule for rule, _ in remote} >= {"make_demo_data", "index_images", "shard_index", "zoo_model",
                                            "explain_shard", "label_shard", "pretrain", "finetune"}
    assert {rule for kind, rule, _ in jobs if kind == "localrule"} >= {"select_lr"}
    submitted = {int(job): slurm for job, slurm in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)",
                                                             output)}
    missing = sorted((rule, jobid) for rule, jobid in remote if jobid not in submitted)
    assert not missing, f"jobs that did not run as SLURM jobs: {missing}"
    assert len(set(submitted.values())) == len(submitted), "one SLURM job per snakemake job"
    # "sbatch call: sbatch ... --wrap=..." (--verbose); the wrapped snakemake command line is left out here.
    sbatch = [line.split("sbatch call: ", 1)[1].split(" --wrap=")[0] for line in output.splitlines()
              if "sbatch call: " in line]
    assert sbatch, "the plugin prints its sbatch calls with --verbose"
    SBATCH_LOG.write_text("\n".join(sbatch) + "\n")
    assert any("--gpus=1" in line or "gpu:1" in line for line in sbatch)
    assert any("--gpus=2" in line or "gpu:2" in line for line in sbatch)
    assert any("--requeue" in line for line in sbatch)
    assert (workdir / "results/finetune/camvid/psp/pssl/metrics.json").exists()


def test_gpu_jobs_saw_their_allocation(slurm_and_local):
    workdir, _, _ = slurm_and_local
    for log in sorted((workdir / "results/logs/explain").glob("*.log")):
        assert re.search(r"CUDA_VISIBLE_DEVICES=\d", log.read_text()), log
    for log in sorted((workdir / "results/logs/labels").glob("*.log")):
        assert re.search(r"CUDA_VISIBLE_DEVICES=\d", log.read_text()), log


def test_pretraining_ran_as_two_ranks(slurm_and_local):
    workdir, _, _ = slurm_and_local
    for log in sorted((workdir / "results/logs/pretrain").glob("*.log")):
        text = log.read_text()
        assert "2 process(es)" in text and re.search(r"CUDA_VISIBLE_DEVICES=\d,\d", text), log


def test_stores_and_label_tables_equal_a_local_run(slurm_and_local):
    on_slurm, local, _ = slurm_and_local
    for shard in ("shard-00000", "shard-00001", "shard-00002"):
        assert store_content(on_slurm / f"results/explain/{shard}.zarr") == \
            store_content(local / f"results/explain/{shard}.zarr")
        a, _ = read_table(on_slurm / f"results/labels/{shard}.parquet")
        b, _ = read_table(local / f"results/labels/{shard}.parquet")
        pd.testing.assert_frame_equal(a, b)


def test_cancelled_explain_job_resumes_to_the_identical_store(tmp_path):
    # Slow enough to be caught part-way: many noise samples, two images per batch.
    slow = overlay(tmp_path, "slow", "explain: {n_samples: 300, batch_size: 2, sample_chunk: 50}\n")
    target = "results/explain/shard-00000.zarr"
    reference = tmp_path / "reference"
    reference.mkdir()
    run_snakemake(reference, target, *slow)

    workdir = tmp_path / "preempted"
    workdir.mkdir()
    log = open(tmp_path / "preempted.log", "w")  # a file, not a pipe nobody reads: --verbose would fill it
    proc = subprocess.Popen(
        [shutil.which("snakemake", path=snakemake_env()["PATH"]), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--cores", "2", *SLURM_ARGS, target, *slow],
        cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT)
    partial = workdir / "results/explain/.shard-00000.zarr.partial"
    n_total = 8
    done = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int((store.open_store(partial)["status"][:] != store.PENDING).sum())
        except Exception:
            done = 0
        if 0 < done < n_total:
            break
        time.sleep(0.2)
    assert 0 < done < n_total, f"explain job not caught part-way (done {done})"
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    subprocess.run(["scancel", *jobs], check=True)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:  # still polling the cancelled job: stop it as a user would
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log.close()
    assert not (workdir / target).exists() and partial.exists()

    run_snakemake(workdir, "--unlock", *slow)  # a stopped snakemake may leave its lock behind
    rerun = slurm_run(workdir, target, *slow)
    assert "submitted with SLURM jobid" in rerun.stdout + rerun.stderr
    job_log = (workdir / "results/logs/explain/shard-00000.log").read_text()
    to_do = int(re.search(r"(\d+)/(\d+) batches to do", job_log).group(1))
    batches, batch_size = n_total // 2, 2
    assert to_do <= batches - done // batch_size and to_do < batches, "finished images were not recomputed"
    assert store_content(workdir / target) == store_content(reference / target)
