"""What jobs ask SLURM for, how training jobs launch their ranks, precision per GPU, resume under another
device layout, and evaluation split across ranks (the first cluster run's checks that need no GPU)."""

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, full_config, snakemake_env
from pssl.cluster import TrainLayout, job_resources, train_layout
from pssl.device import choose_precision
from pssl.distributed import DistInfo, init_distributed, local_device
from pssl.train.checkpoint import rank_rng_state, rng_state, set_rng_state

PAPER = full_config(REPO / "presets/paper.yaml")
CPU = torch.device("cpu")


def paper(**cluster) -> dict:
    return {**PAPER, "cluster": {**PAPER["cluster"], **cluster}}


# ---- submission ---------------------------------------------------------------------------------------------

def test_gpu_jobs_ask_for_cpus_to_feed_their_gpus_capped_by_the_node():
    cfg = paper(gpu_partition="gpu", cpu_partition="cpu", account="lab")
    pretrain = job_resources(cfg, "pretrain", layout=train_layout(cfg, "pretrain"))
    # 8 ranks x (8 workers + 1) = 72 CPUs, capped at the node's 64: 8 per rank
    assert pretrain == {"nodes": 1, "gpu": 8, "tasks_per_gpu": 0, "gpu_slots": 8, "cpus_per_task": 64,
                        "mem_mb": 256000, "slurm_partition": "gpu", "slurm_account": "lab"}
    finetune = job_resources(cfg, "finetune", layout=train_layout(cfg, "finetune"))
    assert finetune["cpus_per_task"] == 4 * 9 and finetune["gpu"] == 4 and finetune["nodes"] == 1
    explain = job_resources(cfg, "explain", cpus=8 + 8, gpus=1)
    assert explain == {"nodes": 1, "cpus_per_task": 16, "gpu": 1, "tasks_per_gpu": 0, "gpu_slots": 1,
                       "mem_mb": 32000, "slurm_partition": "gpu", "slurm_account": "lab"}
    index = job_resources(cfg, "cpu")
    assert index == {"nodes": 1, "cpus_per_task": 1, "gpu_slots": 0, "mem_mb": 16000, "slurm_partition": "cpu",
                     "slurm_account": "lab"}


def test_partitions_and_account_fall_back_without_guessing():
    cfg = paper(gpu_partition="gpu", cpu_partition=None, account=None)
    assert job_resources(cfg, "cpu")["slurm_partition"] == "gpu"
    assert "slurm_account" not in job_resources(cfg, "cpu")
    cfg = paper(gpu_partition=None, cpu_partition=None, account=None)
    assert "slurm_partition" not in job_resources(cfg, "explain", gpus=1)  # SLURM's default partition


def test_multi_node_layout_is_one_task_per_gpu_spelled_out_for_srun():
    layout = TrainLayout(gpus_per_node=8, nodes=2, num_workers=8, cores_per_node=64)
    assert layout.world == 16 and layout.cpus_per_rank == 8 and layout.threads_per_rank == 1
    assert layout.resources() == {"nodes": 2, "tasks_per_node": 8, "mpi": "srun", "cpus_per_task": 8}
    # per node, with --gres whatever the configured form (the only per-node GPU option of the plugin)
    asked = job_resources(paper(gpu_request={"default": {"flag": "gpus", "model": "a100", "constraint": None}}),
                          "pretrain", layout=layout)
    assert asked["gres"] == "gpu:a100:8" and "gpu" not in asked and asked["gpu_slots"] == 8
    assert layout.launcher() == ("srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 --cpus-per-task 8 "
                                 "--kill-on-bad-exit=1 python")
    one_node_srun = TrainLayout(2, 1, 0, 2, "srun")
    assert one_node_srun.launcher().startswith(
        "srun --nodes 1 --ntasks-per-node 2 --gpus-per-node 2 --cpus-per-task 1 ")
    assert one_node_srun.resources()["mpi"] == "srun"
    assert TrainLayout(8, 1, 8, 64).launcher() == "torchrun --standalone --nproc_per_node 8"
    assert TrainLayout(1, 1, 0, 2).launcher() == "python"


class Resources(dict):
    """A job's resources as the plugin reads them (`.get` and attributes)."""
    __getattr__ = dict.__getitem__


