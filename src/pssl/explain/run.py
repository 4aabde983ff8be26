"""The explain job for one shard: decode, SmoothGrad every classifier, ensemble, deciles, store.

Resumable: rows are written batch by batch into `.<name>.partial` beside the output; a rerun with the same
parameters continues at the first unfinished batch and the finished store is renamed into place. Batches
sit at fixed positions of the shard and each one seeds the noise from (seed, first image id), so a resumed
store is identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pssl import store
from pssl.data.shard_images import ShardBatches
from pssl.device import allocation, precision_for, resolve_device
from pssl.explain.deciles import to_deciles
from pssl.explain.smoothgrad import TargetScore, saliency_map, smoothgrad
from pssl.models.zoo import ensemble_softmax, load_classifier
from pssl.progress import Progress
from pssl.settings import ExplainSettings, output_identity
from pssl.tables import read_table
from pssl.time_limit import TimeLimit

log = logging.getLogger(__name__)


def config_hash(settings: ExplainSettings, zoo_records: list[dict], zoo_paths: list[str]) -> str:
    """What decides the store's content: parameters, and each classifier's identity and file size."""
    ident = [(r["name"], r["arch"], Path(p).stat().st_size) for r, p in zip(zoo_records, zoo_paths)]
    return hashlib.sha256(json.dumps([output_identity(settings), ident], sort_keys=True).encode()).hexdigest()[:16]


def noise_seed(seed: int, first_image_id: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{first_image_id}".encode()).digest()[:7], "little")


def explain_targets(scorers: list[TargetScore], images: torch.Tensor, class_idx: torch.Tensor,
                    mode: str) -> torch.Tensor:
    """One target per image for every model: the label ('class'), or the zoo's top-1 ('top1', and for
    unlabelled rows, class_idx -1)."""
    if mode == "class" and bool((class_idx >= 0).all()):
        return class_idx
    predicted = ensemble_softmax([s.classifier for s in scorers], images).argmax(dim=1)
    return predicted if mode == "top1" else torch.where(class_idx < 0, predicted, class_idx)


def explain_batch(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                  settings: ExplainSettings, bf16: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ensemble deciles (B, S, S) and, if kept, per-model deciles (B, M, S, S).

    Eq. 1: S = 1/M sum_i minmax(|SmoothGrad_i| summed over RGB); eq. 2: deciles of S.
    """
    ensemble = torch.zeros(images.shape[0], images.shape[2], images.shape[3], device=images.device)
    per_model = []
    for scorer in scorers:
        sal = saliency_map(smoothgrad(scorer, images, targets, settings.n_samples, settings.noise_level,
                                      settings.sample_chunk, bf16))
        ensemble += sal
        if settings.keep_model_deciles:
            per_model.append(to_deciles(sal))
    ensemble /= len(scorers)
    return to_deciles(ensemble), (torch.stack(per_model, dim=1) if per_model else None)


