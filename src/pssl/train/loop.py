"""The training loop: SGD + momentum, weighted CE (+ auxiliary head), DDP, checkpoints, resume, CSV log.

Shaped like torchvision's references/segmentation/train.py: `fit` builds the run (`build_trainer`: optimizer,
schedule, loss), moves it to where its job stopped (`resume`), and runs it (`run`: DDP, `train_one_epoch` per
epoch); evaluation lives in pssl.eval.evaluate.

Resume: a restarted job loads the newest checkpoint (model, optimizer, scheduler, step, RNG state) and
continues inside the epoch at the next batch. The sampler order depends only on (seed, epoch) and each
sample's augmentation only on (seed, epoch, index), so the resumed run ends with the same weights.
"""

from __future__ import annotations

import csv
import logging
import pickle
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from pssl.device import precision_for
from pssl.distributed import DistInfo, all_reduce_sum, barrier, gather_objects
from pssl.errors import InputError
from pssl.job_state import resumable
from pssl.progress import Progress
from pssl.settings import TrainSettings, output_identity
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import (
    FINAL_STATE,
    latest_checkpoint,
    load_checkpoint,
    rank_rng_state,
    remove_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pssl.train.losses import Ohem
from pssl.train.objectives import FusedLabels, HardLabels, Objective
from pssl.train.schedules import lr_multiplier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fusion:
    """PseudoSeg's fused soft labels (pre-training label mode `fused`)."""
    background: int
    gamma: float
    temperature: float
    calibration: str


@dataclass
class Trainer:
    """What one training run carries from step to step."""
    model: nn.Module            # the bare model (checkpointed)
    net: nn.Module              # what runs the batches: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    objective: Objective
    settings: TrainSettings
    info: DistInfo
    precision: str
    out_dir: Path
    steps_per_epoch: int
    total_steps: int
    identity: dict              # what a checkpoint must match to be resumed (fit's `job`)
    step: int = 0


class TrainingLog:
    """log.csv rows (step, epoch, loss, lr, images/s); a no-op on ranks other than the primary."""

    def __init__(self, file=None):
        self.file, self.writer = file, csv.writer(file) if file else None

    def row(self, *values) -> None:
        if self.writer:
            self.writer.writerow(values)

    def flush(self) -> None:
        if self.file:
            self.file.flush()


@contextmanager
def training_log(out_dir: Path, fresh: bool, main: bool, parts: tuple[str, ...] = ()):
    """The run's TrainingLog: written by the primary rank only; appended to on resume; `parts`: the
    objective's loss terms, as columns after the total."""
    if not main:
        yield TrainingLog()
        return
    path = out_dir / "log.csv"
    fresh = fresh or not path.exists()
    with open(path, "w" if fresh else "a", newline="") as f:
        log_csv = TrainingLog(f)
        if fresh:
            log_csv.row("step", "epoch", "loss", *parts, "lr", "images_per_s")
        yield log_csv


def param_groups(model: nn.Module, p: TrainSettings) -> list[dict]:
    """Head first, so param_groups[0]["lr"] (the logged lr) is the head's; the backbone at lr x backbone_lr_mult;
    with classifier_lr_mult other than 1 (fine-tuning), the per-class layers in a third group at lr x that.
    Frozen parameters (MDP's key encoder) are left out."""
    trainable = [t for t in model.parameters() if t.requires_grad]
    backbone = {id(t) for t in model.backbone.parameters()}
    classifier = ({id(t) for layer in model.classifier_layers() for t in layer.parameters()}
                  if p.classifier_lr_mult != 1 else set())
    groups = [{"params": [t for t in trainable if id(t) not in backbone | classifier], "lr": p.lr},
              {"params": [t for t in trainable if id(t) in backbone], "lr": p.lr * p.backbone_lr_mult}]
    if classifier:
        groups.append({"params": [t for t in trainable if id(t) in classifier], "lr": p.lr * p.classifier_lr_mult})
    return groups


def save(t: Trainer, epoch: int, log_csv: TrainingLog) -> None:
    rng = gather_objects(rng_state(t.info.device), t.info)  # every rank's own streams, for an exact resume
    if t.info.main:
        log_csv.flush()
        save_checkpoint(t.out_dir, t.step, {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                                            "scheduler": t.scheduler.state_dict(),
                                            "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else None,
                                            "epoch": epoch, "step": t.step, "config": asdict(t.settings),
                                            "precision": t.precision, "rng": rng, "identity": t.identity})


def train_one_epoch(t: Trainer, loader, epoch: int, log_csv: TrainingLog, progress: Progress | None,
                    time_limit: TimeLimit | None) -> bool:
    """One epoch (the rest of it, when resuming); returns True when the job must stop for its time limit."""
    p, info, dev = t.settings, t.info, t.info.device
    t.net.train()
    if p.freeze_bn:
        for m in t.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    if p.freeze_backbone:  # its BatchNorm statistics stay the init's too
        t.model.backbone.eval()
    for batch in loader:
        started = time.perf_counter()
        loss_sum, weight_sum, images = t.objective(t.net, batch, dev, t.precision)
        # Normalise by the global batch's weight sum; DDP's gradient averaging then equals one big batch.
        # Rank 0's time-limit verdict and every rank's loss (for the log) travel in the same all-reduce.
        expiring = float(info.main and time_limit is not None and time_limit.expiring())
        sums = all_reduce_sum(torch.stack([weight_sum.detach(), weight_sum.new_tensor(expiring),
                                           loss_sum.detach().to(weight_sum.dtype)]), info)
        global_weight, stop = sums[0].clamp_min(1e-12), bool(sums[1] > 0)
        loss = loss_sum / global_weight * info.world
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.scheduler.step()
        t.objective.after_step(t.model)
        t.step += 1
        if info.main:
            rate = images * info.world / (time.perf_counter() - started)
            lr = t.optimizer.param_groups[0]["lr"]
            global_loss = float(sums[2] / global_weight)  # the whole batch's loss, whatever the ranks
            log_csv.row(t.step, epoch, f"{global_loss:.5f}", *(f"{v:.5f}" for v in t.objective.last_parts),
                        f"{lr:.6g}", f"{rate:.2f}")
            progress.update(epoch=epoch + 1, loss=global_loss, lr=lr)
        if time_limit is not None:
            time_limit.advance()
        if t.step % p.checkpoint_every == 0 or t.step % t.steps_per_epoch == 0 or stop:
            save(t, epoch, log_csv)
        if stop:
            return True
    return False


def fit(model: nn.Module, dataset, weight: torch.Tensor, p: TrainSettings, out_dir: str | Path, info: DistInfo,
        ignore_index: int, time_limit: TimeLimit | None = None, fusion: Fusion | None = None,
        job: dict | None = None, ohem: Ohem | None = None, start: str | Path | None = None,
        objective: Objective | None = None) -> nn.Module:
    """Train `model` on `dataset` (items: image float (3, H, W) in [0, 1], mask int64 (H, W); with `fusion`,
    the fused views of pssl.data.pseudo); return it. `weight`: the loss's class weights; `ohem`: label maps
    learnt on OHEM's hard pixels.

    `job`: what else decides the result (model, the stage's settings, the fingerprints of the data and init
    files). A checkpoint resumes only a job of the same identity (this and p's output settings; pssl.job_state);
    one left by other settings or inputs is discarded, so a rerun after a change upstream trains anew instead
    of finishing the old run.
    `objective`: what a step minimises where it is not the label-map loss (weight, ignore_index, fusion and
    ohem then unused; MDP's, pssl.train.mdp).
    `start`: the final checkpoint of a finished run (pssl.train.checkpoint.FINAL_STATE) that this one continues
    to `p.epochs`, when it has no checkpoint of its own yet: its weights, optimizer, schedule position and
    random streams, so a continuation ends where an uninterrupted run of all the epochs would.
    With a `time_limit` (SLURM), the step that finds the job near its limit checkpoints and requeues it."""
    t, sampler = build_trainer(model, dataset, weight, p, out_dir, info, ignore_index, fusion, job, ohem, objective)
    resume(t, start)
    return run(t, dataset, sampler, time_limit)


def build_trainer(model: nn.Module, dataset, weight: torch.Tensor, p: TrainSettings, out_dir: str | Path,
                  info: DistInfo, ignore_index: int, fusion: Fusion | None, job: dict | None, ohem: Ohem | None,
                  objective: Objective | None = None) -> tuple[Trainer, DistributedSampler]:
    """The run at step 0: the model on its device, the optimizer, the schedule, the loss, this rank's sampler."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if p.batch_size % info.world:
        raise InputError(f"batch_size {p.batch_size} is not divisible by the {info.world} ranks")
    per_rank = p.batch_size // info.world
    sampler = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True, seed=p.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise InputError(f"{len(dataset)} training images are fewer than one batch of {p.batch_size}")
    dev = info.device
    model.to(dev)
    if p.sync_bn and info.world > 1:
        if dev.type != "cuda":
            raise InputError("sync_bn needs CUDA: torch's SyncBatchNorm has no CPU implementation")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if p.freeze_backbone:
        model.backbone.requires_grad_(False)
    optimizer = torch.optim.SGD(param_groups(model, p), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    total_steps = steps_per_epoch * p.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(p.schedule, steps_per_epoch, total_steps, (p.milestone,), p.gamma))
    precision = precision_for(dev, p.precision, training=True)
    # fp16 (GPUs without native bf16) needs loss scaling; disabled, the scaler passes everything through.
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    if objective is None:
        weight = weight.to(dev)
        objective = HardLabels(weight, ignore_index, p.aux_weight, ohem) if fusion is None else \
            FusedLabels(weight, p.aux_weight, fusion.background, fusion.gamma, fusion.temperature,
                        fusion.calibration, info)
    identity = {"train": output_identity(p), **(job or {})}
    return Trainer(model, model, optimizer, scheduler, scaler, objective, p, info, precision, out_dir,
                   steps_per_epoch, total_steps, identity), sampler


def resume(t: Trainer, start: str | Path | None) -> None:
    """Move `t` to where its job stopped: its own latest checkpoint of the same identity (a finished
    pre-training: its final state), else the finished run `start` it continues; else it stays at step 0."""
    info, out_dir = t.info, t.out_dir
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None and (out_dir / FINAL_STATE).exists():
        checkpoint = out_dir / FINAL_STATE  # a finished pre-training keeps its last checkpoint only
    try:
        state = load_checkpoint(checkpoint) if checkpoint is not None else None
    except pickle.UnpicklingError:  # an older version's checkpoint (numpy RNG state): not resumable, discarded
        state = {}
    if state is not None and not resumable(state.get("identity") or {}, t.identity, str(checkpoint)):
        barrier(info)  # every rank has read the stale checkpoint before the primary removes it
        if info.main:
            remove_checkpoints(out_dir)
        state = None
    if state is None and start is not None:
        checkpoint, state = Path(start), load_checkpoint(start)
        if state["step"] % t.steps_per_epoch or state["step"] >= t.total_steps:
            raise InputError(f"{start} ended at step {state['step']}, not at an epoch end before this run's "
                             f"{t.total_steps} steps ({t.steps_per_epoch} per epoch): a continuation needs the "
                             f"same images and batch size, and more epochs")
        if info.main:
            log.info("continuing the finished run of %s (%d epochs) to %d epochs", start,
                     state["step"] // t.steps_per_epoch, t.settings.epochs)
    if state is None:
        return
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    t.step = state["step"]
    set_rng_state(rank_rng_state(state["rng"], info.rank), info.device)
    if info.main:
        log.info("resuming from %s at step %d/%d", checkpoint.name, t.step, t.total_steps)
        if len(state["rng"]) != info.world:
            log.info("saved by %d rank(s), now %d: random streams differ", len(state["rng"]), info.world)


def run(t: Trainer, dataset, sampler: DistributedSampler, time_limit: TimeLimit | None) -> nn.Module:
    """Train from `t.step` to the last step, epoch by epoch; return the bare model."""
    p, info, dev = t.settings, t.info, t.info.device
    per_rank = p.batch_size // info.world
    if info.main:
        log.info("precision %s (asked: %s)", t.precision, p.precision)
    if info.world > 1:
        t.net = DistributedDataParallel(t.model, device_ids=[dev.index] if dev.type == "cuda" else None)
    progress = Progress(t.total_steps, f"train {t.out_dir.name}", unit="step", initial=t.step) if info.main else None
    with training_log(t.out_dir, fresh=t.step == 0, main=info.main, parts=t.objective.parts) as log_csv:
        for epoch in range(t.step // t.steps_per_epoch, p.epochs):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            first = (t.step - epoch * t.steps_per_epoch) * per_rank  # inside the epoch when resuming
            loader = DataLoader(dataset, batch_size=per_rank, sampler=list(sampler)[first:], drop_last=True,
                                num_workers=p.num_workers, pin_memory=dev.type == "cuda",
                                generator=torch.Generator().manual_seed(p.seed + epoch))
            if train_one_epoch(t, loader, epoch, log_csv, progress, time_limit) and t.step < t.total_steps:
                time_limit.requeue_and_wait(requeue=info.main)
    if progress:
        progress.close()
    t.net = None
    return t.model