def sbatch_flags(resources: dict) -> str:
    """The sbatch options the SLURM executor plugin itself builds from a job's resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=Resources(resources), threads=1)
    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "c", "account": "", "partition": "",
              "workdir": None}
    return get_submit_command(job, params) + set_gres_string(job) + " "


REQUEST_FORMS = [  # cluster.gpu_request of a kind -> what sbatch gets for one job of 2 GPUs on one node
    ({"flag": "gpus"}, ["--gpus=2"], ["--gres", "-C"]),
    ({"flag": "gres"}, ["--gres=gpu:2"], ["--gpus", "-C"]),
    ({"flag": "gres", "model": "h100"}, ["--gres=gpu:h100:2"], ["--gpus", "-C"]),
    ({"flag": "gpus", "model": "a100", "constraint": "ib&a100"}, ["--gpus=a100:2", "-C 'ib&a100'"], ["--gres"]),
]


@pytest.mark.parametrize("kind, flags, absent", REQUEST_FORMS)
def test_each_gpu_request_form_reaches_sbatch_without_ntasks_per_gpu(kind, flags, absent):
    """Per kind of job, over the default; through the plugin's own sbatch builder. A profile that sets `tasks`
    for every job (the plugin then adds --ntasks-per-gpu, which breaks multi-GPU jobs: its issue #316) does
    not bring it back."""
    cfg = paper(gpu_request={"default": {"flag": "gpus", "model": None, "constraint": None}, "finetune": kind})
    layout = TrainLayout(gpus_per_node=2, nodes=1, num_workers=0, cores_per_node=2)
    line = sbatch_flags({"tasks": 2, **job_resources(cfg, "finetune", layout=layout)})
    for flag in flags:
        assert f" {flag} " in line, (flag, line)
    assert not [flag for flag in absent if f" {flag}" in line], line
    assert "--ntasks-per-gpu" not in line and " --cpus-per-task=2 " in line
    assert " --gpus=1 " in sbatch_flags(job_resources(cfg, "explain", gpus=1))  # the other kinds: the default
    cpu = sbatch_flags(job_resources(cfg, "cpu"))
    assert "--gpus" not in cpu and "--gres" not in cpu


@pytest.mark.parametrize("request_, key", [
    ({"default": {"flag": "gpus", "model": None, "constraint": None}, "explian": {"flag": "gres"}}, "explian"),
    ({"default": {"flag": "gpu", "model": None, "constraint": None}}, "flag"),
    ({"default": {"flag": "gres", "model": "a100:2", "constraint": None}}, "model"),
])
def test_a_wrong_gpu_request_is_refused_naming_the_key(request_, key):
    from pssl.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=key):
        validate_config(paper(gpu_request=request_, gpu_partition="gpu"), REPO / "workflow/schemas/config.schema.yaml")


# ---- launch -------------------------------------------------------------------------------------------------

def test_training_jobs_are_sized_by_what_they_train():
    """A student's epoch is half the real set plus k x as many pseudo samples, (1 + k) x 1488 for Cityscapes'
    2975 at k = 7; Table 4's 60-epoch row trains the 30 epochs after the main run it continues."""
    from pssl.cluster import training_job
    config = {**PAPER, "self_training": {**PAPER["self_training"], "multiplier": 7},
              "imagenet_root": "/nowhere"}
    wildcards = {"dataset": "cityscapes", "model": "pspnet_resnet50d"}
    assert training_job(config, "self_train", wildcards)[0] == 1488 * 8
    assert training_job(config, "finetune", wildcards)[0] == 2975
    main, longer = (training_job(config, "pretrain", {"variant": v}) for v in ("main", "epochs60"))
    assert (main[1], longer[1]) == (30, 30) and PAPER["pretrain_variants"]["epochs60"]["epochs"] == 60


def test_a_rank_takes_its_gpu_modulo_the_visible_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU bound per task: always device 0
    assert local_device(torch.device("cuda"), 5) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert local_device(torch.device("cuda"), 5) == torch.device("cuda", 1)
    assert local_device(CPU, 5) == CPU


def test_a_launch_with_the_wrong_number_of_ranks_fails_loudly(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="started as 1 process.*config asks for 16"):
        init_distributed("cpu", expect_world=16)
    assert init_distributed("cpu", expect_world=1).world == 1


# ---- precision ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("requested, device, capability, training, expected", [
    ("auto", "cuda", (9, 0), True, "bf16"),    # H100: native bf16
    ("auto", "cuda", (8, 0), False, "bf16"),   # A100, explain too
    ("auto", "cuda", (7, 0), True, "fp16"),    # V100: bf16 only emulated; fp16 with loss scaling
    ("auto", "cuda", (7, 0), False, "fp32"),   # V100 input gradients: fp16 would underflow
    ("auto", "cpu", None, True, "fp32"),
    ("bf16", "cuda", (7, 0), True, "bf16"),    # asked for explicitly
    ("fp32", "cuda", (9, 0), True, "fp32"),
])
def test_precision_choice(requested, device, capability, training, expected):
    assert choose_precision(requested, device, capability, training) == expected


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_device_in_each_precision(device, precision, tmp_path):
    """The training loop as a GPU job runs it (channels_last, autocast, fp16 with loss scaling): 2 epochs of a
    real PSPNet on the synthetic squares (tests/ddp_worker.py). It learns (the last step's loss under 0.7x the
    first's; at lr 1e-9 they stay within 3%), every weight ends finite on the device (4-d ones channels_last on CUDA), and in
    bf16 each step's loss differs from the same run's in fp32 (autocast ran) by at most 10% (on this CPU under
    0.3%; fp16's loss scaling may skip its first steps, so it is held to learning only)."""
    import pandas as pd

    from ddp_worker import fit_squares
    from pssl.settings import TrainSettings
    if precision == "fp16" and device.type != "cuda":
        pytest.skip("fp16 trains on CUDA only (loss scaling)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bf16 on this GPU")

    def train(precision: str, out):
        params = TrainSettings(epochs=2, batch_size=4, lr=0.02, schedule="step", milestone=1,
                               checkpoint_every=1000, sync_bn=False, seed=0, precision=precision)
        model = fit_squares(params, str(out), init_distributed(device.type))
        return model, pd.read_csv(out / "log.csv")["loss"]

    model, loss = train(precision, tmp_path / precision)
    assert len(loss) == 8 and loss.notna().all() and loss.iloc[-1] < 0.7 * loss.iloc[0], loss.tolist()
    assert all(p.device.type == device.type and bool(torch.isfinite(p).all()) for p in model.parameters())
    if device.type == "cuda":
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    if precision == "bf16":
        _, reference = train("fp32", tmp_path / "fp32")
        assert not loss.equals(reference) and ((loss - reference).abs() <= 0.1 * reference).all(), \
            (loss.tolist(), reference.tolist())


