"""The explain job for one shard: decode, SmoothGrad every classifier, ensemble, deciles, store.

Class identity (pssl.classes): the target of every image is a class of the run's space, written into the
store's attrs `classes`; each classifier explains its own output of that class, found by name, so a tree of
any ImageNet subset explains the right classes, and a class some classifier does not know stops the job
before any work.

Resumable: rows are written batch by batch into `.<name>.partial` beside the output; a rerun with the same
parameters continues at the first unfinished batch and the finished store is renamed into place. Batches
sit at fixed positions of the shard and each one seeds the noise from (seed, first image id), so a resumed
store is identical to an uninterrupted one.

Speed, decided once per store on its first images and recorded in its attrs (a resumed job reuses them):
the sample chunk of every model (`chunking`, for `sample_chunk: auto`), and with `precision: auto` on
hardware with native bf16 whether bf16 is used: only if the ensemble's D9 mask in bf16 matches fp32's with
identical noise at IoU >= 0.98 (CLARIFICATIONS.md). The labels' own stability is measured on the same images
and recorded (`stability`: D9 IoU of two fp32 runs with different noise), a quality figure of the store. Models and inputs are channels_last on every device, and
each model's input layer stays fp32 (`prepare_classifier`).
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
from pssl.classes import columns, run_space
from pssl.data.shard_images import ShardBatches
from pssl.device import allocation, native_bf16, resolve_device
from pssl.explain.chunking import resolve_chunks
from pssl.explain.deciles import to_deciles
from pssl.explain.smoothgrad import TargetScore, prepare_classifier, saliency_map, smoothgrad
from pssl.models.zoo import ensemble_softmax, load_classifier
from pssl.progress import Progress
from pssl.settings import ExplainSettings, output_identity
from pssl.tables import read_table
from pssl.time_limit import TimeLimit

log = logging.getLogger(__name__)


def config_hash(settings: ExplainSettings, zoo_records: list[dict], zoo_paths: list[str], classes: list[str]) -> str:
    """What decides the store's content: parameters, each classifier's identity and file size, the classes."""
    ident = [(r["name"], r["arch"], Path(p).stat().st_size) for r, p in zip(zoo_records, zoo_paths)]
    return hashlib.sha256(json.dumps([output_identity(settings), ident, classes], sort_keys=True).encode()
                          ).hexdigest()[:16]


def noise_seed(seed: int, first_image_id: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{first_image_id}".encode()).digest()[:7], "little")


def explain_targets(scorers: list[TargetScore], images: torch.Tensor, class_idx: torch.Tensor,
                    mode: str) -> torch.Tensor:
    """One target per image, a class of the run's space (the scorers' columns): the label ('class'), or the
    zoo's top-1 ('top1', and for unlabelled rows, class_idx -1)."""
    if mode == "class" and bool((class_idx >= 0).all()):
        return class_idx
    predicted = ensemble_softmax([s.classifier for s in scorers], images, [s.columns for s in scorers]).argmax(dim=1)
    return predicted if mode == "top1" else torch.where(class_idx < 0, predicted, class_idx)


