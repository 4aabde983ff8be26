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
the sample chunk of every model (`chunking`, for `sample_chunk: auto`) and the precision. The labels' own
stability is measured first (`stability`: the D9 IoU of two fp32 explanations of the first batch's first 8
images with different noise), a quality figure of the store and the yardstick of the precision gate: with
`precision: auto`, each reduced precision the hardware runs natively (bf16; TF32 on CUDA) explains the same
images with the first draw's noise, and passes if it moves the D9 mask at most half as far as the second
draw does (`precision_gate`); the first that passes is used, its speed measured and recorded. "fp32" is
IEEE fp32 on CUDA too: TF32 is used only where the gate chose it (`pssl.device.cuda_fp32_math`). Models and
inputs are channels_last on every device, and each model's input layer stays fp32 (`prepare_classifier`).
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
from pssl.device import allocation, cuda_fp32_math, explain_candidates, resolve_device
from pssl.errors import InputError
from pssl.explain.chunking import resolve_chunks
from pssl.explain.deciles import to_deciles
from pssl.explain.smoothgrad import TargetScore, prepare_classifier, saliency_map, smoothgrad
from pssl.job_state import resumable
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


def arithmetic(precision: str):
    """The CUDA fp32 math of a precision: TF32 for 'tf32'; IEEE for 'fp32', and for 'bf16', whose fp32
    remainder (the input layer, the softmax) is there to stay exact."""
    return cuda_fp32_math("tf32" if precision == "tf32" else "ieee")