def test_fp16_is_refused_where_it_has_no_loss_scaling():
    with pytest.raises(ValueError, match="fp16"):
        choose_precision("fp16", "cuda", (7, 0), training=False)
    with pytest.raises(ValueError, match="fp16"):
        choose_precision("fp16", "cpu", None, training=True)


# ---- resume under another device layout -------------------------------------------------------------------

def test_rng_state_restores_per_rank_under_another_rank_count():
    saved = []
    for rank in range(2):  # a 2-rank run: each rank's own streams
        torch.manual_seed(100 + rank)
        saved.append(rng_state(CPU))
    torch.manual_seed(100)
    expected_rank0 = torch.rand(3)
    torch.manual_seed(101)
    expected_rank1 = torch.rand(3)
    set_rng_state(rank_rng_state(saved, 1), CPU)                # same layout: rank 1 gets its own
    assert torch.equal(torch.rand(3), expected_rank1)
    set_rng_state(rank_rng_state(saved, 0), CPU)                # fewer ranks now (1): no IndexError
    assert torch.equal(torch.rand(3), expected_rank0)
    set_rng_state(rank_rng_state(saved, 3), CPU)                # more ranks (4): reused cyclically
    assert torch.equal(torch.rand(3), expected_rank1)
    assert "cuda" not in saved[0]  # a CPU rank saves no CUDA state (a GPU rank: its own device's only)


# ---- evaluation on every rank ------------------------------------------------------------------------------

def run_eval(root, out, nproc):
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*launcher, str(REPO / "tests/eval_worker.py"), str(root), str(out)],
                          env=snakemake_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_ranks_evaluate_half_the_images_each_and_sum_to_one_process(tiny_demo, tmp_path):
    one = run_eval(tiny_demo, tmp_path / "one.json", 1)
    two = run_eval(tiny_demo, tmp_path / "two.json", 2)
    assert two["ranks"] == 2 and one["ranks"] == 1
    assert two["miou"] == pytest.approx(one["miou"], abs=1e-12)
    assert two["per_class_iou"] == pytest.approx(one["per_class_iou"], abs=1e-12, nan_ok=True)
    assert two["pixel_acc"] == pytest.approx(one["pixel_acc"], abs=1e-12)


