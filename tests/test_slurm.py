"""The SLURM profile on a real local cluster (scripts/slurm-cluster.sh start; .ci/run does it).

Runs the tiny config through `snakemake --profile profiles/slurm`, with the test-cluster settings a cluster
without an accounting database needs (shared/notes/local-slurm.md): --slurm-status-command squeue,
--slurm-no-account, a short --slurm-init-seconds-before-status-checks.
"""

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from conftest import REPO, TINY, full_config, run_snakemake, snakemake_env
from pssl import store
from pssl.config import zoo_specs
from pssl.tables import read_table
from test_explain import store_content

pytestmark = pytest.mark.slurm
SBATCH_LOG = Path(os.environ.get("PSSL_SBATCH_LOG", "/tmp/pssl-slurm-sbatch-lines.txt"))


def cluster_up() -> str | None:
    if not shutil.which("sinfo"):
        return "SLURM is not installed"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in proc.stdout.split()):
        return "no SLURM cluster is running"
    return None


reason = cluster_up()
if reason:
    pytest.skip(f"{reason}: start the local test cluster with `sudo scripts/slurm-cluster.sh start` "
                f"(CI's .ci/run does), then rerun the tests", allow_module_level=True)

def overlay(tmp: Path, name: str, settings: dict) -> list[str]:
    """A config file on top of the tiny config: the test cluster's partitions, updated with `settings`."""
    path = tmp / f"{name}.yaml"
    merged = {**settings, "cluster": {**CLUSTER, **settings.get("cluster", {})}}
    path.write_text(yaml.safe_dump(merged))
    return ["--configfile", str(TINY), str(path)]


# The test cluster: GPU partition "debug" and CPU partition "cpu" on one 2-core node with 2 fake GPUs.
CLUSTER = {"gpu_partition": "debug", "cpu_partition": "cpu", "cores_per_node": 2}
SLURM_ARGS = ["--profile", str(REPO / "profiles/slurm"), "--slurm-status-command", "squeue",
              "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "10",
              "--retries", "0", "--jobs", "4", "--seconds-between-status-checks", "2", "--verbose"]
# Every stage up to pre-training, and one fine-tune cell per init: what the checks below need, at a CI-sized cost
# (the whole tiny DAG under SLURM took 12 minutes on the 2-core CI machine).
TARGETS = ["stage_labels", "results/pretrain/psp/main/final.pt",
           "results/finetune/camvid/psp/imagenet/seed0/metrics.json",
           "results/finetune/camvid/psp/pssl/seed0/metrics.json",
           # self-training: the ImageNet cell as teacher (teacher_labels), its student (self_train)
           "results/finetune/camvid/psp/imagenet+st/seed0/lr0.01/metrics.json"]


def slurm_run(workdir, *args, check=True):
    # As from a login node with one core: cluster jobs must get the threads the config asks for, not the
    # cores of the machine Snakemake runs on (no --cores, as a user runs it with the SLURM profile).
    return run_snakemake(workdir, *SLURM_ARGS, *args, check=check, cores=None, prefix=("taskset", "-c", "0"))


def executed_jobs(output: str) -> list[tuple[str, str, int]]:
    """(kind, rule, snakemake job id) of every job the run executed, in a group job or not (indented); kind is
    'rule' or 'localrule'."""
    return [(kind, rule, int(jobid)) for kind, rule, jobid in
            re.findall(r"^[ \t]*(rule|localrule|checkpoint|localcheckpoint) (\w+):\n(?:[ \t]+.*\n)*?[ \t]+jobid: (\d+)",
                       output, flags=re.MULTILINE)]


def group_jobs(output: str) -> dict[str, list[list[str]]]:
    """Group id -> the rules of each group job of that id the run executed (Snakemake lists a group job's
    jobs indented under its 'Group job' line)."""
    groups, members = {}, None
    for line in output.splitlines():
        if m := re.match(r"^\[.*\] Group job (\S+) \(jobs in lexicogr\. order\):$", line):
            members = []
            groups.setdefault(m.group(1), []).append(members)
        elif m := re.match(r"^([ \t]*)(?:local)?(?:rule|checkpoint) (\w+):$", line):
            if m.group(1) and members is not None:
                members.append(m.group(2))
            elif not m.group(1):
                members = None
    return groups