def explain_batch(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                  settings: ExplainSettings, precision: str, chunks: list[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ensemble deciles (B, S, S) and, if kept, per-model deciles (B, M, S, S), in `precision` (fp32, bf16,
    tf32).

    Eq. 1: S = 1/M sum_i minmax(|SmoothGrad_i| summed over RGB); eq. 2: deciles of S. `chunks`: each model's
    samples per forward (default: settings.sample_chunk, which must then be a number).
    """
    if chunks is None:
        if settings.sample_chunk == "auto":
            raise ValueError("sample_chunk 'auto' is resolved per model first (pssl.explain.chunking)")
        chunks = [int(settings.sample_chunk)] * len(scorers)
    ensemble = torch.zeros(images.shape[0], images.shape[2], images.shape[3], device=images.device)
    per_model = []
    with arithmetic(precision):
        for scorer, chunk in zip(scorers, chunks):
            sal = saliency_map(smoothgrad(scorer, images, targets, settings.n_samples, settings.noise_level, chunk,
                                          precision == "bf16"))
            ensemble += sal
            if settings.keep_model_deciles:
                per_model.append(to_deciles(sal))
    ensemble /= len(scorers)
    return to_deciles(ensemble), (torch.stack(per_model, dim=1) if per_model else None)


def d9_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of the decile-9 masks of two decile maps."""
    nine_a, nine_b = a == 9, b == 9
    return float((nine_a & nine_b).sum()) / max(int((nine_a | nine_b).sum()), 1)


def explain_seeded(scorers: list[TargetScore], images: torch.Tensor, targets: torch.Tensor,
                   settings: ExplainSettings, chunks: list[int], seed: int, precision: str = "fp32") -> torch.Tensor:
    torch.manual_seed(seed)
    return explain_batch(scorers, images, targets, settings, precision, chunks)[0]


# A reduced precision may replace fp32 if it moves the D9 mask at most this fraction as far as a second noise
# draw moves fp32's. Two fp32 runs with different noise are equally valid labels, so their distance is the
# resolution of the method; bf16 or TF32 within half of it cannot be told from sampling. The Jaccard distance
# (1 - IoU) is a metric, so a reduced-precision store is within 1.5x the seed-to-seed distance of any fp32
# store at worst, and about 1.12x (sqrt(1 + 0.5^2)) where both perturb the saliency independently (measured
# on the demo zoo, benchmarks/README.md: bf16 0.5375 and fp32 0.5343 from another fp32 draw, 1.0x). The
# fixed bar it replaces (IoU >= 0.98) refused bf16 for three real ImageNet classifiers whose D9 masks it moved
# by 0.22-0.32 while a second noise draw moved fp32's by 0.57-0.66 (issue 29).
MAX_DEVIATION_RATIO = 0.5


def precision_gate(candidate_iou: float, seed_iou: float, ratio: float = MAX_DEVIATION_RATIO) -> dict:
    """A reduced precision against fp32: `candidate_iou` its D9 IoU with fp32 on identical noise, `seed_iou`
    fp32's with another noise draw. Passes if 1 - candidate_iou <= ratio x (1 - seed_iou); without noise
    (seed_iou 1) only an exact match passes."""
    deviation, noise = 1.0 - candidate_iou, 1.0 - seed_iou
    return {"d9_iou": round(candidate_iou, 4),
            "deviation_ratio": round(deviation / noise, 4) if noise > 0 else None,
            "passed": deviation <= ratio * noise}


STABILITY_IMAGES = 8  # explanations of this many images decide the precision: a figure, not a benchmark


def decide_speed(scorers: list[TargetScore], names: list[str], images: torch.Tensor, class_idx: torch.Tensor,
                 settings: ExplainSettings, seed: int, known: dict, candidates: list[str]) -> dict:
    """Precision and per-model chunks for this store, the labels' stability and the precisions' measured speed:
    `known` (a resumed store's attrs) or decided and measured on `images`. `candidates`: the reduced precisions
    `auto` may choose, in order of nominal speed (pssl.device.explain_candidates); the first that passes the
    gate is used. The choice does not follow the timings, which a loaded machine turns either way (the demo's
    first images timed bf16 at 0.8x and at 3.1x fp32's seconds in two runs minutes apart): the same config,
    seed and machine give the same store. The timings are recorded (`precision_speed`) and a slower choice is
    logged, for `precision: fp32` to pin."""
    keys = ("precision_used", "precision_check", "precision_speed", "sample_chunks", "stability")
    if "precision_used" in known and "sample_chunks" in known:
        return {k: known[k] for k in keys if k in known}
    targets = explain_targets(scorers, images, class_idx, settings.target)

    def resolve(precision: str) -> dict:
        with arithmetic(precision):
            return resolve_chunks(names, scorers, images, targets, settings.sample_chunk, settings.n_samples,
                                  settings.noise_level, precision == "bf16", settings.memory_budget_gb)
    base = "fp32" if settings.precision == "auto" else settings.precision
    chunks = resolve(base)
    few, few_targets = images[:STABILITY_IMAGES], targets[:STABILITY_IMAGES]
    runs: dict[str, list[float]] = {}

    def explain(precision: str, draw: int) -> torch.Tensor:
        """Explained at the base's chunks (no more memory than it), and timed."""
        synchronize(few.device)
        start = time.perf_counter()
        deciles = explain_seeded(scorers, few, few_targets, settings, [chunks[n]["chunk"] for n in names], draw,
                                 precision)
        synchronize(few.device)
        runs.setdefault(precision, []).append(time.perf_counter() - start)
        return deciles
    gated = candidates if settings.precision == "auto" else []
    reference = explain(base, seed)
    results = {precision: explain(precision, seed) for precision in gated}
    other = explain(base, seed + 1)
    for precision in gated:  # a second, warm run of each (its first had its kernels set up): the timing
        explain(precision, seed)
    seed_iou = d9_iou(reference, other)
    decision = {"precision_used": base, "sample_chunks": chunks,
                "stability": {"images": few.shape[0], "precision": base, "d9_iou": round(seed_iou, 4),
                              "decile_agreement": round(float((reference == other).float().mean()), 4)}}
    log.info(f"label stability: D9 IoU {decision['stability']['d9_iou']} between two noise draws on "
             f"{few.shape[0]} images ({base})")
    if gated:
        check = {"images": few.shape[0], "max_deviation_ratio": MAX_DEVIATION_RATIO,
                 "candidates": {p: {**precision_gate(d9_iou(reference, r), seed_iou),
                                    "decile_agreement": round(float((reference == r).float().mean()), 4)}
                                for p, r in results.items()}}
        # fp32: the faster of its two draws; a candidate: its warm run; per image, at fp32's chunks
        seconds = {p: round(min(t[1:] if p != base else t) / few.shape[0], 5) for p, t in runs.items()}
        chosen = next((p for p in gated if check["candidates"][p]["passed"]), base)
        decision.update(precision_used=chosen, precision_check=check,
                        precision_speed={"images": few.shape[0], "seconds_per_image": seconds},
                        sample_chunks=chunks if chosen == base else resolve(chosen))
        log.info(f"precision gate on {few.shape[0]} images (passes at most {MAX_DEVIATION_RATIO} of the noise's "
                 f"deviation): " + "; ".join(f"{p}: D9 IoU with fp32 {r['d9_iou']}, ratio {r['deviation_ratio']}"
                                             for p, r in check["candidates"].items())
                 + f"; seconds per image {seconds}: {chosen}")
        if seconds[chosen] > seconds[base]:
            log.warning(f"{chosen} passed the precision gate but ran {seconds[chosen] / seconds[base]:.2f}x as long "
                        f"as fp32 on these images; explain.precision: fp32 keeps fp32")
    return decision


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    candidates = explain_candidates(dev)
    if settings.precision == "tf32" and "tf32" not in candidates:
        raise InputError(f"precision tf32 needs a CUDA GPU of compute capability 8.0+ (TensorFloat-32 exists only "
                         f"there), not {dev}")
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
            # the store records its job's identity as one digest (attrs config_hash; pssl.job_state's rule)
            if not resumable({"config_hash": group.attrs.get("config_hash")}, {"config_hash": digest}, str(partial)):
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
        speed = decide_speed(scorers, names, *first, settings, noise_seed(settings.seed, -1), dict(group.attrs),
                             candidates)
        group.attrs.update(speed)
    precision = speed["precision_used"]
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
                ens, per_model = explain_batch(scorers, x, targets, settings, precision, chunks)
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