def explain_batch(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                  settings: ExplainSettings, bf16: bool, chunks: list[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ensemble deciles (B, S, S) and, if kept, per-model deciles (B, M, S, S).

    Eq. 1: S = 1/M sum_i minmax(|SmoothGrad_i| summed over RGB); eq. 2: deciles of S. `chunks`: each model's
    samples per forward (default: settings.sample_chunk, which must then be a number).
    """
    if chunks is None:
        if settings.sample_chunk == "auto":
            raise ValueError("sample_chunk 'auto' is resolved per model first (pssl.explain.chunking)")
        chunks = [int(settings.sample_chunk)] * len(scorers)
    ensemble = torch.zeros(images.shape[0], images.shape[2], images.shape[3], device=images.device)
    per_model = []
    for scorer, chunk in zip(scorers, chunks):
        sal = saliency_map(smoothgrad(scorer, images, targets, settings.n_samples, settings.noise_level, chunk, bf16))
        ensemble += sal
        if settings.keep_model_deciles:
            per_model.append(to_deciles(sal))
    ensemble /= len(scorers)
    return to_deciles(ensemble), (torch.stack(per_model, dim=1) if per_model else None)


BF16_MIN_D9_IOU = 0.98  # CLARIFICATIONS.md


def d9_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of the decile-9 masks of two decile maps."""
    nine_a, nine_b = a == 9, b == 9
    return float((nine_a & nine_b).sum()) / max(int((nine_a | nine_b).sum()), 1)


def explain_seeded(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                   settings: ExplainSettings, chunks: list[int], seed: int, bf16: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    return explain_batch(scorers, images, targets, settings, bf16, chunks)[0]


def check_bf16(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor, settings: ExplainSettings,
               chunks: list[int], seed: int) -> dict:
    """Explain `images` in fp32 and in bf16 with identical noise; bf16 passes if the D9 IoU is >= 0.98."""
    fp32, bf16 = (explain_seeded(scorers, images, targets, settings, chunks, seed, bf16) for bf16 in (False, True))
    iou = d9_iou(fp32, bf16)
    return {"images": images.shape[0], "d9_iou": round(iou, 4), "min_d9_iou": BF16_MIN_D9_IOU,
            "decile_agreement": round(float((fp32 == bf16).float().mean()), 4),
            "passed": iou >= BF16_MIN_D9_IOU}


STABILITY_IMAGES = 8  # two extra explanations of this many images per store: a figure, not a benchmark


def measure_stability(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                      settings: ExplainSettings, chunks: list[int], seeds: tuple[int, int], bf16: bool) -> dict:
    """D9 IoU of two explanations of the same images with different noise: how far SmoothGrad's sampling alone
    moves the pseudo labels (at the store's own precision and samples)."""
    images, targets = images[:STABILITY_IMAGES], targets[:STABILITY_IMAGES]
    a, b = (explain_seeded(scorers, images, targets, settings, chunks, seed, bf16) for seed in seeds)
    return {"images": images.shape[0], "d9_iou": round(d9_iou(a, b), 4),
            "decile_agreement": round(float((a == b).float().mean()), 4)}


def decide_speed(scorers: list[TargetScore], names: list[str], images: torch.Tensor, class_idx: torch.Tensor,
                 settings: ExplainSettings, seed: int, known: dict) -> dict:
    """Precision and per-model chunks for this store, and the labels' stability: `known` (a resumed store's
    attrs) or decided and measured on `images`."""
    keys = ("precision_used", "precision_check", "sample_chunks", "stability")
    if "precision_used" in known and "sample_chunks" in known:
        return {k: known[k] for k in keys if k in known}
    dev = images.device
    targets = explain_targets(scorers, images, class_idx, settings.target)
    budget = settings.memory_budget_gb

    def resolve(bf16: bool) -> dict:
        return resolve_chunks(names, scorers, images, targets, settings.sample_chunk, settings.n_samples,
                              settings.noise_level, bf16, budget)
    chunks = resolve(settings.precision == "bf16")
    decision = {"precision_used": settings.precision if settings.precision != "auto" else "fp32",
                "sample_chunks": chunks}
    if settings.precision == "auto" and native_bf16(dev):
        check = check_bf16(scorers, images, targets, settings, [chunks[n]["chunk"] for n in names], seed)
        log.info(f"bf16 check on {check['images']} images: D9 IoU with fp32 {check['d9_iou']} "
                 f"(needs {BF16_MIN_D9_IOU}), decile agreement {check['decile_agreement']}: "
                 f"{'bf16' if check['passed'] else 'fp32'}")
        decision["precision_check"] = check
        if check["passed"]:
            decision.update(precision_used="bf16", sample_chunks=resolve(True))
    decision["stability"] = measure_stability(
        scorers, images, targets, settings, [decision["sample_chunks"][n]["chunk"] for n in names],
        (seed, seed + 1), decision["precision_used"] == "bf16")
    log.info(f"label stability: D9 IoU {decision['stability']['d9_iou']} between two noise draws on "
             f"{decision['stability']['images']} images")
    return decision


def to_input(images: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float [0, 1], channels_last."""
    return images.to(dev).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def first_images(batches: ShardBatches, class_idx: torch.Tensor, dev: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first readable images of the pending batches, to measure speed and precision on (None: none)."""
    for i in range(len(batches)):
        start, stop, images, _, reasons = batches[i]
        if len(images):
            ok = torch.tensor([j not in reasons for j in range(stop - start)])
            return to_input(images, dev), class_idx[start:stop][ok].to(dev)
    return None


def explain_shard(shard: str | Path, zoo_paths: list[str], out: str | Path, settings: ExplainSettings,
                  device: str = "auto", requeue_margin_min: float = 15.0) -> dict:
    t0 = time.monotonic()
    out = Path(out)
    dev = resolve_device(device)
    frame, meta = read_table(shard)
    root = Path(meta["root"])
    loaded = [load_classifier(path, dev) for path in zoo_paths]
    records = [record for _, record in loaded]
    classes = run_space(meta["classes"], records, use_labels=settings.target == "class")
    scorers = [TargetScore(prepare_classifier(model), settings.output,
                           columns(classes, record["classes"], f"classifier {record['name']!r}")).to(dev)
               for model, record in loaded]
    digest = config_hash(settings, records, zoo_paths, classes)
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
                 "classes": classes, "smoothgrad": output_identity(settings), "config_hash": digest,
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
    class_idx_all = torch.tensor(frame["class_idx"].to_numpy(), dtype=torch.long)
    image_ids = frame["image_id"].to_numpy()
    batches = ShardBatches(root, frame["relpath"].tolist(), settings.batch_size, settings.image_size, pending)
    names = [r["name"] for r in records]
    fallback = settings.n_samples if settings.sample_chunk == "auto" else settings.sample_chunk
    speed = {"precision_used": "fp32", "sample_chunks": {name: {"chunk": int(fallback)} for name in names}}
    first = first_images(batches, class_idx_all, dev) if pending else None
    if first is not None:
        speed = decide_speed(scorers, names, *first, settings, noise_seed(settings.seed, -1), dict(group.attrs))
        group.attrs.update(speed)
    bf16 = speed["precision_used"] == "bf16"
    chunks = [speed["sample_chunks"][name]["chunk"] for name in names]
    log.info(f"{Path(shard).stem}: {n} images, {len(scorers)} models, {len(pending)}/{n_batches} batches to do "
             f"on {dev} ({speed['precision_used']}, samples per forward {chunks}), {allocation()}")
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=settings.num_workers)
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
                x = to_input(images, dev)
                targets = explain_targets(scorers, x, class_idx_all[start:stop][ok].to(dev), settings.target)
                ens, per_model = explain_batch(scorers, x, targets, settings, bf16, chunks)
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