# ---- time limits --------------------------------------------------------------------------------------------

def test_time_limit_reads_the_job_end_and_needs_progress(monkeypatch):
    import time as clock

    from pssl import time_limit
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not time_limit.TimeLimit(15).expiring()  # outside SLURM: never
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    asked = []
    monkeypatch.setattr(time_limit, "job_end_time", lambda job: asked.append(job) or clock.time() + 600)
    limit = time_limit.TimeLimit(15)  # 10 min left < 15 min margin
    assert not limit.expiring()       # no progress yet in this run: a requeued job must move forward
    limit.advance()
    assert limit.expiring() and asked == ["123"]  # squeue read once, then every POLL_SECONDS
    assert not time_limit.TimeLimit(5, min_progress=0).expiring()  # 10 min left > 5 min margin


class Requeued(Exception):
    pass


class ExpiringAfter:
    """A TimeLimit stand-in: expiring from the given step on; 'requeueing' raises instead of waiting."""

    def __init__(self, steps: int):
        self.steps, self.progress, self.requeued_by = steps, 0, []

    def advance(self, units: int = 1) -> None:
        self.progress += units

    def expiring(self) -> bool:
        return self.progress >= self.steps

    def requeue_and_wait(self, requeue: bool = True) -> None:
        self.requeued_by.append(requeue)
        raise Requeued


def test_training_near_its_limit_checkpoints_and_the_rerun_ends_with_the_same_weights(tmp_path):
    from ddp_worker import SyntheticSegmentation
    from pssl.models.segmenter import build_segmenter
    from pssl.settings import TrainSettings
    from pssl.train.checkpoint import latest_checkpoint
    from pssl.train.loop import fit
    from pssl.train.losses import class_weights

    def run(out, time_limit=None):
        torch.manual_seed(0)
        model = build_segmenter("pspnet", "test_resnet", 3)
        params = TrainSettings(epochs=2, batch_size=4, lr=0.02, checkpoint_every=1000, seed=0)
        return fit(model, SyntheticSegmentation(n=16), class_weights(3, 2, 0.1), params, out,
                   DistInfo(0, 1, 0, CPU), ignore_index=-1, time_limit=time_limit)

    reference = run(tmp_path / "reference").state_dict()
    limit = ExpiringAfter(steps=3)
    with pytest.raises(Requeued):
        run(tmp_path / "limited", limit)
    assert limit.requeued_by == [True] and latest_checkpoint(tmp_path / "limited").name == "ckpt-000000004.pt"
    resumed = run(tmp_path / "limited").state_dict()  # the requeued job: same command, resumes at step 4
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


@pytest.mark.parametrize("changed", ["lr", "job"])
def test_a_checkpoint_of_other_settings_is_discarded_not_resumed(tmp_path, caplog, changed):
    """A rerun after a config change (Snakemake reruns the job; its old checkpoints are still there) trains
    anew: it ends with the weights of a fresh run of the new settings, not the finished old run's."""
    from ddp_worker import SyntheticSegmentation
    from pssl.models.segmenter import build_segmenter
    from pssl.settings import TrainSettings
    from pssl.train.checkpoint import latest_checkpoint
    from pssl.train.loop import fit
    from pssl.train.losses import class_weights

    def run(out, lr, prior, time_limit=None):
        torch.manual_seed(0)
        model = build_segmenter("pspnet", "test_resnet", 3)
        params = TrainSettings(epochs=2, batch_size=4, lr=lr, checkpoint_every=1000, seed=0)
        return fit(model, SyntheticSegmentation(n=16), class_weights(3, 2, 0.1), params, out,
                   DistInfo(0, 1, 0, CPU), ignore_index=-1, time_limit=time_limit,
                   job={"pretrain": {"fusion_prior": prior, "crop": 32}}).state_dict()

    new = {"lr": (0.05, "deciles"), "job": (0.02, "models")}[changed]
    reference = run(tmp_path / "reference", *new)
    with pytest.raises(Requeued):
        run(tmp_path / "rerun", 0.02, "deciles", ExpiringAfter(steps=3))  # the old settings, stopped at step 4
    run(tmp_path / "rerun", 0.02, "deciles")  # ... and finished: its last checkpoint is the final step
    assert latest_checkpoint(tmp_path / "rerun").name == "ckpt-000000008.pt"
    with caplog.at_level(logging.WARNING, logger="pssl"):
        rerun = run(tmp_path / "rerun", *new)
    assert f"(changed: {'train.lr' if changed == 'lr' else 'pretrain.fusion_prior'}): starting over" in caplog.text
    for key, value in reference.items():
        assert torch.equal(value, rerun[key]), key
    same = run(tmp_path / "rerun", *new)  # the same settings again resume (here: at the end, nothing to do)
    assert all(torch.equal(value, same[key]) for key, value in reference.items())