def explain_shard(shard: str | Path, zoo_paths: list[str], out: str | Path, settings: ExplainSettings,
                  device: str = "auto", requeue_margin_min: float = 15.0) -> dict:
    t0 = time.monotonic()
    out = Path(out)
    dev = resolve_device(device)
    bf16 = precision_for(dev, settings.precision, training=False) == "bf16"
    frame, meta = read_table(shard)
    root = Path(meta["root"])
    scorers, records = [], []
    for path in zoo_paths:
        model, record = load_classifier(path, dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        scorers.append(TargetScore(model, settings.output))
        records.append(record)
    digest = config_hash(settings, records, zoo_paths)
    partial = out.with_name(f".{out.name}.partial")
    group = None
    if partial.exists():
        try:
            group = store.open_store(partial, mode="r+")
            if group.attrs.get("config_hash") != digest:
                log.warning(f"{partial}: parameters changed since it was started; starting over")
                group = None
        except Exception as e:  # an unreadable partial store is rebuilt, never trusted
            log.warning(f"{partial}: cannot resume ({e}); starting over")
            group = None
    if group is None:
        shutil.rmtree(partial, ignore_errors=True)
        attrs = {"models": [{"name": r["name"], "arch": r["arch"], "source": r["source"]} for r in records],
                 "smoothgrad": output_identity(settings), "config_hash": digest,
                 "precision_used": "bf16" if bf16 else "fp32",
                 "explained_output": "softmax probability of the target class" if settings.output == "prob"
                 else "logit of the target class",
                 # InterpretDL resizes the short side to 224 and keeps the aspect ratio; squashing keeps one
                 # S x S input for every classifier (ViT / Swin need exactly 224 x 224).
                 "preprocessing": f"resized to {settings.image_size} x {settings.image_size} without keeping the "
                                  f"aspect ratio (no crop); deciles map back to the image by nearest neighbour",
                 "shard": Path(shard).stem, "shard_table": str(Path(shard).resolve()), "image_root": str(root)}
        group = store.create_store(partial, frame["image_id"].to_numpy(), frame["class_idx"].to_numpy(),
                                   settings.image_size, len(scorers), settings.keep_model_deciles, attrs)
    status = group["status"][:]
    n = len(frame)
    n_batches = -(-n // settings.batch_size)
    pending = [b for b in range(n_batches)
               if (status[b * settings.batch_size:(b + 1) * settings.batch_size] == store.PENDING).any()]
    log.info(f"{Path(shard).stem}: {n} images, {len(scorers)} models, {len(pending)}/{n_batches} batches to do "
             f"on {dev} ({'bf16' if bf16 else 'fp32'}), {allocation()}")
    class_idx_all = torch.tensor(frame["class_idx"].to_numpy(), dtype=torch.long)
    image_ids = frame["image_id"].to_numpy()
    loader = torch.utils.data.DataLoader(
        ShardBatches(root, frame["relpath"].tolist(), settings.batch_size, settings.image_size, pending),
        batch_size=None, num_workers=settings.num_workers)
    done_before = int((status != store.PENDING).sum())
    size = settings.image_size
    time_limit = TimeLimit(requeue_margin_min)
    with Progress(n, f"explain {Path(shard).stem}", initial=done_before) as progress:
        for start, stop, images, hw, reasons in loader:
            hw = np.asarray(hw, dtype=np.int32)  # the loader's collate turns arrays into tensors
            rows = stop - start
            ok = np.array([j not in reasons for j in range(rows)])
            deciles = np.zeros((rows, size, size), dtype=np.uint8)
            model_deciles = np.zeros((rows, len(scorers), size, size), dtype=np.uint8) \
                if settings.keep_model_deciles else None
            target = np.full(rows, -1, dtype=np.int16)
            if ok.any():
                torch.manual_seed(noise_seed(settings.seed, int(image_ids[start])))
                x = images.to(dev).float().div_(255.0)
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                targets = explain_targets(scorers, x, class_idx_all[start:stop][ok].to(dev), settings.target)
                ens, per_model = explain_batch(scorers, x, targets, settings, bf16)
                deciles[ok] = ens.cpu().numpy()
                target[ok] = targets.cpu().numpy()
                if model_deciles is not None:
                    model_deciles[ok] = per_model.cpu().numpy()
            store.write_rows(group, start, stop,
                             status=np.where(ok, store.DONE, store.UNREADABLE).astype(np.uint8),
                             orig_hw=hw, target=target, deciles=deciles, model_deciles=model_deciles,
                             unreadable={int(image_ids[start + j]): r for j, r in reasons.items()})
            progress.update(rows)
            time_limit.advance()
            if time_limit.expiring():  # every finished batch is in the partial store: the requeued job resumes
                time_limit.requeue_and_wait()
    final_status = group["status"][:]
    unreadable = int((final_status == store.UNREADABLE).sum())
    timing = dict(group.attrs.get("timing", {}))
    timing[f"run_{len(timing)}"] = {"seconds": round(time.monotonic() - t0, 2), "batches": len(pending),
                                    "device": str(dev)}
    group.attrs["timing"] = timing
    store.consolidate(partial)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log.info(f"{Path(shard).stem}: done, {n - unreadable} explained, {unreadable} unreadable"
             + (": " + "; ".join(f"{k}: {v}" for k, v in group.attrs["unreadable"].items()) if unreadable else ""))
    return {"images": n, "unreadable": unreadable}