def sbatch_lines(output: str) -> list[str]:
    """The plugin's sbatch calls (--verbose), without the wrapped snakemake command line."""
    return [line.split("sbatch call: ", 1)[1].split(" --wrap=")[0] for line in output.splitlines()
            if "sbatch call: " in line]


def submitted_as(line: str) -> str:
    """What an sbatch line submits: a rule, or a group job as <group id>_<its rules>; a fine-tune pack (its
    group id names its cell) as 'finetune pack'."""
    comment = re.search(r"--comment '?(\S+?)'? ", line).group(1).removeprefix("rule_").split("_wildcards_")[0]
    return "finetune pack" if re.fullmatch(r"lr-grid-.+_finetune", comment) else comment


# The cluster has 2 fake GPUs: pretraining runs as 2 ranks, srun tasks (gloo on CPU), and the CPU jobs with
# 2 threads each.
# Smaller than the tiny config where the checks allow (each GPU job holds the whole 2-CPU test node, so they
# run one after another): two classifiers in the ensemble, two shards of 9 images.
SMALLER = {"zoo": {"models": ["test_efficientnet", "test_convnext"]}, "shard_size": 9}
SHARDS = ["shard-00000", "shard-00001"]


def node_gpus() -> tuple[str | None, str | None]:
    """The test node's GPU type and node feature where its configuration names them (a typed GRES, a
    Feature): what the <model> and constraint forms need to be satisfiable."""
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=False).stdout
    typed = re.search(r"\bGres=gpu:([A-Za-z]\w*):\d", node)
    feature = re.search(r"\bAvailableFeatures=(\w+)", node)
    return (typed.group(1) if typed else None), (feature.group(1) if feature else None)


MODEL, FEATURE = node_gpus()
# Every form of cluster.gpu_request, one kind of job each: zoo --gres=gpu:1; explain and labels (one group job,
# so they ask alike) --gres=gpu:<model>:1; fine-tuning --gpus=<model>:N -C <feature>; pre-training as srun
# tasks asks per node, --gres=gpu:2; the default --gpus=N (the time-limit test's pre-training).
GPU_REQUEST = {"default": {"flag": "gpus", "model": None, "constraint": None}, "zoo": {"flag": "gres"},
               "explain": {"flag": "gres", "model": MODEL}, "labels": {"flag": "gres", "model": MODEL},
               "finetune": {"model": MODEL, "constraint": FEATURE}}
# Fewer, longer jobs (README): each shard's explain and label steps as one SLURM job; a fine-tune cell's two
# learning rates packed into one allocation of one GPU, one after the other.
PACK = "lr-grid-{dataset}-{model}-{init}-{seed}"
GROUPS = ["--groups", "explain_shard=shard", "label_shard=shard", f"finetune={PACK}",
          "--group-components", f"{PACK}=2", "--resources", "gpu=1", "--set-resource-scopes", "gpu=local"]
TWO_RANKS = {**SMALLER, "pretrain": {"gpus_per_node": 2, "launcher": "srun"}, "threads": 2,
             "finetune": {"lr_grid": [0.01, 0.02], "lr_search": {"mode": "grid"}}, "cluster": {"gpu_request": GPU_REQUEST},
             "self_training": {"datasets": ["camvid"], "models": ["psp"], "inits": ["imagenet"], "pool_shards": 1}}


@pytest.fixture(scope="module")
def tiny_on_slurm(tmp_path_factory):
    """One SLURM run every test below reads: (work dir, snakemake's output)."""
    two_ranks = overlay(tmp_path_factory.mktemp("config"), "two_ranks", TWO_RANKS)
    on_slurm = tmp_path_factory.mktemp("slurm")
    proc = slurm_run(on_slurm, *TARGETS, *two_ranks, *GROUPS)
    return on_slurm, proc.stdout + proc.stderr


def copy_inputs(source: Path, workdir: Path, keep: tuple[str, ...]) -> None:
    """Another work dir starting from `source`'s demo data and the named results, file times kept (so
    Snakemake sees them up to date and reruns only what a test changes)."""
    shutil.copytree(source / "data", workdir / "data")
    for part in keep:
        shutil.copytree(source / "results" / part, workdir / "results" / part)
    shutil.copy2(source / "results/index.parquet", workdir / "results/index.parquet")
    shutil.copytree(source / ".snakemake/metadata", workdir / ".snakemake/metadata")


