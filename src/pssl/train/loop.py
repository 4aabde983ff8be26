"""The training loop: SGD + momentum, weighted CE (+ auxiliary head), DDP, checkpoints, resume, CSV log.

Resume: a restarted job loads the newest checkpoint (model, optimizer, scheduler, step, RNG state) and
continues inside the epoch at the next batch. The sampler order depends only on (seed, epoch) and each
sample's augmentation only on (seed, epoch, index), so the resumed run ends with the same weights.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from pssl.device import autocast, precision_for
from pssl.params import TrainParams
from pssl.progress import Progress
from pssl.time_limit import TimeLimit
from pssl.train.checkpoint import (latest_checkpoint, load_checkpoint, rank_rng_state, rng_state, save_checkpoint,
                                   set_rng_state)
from pssl.train.distributed import DistInfo, all_reduce_sum, gather_objects
from pssl.train.losses import weighted_ce_sums
from pssl.train.schedules import lr_multiplier


def fit(model: nn.Module, dataset, weight: torch.Tensor, p: TrainParams, out_dir: str | Path, info: DistInfo,
        ignore_index: int = -1, time_limit: TimeLimit | None = None) -> nn.Module:
    """Train `model` on `dataset` (items: image float (3, H, W) in [0, 1], mask int64 (H, W)); return it.

    With a `time_limit` (SLURM), the step that finds the job near its limit checkpoints and requeues it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if p.batch_size % info.world:
        raise ValueError(f"batch_size {p.batch_size} is not divisible by the {info.world} ranks")
    per_rank = p.batch_size // info.world
    sampler = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True, seed=p.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} training images are fewer than one batch of {p.batch_size}")
    total_steps = steps_per_epoch * p.epochs
    dev = info.device
    model.to(dev)
    if p.sync_bn and info.world > 1:
        if dev.type != "cuda":
            raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm has no CPU implementation")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # Head first, so param_groups[0]["lr"] (the logged lr) is the head's; the backbone at lr x backbone_lr_mult.
    backbone_params = list(model.backbone.parameters())
    in_backbone = {id(t) for t in backbone_params}
    groups = [{"params": [t for t in model.parameters() if id(t) not in in_backbone], "lr": p.lr},
              {"params": backbone_params, "lr": p.lr * p.backbone_lr_mult}]
    optimizer = torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(p.schedule, steps_per_epoch, total_steps, (p.milestone,), p.gamma))
    precision = precision_for(dev, p.precision, training=True)
    # fp16 (GPUs without native bf16) needs loss scaling; disabled, the scaler passes everything through.
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    step = 0
    resume = latest_checkpoint(out_dir)
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = state["step"]
        set_rng_state(rank_rng_state(state["rng"], info.rank), dev)
        if info.main:
            print(f"resuming from {resume.name} at step {step}/{total_steps}", flush=True)
            if len(state["rng"]) != info.world:
                print(f"saved by {len(state['rng'])} rank(s), now {info.world}: random streams differ", flush=True)
    if info.main:
        print(f"precision {precision} (asked: {p.precision})", flush=True)
    net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if info.world > 1 else model
    weight = weight.to(dev)
    log_path = out_dir / "log.csv"
    new_log = not log_path.exists() or step == 0
    log_file = open(log_path, "w" if new_log else "a", newline="") if info.main else None
    writer = csv.writer(log_file) if log_file else None
    if writer and new_log:
        writer.writerow(["step", "epoch", "loss", "lr", "images_per_s"])
    progress = Progress(total_steps, f"train {out_dir.name}", unit="step", initial=step) if info.main else None

    for epoch in range(step // steps_per_epoch, p.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        first = (step - epoch * steps_per_epoch) * per_rank  # inside the epoch when resuming
        loader = DataLoader(dataset, batch_size=per_rank, sampler=list(sampler)[first:], drop_last=True,
                            num_workers=p.num_workers, pin_memory=dev.type == "cuda",
                            generator=torch.Generator().manual_seed(p.seed + epoch))
        net.train()
        if p.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        for images, masks in loader:
            started = time.perf_counter()
            images = images.to(dev, non_blocking=True)
            masks = masks.to(dev, non_blocking=True)
            if dev.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(dev, precision):
                outputs = net(images)
            loss_sum, weight_sum = weighted_ce_sums(outputs["out"], masks, weight, ignore_index)
            if "aux" in outputs:
                loss_sum = loss_sum + p.aux_weight * weighted_ce_sums(outputs["aux"], masks, weight, ignore_index)[0]
            # Normalise by the global batch's weight sum; DDP's gradient averaging then equals one big batch.
            # Rank 0's time-limit verdict travels in the same all-reduce, so every rank stops at this step.
            expiring = float(info.main and time_limit is not None and time_limit.expiring())
            sums = all_reduce_sum(torch.stack([weight_sum.detach(), weight_sum.new_tensor(expiring)]), info)
            global_weight, stop = sums[0].clamp_min(1e-12), bool(sums[1] > 0)
            loss = loss_sum / global_weight * info.world
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if info.main:
                rate = images.shape[0] * info.world / (time.perf_counter() - started)
                writer.writerow([step, epoch, f"{loss.item() / info.world:.5f}",
                                 f"{optimizer.param_groups[0]['lr']:.6g}", f"{rate:.2f}"])
                progress.update()
            if time_limit is not None:
                time_limit.advance()
            if step % p.checkpoint_every == 0 or step % steps_per_epoch == 0 or stop:
                rng = gather_objects(rng_state(dev), info)  # every rank's own streams, for an exact resume
                if info.main:
                    log_file.flush()
                    save_checkpoint(out_dir, step, {"model": model.state_dict(),
                                                    "optimizer": optimizer.state_dict(),
                                                    "scheduler": scheduler.state_dict(),
                                                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                                                    "epoch": epoch, "step": step, "config": asdict(p),
                                                    "precision": precision, "rng": rng})
            if stop and step < total_steps:
                time_limit.requeue_and_wait(requeue=info.main)
    if info.main:
        progress.close()
        log_file.close()
    del net
    return model