def test_a_checkpoint_that_does_not_load_as_plain_tensors_is_discarded(tmp_path, caplog):
    """Checkpoints load with weights_only=True; one of an older version (numpy's RNG state as an array) is
    not resumed, and not a crash: the job trains anew to the weights of a fresh run."""
    import numpy as np

    from ddp_worker import SyntheticSegmentation
    from pssl.models.segmenter import build_segmenter
    from pssl.settings import TrainSettings
    from pssl.train.checkpoint import latest_checkpoint
    from pssl.train.loop import fit
    from pssl.train.losses import class_weights

    def run(out, time_limit=None):
        torch.manual_seed(0)
        model = build_segmenter("pspnet", "test_resnet", 3)
        params = TrainSettings(epochs=2, batch_size=4, lr=0.02, checkpoint_every=1000, seed=0)
        return fit(model, SyntheticSegmentation(n=16), class_weights(3, 2, 0.1), params, out,
                   DistInfo(0, 1, 0, CPU), ignore_index=-1, time_limit=time_limit).state_dict()

    reference = run(tmp_path / "reference")
    with pytest.raises(Requeued):
        run(tmp_path / "old", ExpiringAfter(steps=3))
    path = latest_checkpoint(tmp_path / "old")
    state = torch.load(path, weights_only=False)
    state["rng"][0]["numpy"] = np.random.get_state()  # the former format
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="pssl"):
        rerun = run(tmp_path / "old")
    assert "starting over" in caplog.text
    assert all(torch.equal(value, rerun[key]) for key, value in reference.items())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_augmentation_and_loader_workers_sees_the_same_crops(tiny_demo, tmp_path, num_workers):
    """Fine-tuning data (long-side scale, crop, flip) read by 2 loader processes: a run stopped at step 3 and
    resumed ends with the weights of an uninterrupted run, so every resumed batch had the same crops."""
    from pssl.data.downstream import SegmentationSet
    from pssl.data.finetune_set import FinetuneDataset
    from pssl.models.segmenter import build_segmenter
    from pssl.settings import TrainSettings
    from pssl.train.loop import fit
    from pssl.train.losses import class_weights

    data = SegmentationSet("camvid", tiny_demo, "train")

    def run(out, time_limit=None):
        torch.manual_seed(0)
        model = build_segmenter("pspnet", "test_resnet", data.num_classes)
        params = TrainSettings(epochs=3, batch_size=2, lr=0.02, checkpoint_every=1000, num_workers=num_workers,
                               schedule="poly", seed=0)
        return fit(model, FinetuneDataset(data, 32, 48, seed=0), class_weights(data.num_classes, None, 1.0),
                   params, out, DistInfo(0, 1, 0, CPU), ignore_index=255, time_limit=time_limit)

    reference = run(tmp_path / "reference").state_dict()
    with pytest.raises(Requeued):
        run(tmp_path / "stopped", ExpiringAfter(steps=2))
    resumed = run(tmp_path / "stopped").state_dict()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


@pytest.mark.slow
def test_freed_tensor_memory_is_reused_not_faulted_in_again():
    """keep_freed_memory (called by every `pssl` command): allocating and freeing a 64 MB tensor 20 times
    page-faults a fraction of what it does when glibc unmaps every freed buffer."""
    script = """
import resource, sys, torch
from pssl.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.zeros(16 << 20).add_(1)  # warm up: the first allocation always faults
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.zeros(16 << 20).add_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], env=snakemake_env(), check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("default", "keep")}
    assert faults["default"] > 20 * 10_000  # 64 MB = 16,384 pages of 4 KiB, faulted in each time
    assert faults["keep"] < faults["default"] / 3, faults  # measured: 327,700 -> 81,920