def test_every_non_local_job_ran_as_a_slurm_job(tiny_on_slurm):
    """Alone, or in one of the group jobs the run asked for: each shard's explain and label steps, and each
    fine-tune cell's two learning rates."""
    workdir, output = tiny_on_slurm
    jobs = executed_jobs(output)
    remote = {(rule, jobid) for kind, rule, jobid in jobs
              if kind in ("rule", "checkpoint") and not rule.startswith("stage_")}
    assert {rule for rule, _ in remote} >= {"make_demo_data", "index_images", "shard_index", "zoo_model",
                                            "explain_shard", "label_shard", "pretrain", "finetune",
                                            "teacher_labels", "self_train"}
    assert {rule for kind, rule, _ in jobs if kind == "localrule"} >= {"select_lr"}
    groups = group_jobs(output)
    assert groups == {"shard": [["explain_shard", "label_shard"]] * len(SHARDS),
                      "lr-grid-camvid-psp-imagenet-0": [["finetune", "finetune"]],
                      "lr-grid-camvid-psp-pssl-0": [["finetune", "finetune"]]}
    grouped = {"explain_shard", "label_shard", "finetune"}
    submitted = dict(re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", output))
    missing = sorted((rule, jobid) for rule, jobid in remote if rule not in grouped and str(jobid) not in submitted)
    assert not missing, f"jobs that did not run as SLURM jobs: {missing}"
    group_submissions = [job for job in submitted if not job.isdigit()]  # a group job's id is a UUID
    assert len(group_submissions) == sum(len(g) for g in groups.values())
    assert len(set(submitted.values())) == len(submitted), "one SLURM job per snakemake job or group job"
    sbatch = sbatch_lines(output)
    assert sbatch, "the plugin prints its sbatch calls with --verbose"
    SBATCH_LOG.write_text("\n".join(sbatch) + "\n")
    assert (workdir / "results/finetune/camvid/psp/pssl/seed0/metrics.json").exists()


# What sbatch must get per rule or group job, for the test overlay (threads 2, cores_per_node 2, pre-training on
# 2 GPUs as srun tasks, the tiny config's memory, GPU_REQUEST): partition, CPUs, GPUs, nodes, memory, and the
# time of a group job: its jobs' estimates added up (explain 16 + labels 13; two fine-tunes of 31, one after
# the other).
TYPED = f"{MODEL}:" if MODEL else ""
CONSTRAINT = [f"-C {FEATURE}"] if FEATURE else []
EXPECTED_SBATCH = {
    "make_demo_data": ["-p cpu", "--nodes=1", "--cpus-per-task=1", "--mem 1000"],
    "index_images": ["-p cpu", "--nodes=1", "--cpus-per-task=1", "--mem 1000"],
    "shard_index": ["-p cpu", "--nodes=1", "--cpus-per-task=1", "--mem 1000"],
    "zoo_model": ["-p debug", "--nodes=1", "--cpus-per-task=2", "--gres=gpu:1", "--mem 2000"],
    "shard_explain_shard_label_shard": ["-p debug", "-t 29", "--nodes=1", "--cpus-per-task=2",
                                        f"--gres=gpu:{TYPED}1", "--mem 2000"],
    "pretrain": ["-p debug", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=gpu:2",
                 "--mem 3000"],
    "finetune pack": ["-p debug", "-t 62", "--nodes=1", "--cpus-per-task=1", f"--gpus={TYPED}1", *CONSTRAINT,
                      "--mem 2000"],
    "teacher_labels": ["-p debug", "--nodes=1", "--cpus-per-task=2", f"--gres=gpu:{TYPED}1", "--mem 2000"],
    "self_train": ["-p debug", "--nodes=1", "--cpus-per-task=1", f"--gpus={TYPED}1", *CONSTRAINT, "--mem 2000"],
}


def test_sbatch_lines_ask_for_the_right_resources_per_rule(tiny_on_slurm):
    _, output = tiny_on_slurm
    seen = set()
    for line in sbatch_lines(output):
        job = submitted_as(line)
        seen.add(job)
        for flag in EXPECTED_SBATCH[job]:
            assert f" {flag} " in f" {line} ", (job, flag, line)
        assert "--requeue" in line and "--ntasks-per-gpu" not in line
        gpus = re.findall(r"--gpus=\S+|--gres=gpu:\S+|-C \S+", line)
        assert sorted(gpus) == sorted(f for f in EXPECTED_SBATCH[job] if f.startswith(("--gpus", "--gres", "-C"))), \
            (job, line)
    assert seen == set(EXPECTED_SBATCH)
    explain = [line for line in output.splitlines() if "-m pssl explain " in line]
    assert explain and all("--threads 2 " in line for line in explain), "threads capped by the login node"


def test_gpu_model_and_constraint_forms_reached_the_cluster(tiny_on_slurm):
    """--gres=gpu:<model>:N, --gpus=<model>:N and -C need a node whose GPUs have a type and which has a
    feature; the sbatch lines above carry them where the test cluster offers both."""
    if not (MODEL and FEATURE):
        pytest.skip("the test node's GPUs have no type or the node no feature (slurm.conf Gres=gpu:<type>:2, "
                    "Feature=<name>; gres.conf Type=<type>): the <model> and constraint forms were not submitted")
    lines = " ".join(sbatch_lines(tiny_on_slurm[1]))
    assert f"--gres=gpu:{MODEL}:1" in lines and f"--gpus={MODEL}:1" in lines and f"-C {FEATURE}" in lines


def test_gpu_jobs_saw_their_allocation(tiny_on_slurm):
    workdir, _ = tiny_on_slurm
    for stage in ("explain", "labels"):
        logs = sorted((workdir / "results/logs" / stage).glob("*.log"))
        assert len(logs) == len(SHARDS), (stage, logs)  # one per shard: a missing log must not pass unchecked
        for log in logs:
            assert re.search(r"CUDA_VISIBLE_DEVICES=\d", log.read_text()), log
    for log in ("pseudo/camvid/psp/imagenet/seed0/pool-0.log", "finetune/camvid/psp/imagenet+st/seed0/lr0.01.log"):
        text = (workdir / "results/logs" / log).read_text()  # the teacher and the student, GPU jobs too
        assert re.search(r"CUDA_VISIBLE_DEVICES=\d", text), log


def test_a_pack_ran_its_fine_tunes_one_after_another_on_its_gpu(tiny_on_slurm):
    """Each cell's two learning rates in one allocation of one GPU: both jobs took that GPU from
    `pssl gpu-slots`, and never at the same time."""
    from test_workstation import held_slots

    workdir, _ = tiny_on_slurm
    for init in ("imagenet", "pssl"):
        (a, a0, a1), (b, b0, b1) = [held_slots(workdir / f"results/logs/finetune/camvid/psp/{init}/seed0/lr{lr}.log")
                                    for lr in ("0.01", "0.02")]
        assert a == b and len(a) == 1 and (a1 <= b0 or b1 <= a0), (init, a, b)


def test_status_reads_the_cluster_run_with_its_group_jobs(tiny_on_slurm):
    from pssl.status import job_states, stage_table

    workdir, _ = tiny_on_slurm
    table = {row["stage"]: row for row in stage_table(job_states(workdir / "results", workdir / ".snakemake/log"))}
    done = {stage: row["done"] for stage, row in table.items()}
    assert done == {"make_demo_data": 1, "index_images": 1, "shard_index": 1, "zoo_model": 3, "explain_shard": 2,
                    "label_shard": 2, "pretrain": 1, "finetune": 4, "select_lr": 2, "teacher_labels": 1,
                    "self_train": 1}
    assert not any(row["running"] or row["failed"] for row in table.values())


def test_pretraining_ran_as_two_srun_tasks(tiny_on_slurm):
    workdir, output = tiny_on_slurm
    assert ("srun --nodes 1 --ntasks-per-node 2 --gpus-per-node 2 --cpus-per-task 1 --kill-on-bad-exit=1 "
            "python -m pssl pretrain") in output
    logs = sorted((workdir / "results/logs/pretrain").glob("*/*.log"))
    assert len(logs) == 1
    for log in logs:
        text = log.read_text()
        assert "2 process(es)" in text and re.search(r"CUDA_VISIBLE_DEVICES=\d", text), log


def test_srun_launch_trains_two_ranks_like_one_process(tmp_path):
    """The launch line the workflow writes for N nodes x G GPUs, run for real as 1 node x 2 tasks inside an
    sbatch allocation shaped by the same resources, with the SLURM variables the jobstep plugin removes
    removed: the two ranks end with the weights of one process (the DDP test's criterion)."""
    import torch

    from pssl.cluster import TrainLayout, job_resources
    from test_pretrain import run_worker

    layout = TrainLayout(gpus_per_node=2, nodes=1, num_workers=0, cores_per_node=2, launcher_kind="srun")
    geometry = job_resources(tiny_config(), "pretrain", layout=layout)
    keep = "SLURM_JOB_ID|SLURM_JOBID|SLURM_CLUSTER_NAME|SLURM_SUBMIT_DIR|SLURM_SUBMIT_HOST"
    script = (f"for v in $(compgen -e | grep '^SLURM_' | grep -Ev '^({keep})$'); do unset $v; done; "
              f"cd {REPO} && {layout.launcher()} tests/ddp_worker.py {tmp_path}/two.pt {tmp_path}/ckpt")
    submit = subprocess.run(
        ["sbatch", "--parsable", "--wait", "-p", "debug", f"--nodes={geometry['nodes']}",
         f"--ntasks-per-node={geometry['tasks_per_node']}", f"--cpus-per-task={geometry['cpus_per_task']}",
         f"--gres={geometry['gres']}", "--mem", "3000", "-t", "10", "-o", f"{tmp_path}/job.log",
         "--wrap", f"bash -c {shlex.quote(script)}"],
        env=snakemake_env(), capture_output=True, text=True, timeout=900, check=False)
    assert submit.returncode == 0, (submit.stderr, (tmp_path / "job.log").read_text())
    one = run_worker(tmp_path / "one.pt", tmp_path / "ckpt1")
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


@contextlib.contextmanager
def requeued_jobs_start_at_once():
    """SLURM holds a requeued job for about 2.5 minutes (reason BeginTime); the test cluster lets it start
    at once, as a busy cluster's scheduler would decide anyway. Only the waiting is shortened."""
    done = threading.Event()

    def release():
        while not done.wait(1.0):
            queue = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True,
                                   check=False)
            for job, reason in (line.split() for line in queue.stdout.splitlines() if line.strip()):
                if reason == "BeginTime":
                    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True,
                                   check=False)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_pretraining_at_its_time_limit_requeues_and_ends_like_an_uninterrupted_run(tiny_on_slurm, tmp_path):
    """A 2-minute time limit and a 2-minute margin: the job is within the margin from its start, so each run
    trains one step more than it started with, checkpoints and requeues itself (4 steps: one requeue). One
    process (the python launcher): with srun tasks the requeue cancels the step first, and in 1 of 2 runs here
    Snakemake then saw the job fail (the profile's `retries: 1` resumes it from the checkpoint)."""
    import torch

    on_slurm, _ = tiny_on_slurm
    config = overlay(tmp_path, "limit", {**SMALLER, "cluster": {"requeue_margin_min": 2}})
    target = "results/pretrain/psp/main/final.pt"
    runs = {}
    for name in ("local", "slurm"):  # the fixture's explain stores and label tables, times kept
        runs[name] = tmp_path / name
        copy_inputs(on_slurm, runs[name], ("shards", "zoo", "explain", "labels"))
    run_snakemake(runs["local"], target, *config)
    with requeued_jobs_start_at_once():
        proc = slurm_run(runs["slurm"], target, *config, "--set-resources", "pretrain:runtime=2")
    output = proc.stdout + proc.stderr
    assert len(re.findall(r"Job \d+ has been submitted with SLURM jobid", output)) == 1
    (line,) = sbatch_lines(output)
    assert " --gpus=1 " in f"{line} ", line  # cluster.gpu_request's default form
    log = (runs["slurm"] / "results/logs/pretrain/psp/main.log").read_text()  # the last run's log
    assert "resuming from ckpt-000000002.pt at step 2/4" in log, log
    a = torch.load(runs["local"] / target, weights_only=True)["model"]
    b = torch.load(runs["slurm"] / target, weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def tiny_config(**overrides) -> dict:
    config = full_config(TINY)
    update_config(config, overrides)
    return config


@contextlib.contextmanager
def torch_threads(n: int):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_stores_and_label_tables_equal_the_library_computed_here(tiny_on_slurm, tmp_path):
    """Each SLURM job wrote what the library computes in this process from the same shard, zoo and settings."""
    from pssl.explain.run import explain_shard
    from pssl.labels import label_shard
    from pssl.settings import explain_settings, label_settings

    on_slurm, _ = tiny_on_slurm
    config = tiny_config(**TWO_RANKS)
    zoo = [str(on_slurm / f"results/zoo/{name}.pt") for name in zoo_specs(config, ensemble_only=True)]
    with torch_threads(config["threads"]):
        for shard in SHARDS:
            table = on_slurm / f"results/shards/{shard}.parquet"
            here = tmp_path / f"{shard}.zarr"
            explain_shard(table, zoo, here, explain_settings(config), device="cpu")
            assert store_content(on_slurm / f"results/explain/{shard}.zarr") == store_content(here)
            label_shard(table, here, zoo, tmp_path / f"{shard}.parquet", label_settings(config), device="cpu")
            a, _ = read_table(on_slurm / f"results/labels/{shard}.parquet")
            b, _ = read_table(tmp_path / f"{shard}.parquet")
            pd.testing.assert_frame_equal(a, b)


def test_cancelled_explain_job_resumes_to_the_identical_store(tiny_on_slurm, tmp_path):
    from pssl.explain.run import explain_shard
    from pssl.settings import explain_settings

    # Slow enough to be caught part-way: many noise samples, two images per batch.
    slower = {"explain": {"n_samples": 300, "batch_size": 2, "sample_chunk": 50}}
    slow = overlay(tmp_path, "slow", {**SMALLER, **slower})
    target = "results/explain/shard-00000.zarr"
    on_slurm, _ = tiny_on_slurm
    workdir = tmp_path / "preempted"
    copy_inputs(on_slurm, workdir, ("shards", "zoo"))  # only the explain job runs
    config = tiny_config(**SMALLER, **slower)
    zoo = [str(workdir / f"results/zoo/{name}.pt") for name in zoo_specs(config, ensemble_only=True)]
    reference = tmp_path / "reference.zarr"
    with torch_threads(config["threads"]):
        explain_shard(workdir / "results/shards/shard-00000.parquet", zoo, reference, explain_settings(config),
                      device="cpu")

    with open(tmp_path / "preempted.log", "w") as log:  # a file, not a pipe nobody reads: --verbose would fill it
        proc = subprocess.Popen(
            [shutil.which("snakemake", path=snakemake_env()["PATH"]), "--snakefile", str(REPO / "Snakefile"),
             "--directory", str(workdir), "--cores", "2", *SLURM_ARGS, target, *slow],
            cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT)
    partial = workdir / "results/explain/.shard-00000.zarr.partial"
    n_total = 9
    done = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int((store.open_store(partial)["status"][:] != store.PENDING).sum())
        except Exception:  # noqa: BLE001 -- a store that is being written may fail to read in many ways
            done = 0
        if 0 < done < n_total:
            break
        time.sleep(0.2)
    assert 0 < done < n_total, f"explain job not caught part-way (done {done})"
    # this run's jobs only (by their work dir): the cluster may be running other tests' jobs
    queue = subprocess.run(["squeue", "-h", "-o", "%i %Z"], check=True, capture_output=True, text=True).stdout
    jobs = [job for job, where in (line.split() for line in queue.splitlines()) if Path(where) == workdir]
    subprocess.run(["scancel", *jobs], check=True)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:  # still polling the cancelled job: stop it as a user would
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not (workdir / target).exists() and partial.exists()

    run_snakemake(workdir, "--unlock", *slow)  # a stopped snakemake may leave its lock behind
    rerun = slurm_run(workdir, target, *slow)
    assert "submitted with SLURM jobid" in rerun.stdout + rerun.stderr
    job_log = (workdir / "results/logs/explain/shard-00000.log").read_text()
    to_do = int(re.search(r"(\d+)/(\d+) batches to do", job_log).group(1))
    batch_size = 2
    batches = -(-n_total // batch_size)
    assert to_do <= batches - done // batch_size and to_do < batches, "finished images were not recomputed"
    assert store_content(workdir / target) == store_content(reference)
