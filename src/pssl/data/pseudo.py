"""The pseudo-labelled pre-training set: images + label maps derived on the fly from deciles and labels.

Label map: pixels with decile >= decile_threshold get the image's label, the rest the background class K;
deciles listed in ignore_deciles become ignore (-1). The augmentation (`transforms.CropAugment`) samples
the S x S map with nearest neighbour straight into the crop, and fills padding as ignore (or, with pad_label
background, as the background class).

Label source (pssl.data.label_sources): the foreground of a label map is the image's own D >= threshold region
(the method) or a control's: its true object mask (oracle), another image's region (shuffled), or a centred
ellipse of its region's area (centre). ignore_deciles apply to decile regions only (deciles, shuffled).

Label mode `fused` (PseudoSeg, pssl.train.fusion) yields fused views instead: a weak view (scale, crop and
flip, as the authors' weak augmentation: no rotation), a strong view of the same crop (pssl.data.strong_view:
the authors' colour jitter and one CutOut square, no geometric change), the prior's strength s warped
bilinearly with the same geometry, the image's class, and the pixels the loss counts: not padding (whatever
pad_label says: the authors' code divides by "the number of pixels excluding padding"), ignored deciles or
CutOut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pssl import store
from pssl.data.label_sources import derangement, foreground, mask_path, read_object_mask
from pssl.data.strong_view import draw_strong, strong_view
from pssl.data.transforms import CropAugment, augment, sample_generator, to_tensor
from pssl.errors import InputError
from pssl.tables import read_table

log = logging.getLogger(__name__)
PSEUDO_IGNORE = -1  # label of pixels the pre-training loss skips (ignored deciles, padding)


def prior_strength(prior: str, deciles: np.ndarray, model_deciles: np.ndarray | None = None) -> np.ndarray:
    """s in [0, 1] per pixel (fusion_prior): D / 9 (deciles), 1 on D9 and 0 elsewhere (d9), or the fraction of
    models whose own decile is 9 (models, from `model_deciles`)."""
    if prior == "models":
        return (model_deciles == 9).mean(axis=0, dtype=np.float32)
    if prior == "d9":
        return (deciles == 9).astype(np.float32)
    if prior == "deciles":
        return deciles.astype(np.float32) / 9.0
    raise InputError(f"fusion_prior must be deciles, d9 or models, got {prior!r}")


def check_prior(prior: str, groups) -> str:
    if prior == "models" and not all("model_deciles" in g for g in groups):
        raise InputError("fusion_prior models needs per-model deciles: explain with keep_model_deciles true")
    return prior


def label_map(deciles: np.ndarray, label: int, background: int, threshold: int = 9,
              ignore_deciles: tuple[int, ...] = ()) -> np.ndarray:
    """(S, S) deciles -> int64 label map: label where D >= threshold, background elsewhere, -1 for ignored deciles."""
    out = np.where(deciles >= threshold, label, background).astype(np.int64)
    if ignore_deciles:
        out[np.isin(deciles, ignore_deciles)] = PSEUDO_IGNORE
    return out


@dataclass(frozen=True)
class Sample:
    relpath: str
    store: int
    row: int
    label: int


def nested_subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """The first n samples of one fixed random order (by image, from `seed`), in their original order: a
    smaller subset is always inside a larger one (PSSL-50K inside PSSL-200K, as the paper's Table 2 needs)."""
    if n >= len(samples):
        if n > len(samples):
            log.warning("asked for %d pseudo-labelled images, %d are usable: using all", n, len(samples))
        return samples
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in np.sort(order[:n])]


class PseudoLabelDataset(torch.utils.data.Dataset):
    def __init__(self, stores: list[str], labels: list[str], num_classes: int, crop: int,
                 decile_threshold: int = 9, ignore_deciles: tuple[int, ...] = (), seed: int = 0,
                 pad_label: str = "ignore", images: int = 0, fused: bool = False, fusion_prior: str = "deciles",
                 cutout: float = 0.1, label_source: str = "deciles", masks_root: str | None = None):
        self.background = num_classes  # class K: the segmentation head has K + 1 outputs
        if label_source != "deciles" and fused:
            raise InputError(f"label_source {label_source} is a control of the hard label maps: use label_mode hard")
        if label_source == "oracle" and not masks_root:
            raise InputError("label_source oracle needs the object masks: set imagenet_masks_root")
        self.label_source, self.masks_root = label_source, masks_root
        self.threshold, self.ignore_deciles, self.seed = decile_threshold, tuple(ignore_deciles), seed
        if pad_label not in ("ignore", "background"):
            raise InputError(f"pad_label must be 'ignore' or 'background', got {pad_label!r}")
        self.fused, self.cutout = fused, cutout
        # Padding from the crop and the rotation: ignored, or background as in the authors' code at the paper.
        # Fused views: the weak view is PseudoSeg's (scale, crop, flip) and padding never counts.
        self.transform = CropAugment(crop, mask_fill=PSEUDO_IGNORE if pad_label == "ignore" or fused
                                     else self.background, heavy=not fused)
        self.epoch = 0
        self.store_paths = list(stores)
        self.samples: list[Sample] = []
        roots = set()
        skipped = {"not kept": 0, "not explained": 0, **({"no mask": 0} if label_source == "oracle" else {})}
        for s, (store_path, label_path) in enumerate(zip(stores, labels)):
            table, meta = read_table(label_path)
            group = store.open_store(store_path)
            shard, _ = read_table(group.attrs["shard_table"])
            roots.add(meta["root"])
            if not np.array_equal(table["image_id"].to_numpy(), group["image_id"][:]):
                raise InputError(f"{label_path} and {store_path} list different images")
            done = group["status"][:] == store.DONE
            for row, (keep, label, relpath) in enumerate(zip(table["keep"], table["label"], shard["relpath"])):
                if not done[row]:
                    skipped["not explained"] += 1
                elif not keep:
                    skipped["not kept"] += 1
                elif label_source == "oracle" and not mask_path(masks_root, relpath).is_file():
                    skipped["no mask"] += 1
                else:
                    self.samples.append(Sample(relpath, s, row, int(label)))
        if len(roots) != 1:
            raise InputError(f"label tables point at several image roots: {sorted(roots)}")
        if images:
            self.samples = nested_subset(self.samples, images, seed)
        self.root = Path(roots.pop())
        self.partner = derangement(len(self.samples), seed) if label_source == "shuffled" else None
        self.skipped = skipped
        self._groups = None  # opened lazily, per worker process
        self.prior = check_prior(fusion_prior, self.groups()) if fused else None
        self._groups = None
        log.info("pseudo-labelled set: %d images used%s, labels from %s, skipped %s", len(self.samples),
                 f" (the first {images} of a fixed random order)" if images else "", label_source, skipped)
        if not self.samples:
            raise InputError("no pseudo-labelled image is usable (all dropped by the label policy or unexplained)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def groups(self) -> list:
        if self._groups is None:
            self._groups = [store.open_store(p) for p in self.store_paths]
        return self._groups

    def deciles(self, i: int) -> np.ndarray:
        s = self.samples[i]
        return self.groups()[s.store]["deciles"][s.row]

    def target(self, i: int) -> tuple[Path, np.ndarray]:
        """(image path, S x S label map) of sample i, before augmentation."""
        s = self.samples[i]
        path, deciles = self.root / s.relpath, self.deciles(i)
        if self.label_source in ("deciles", "shuffled"):
            region = deciles if self.label_source == "deciles" else self.deciles(int(self.partner[i]))
            return path, label_map(region, s.label, self.background, self.threshold, self.ignore_deciles)
        mask = read_object_mask(mask_path(self.masks_root, s.relpath), deciles.shape[0]) \
            if self.label_source == "oracle" else None
        fg = foreground(self.label_source, deciles, self.threshold, mask=mask)
        return path, np.where(fg == 1, s.label, np.where(fg < 0, PSEUDO_IGNORE, self.background)).astype(np.int64)

    def strength(self, i: int) -> np.ndarray:
        """The fused mode's prior strength s (S x S) of sample i."""
        s, group = self.samples[i], self.groups()[self.samples[i].store]
        models = group["model_deciles"][s.row] if self.prior == "models" else None
        return prior_strength(self.prior, group["deciles"][s.row], models)

    def __getitem__(self, i: int):
        path, labels = self.target(i)
        if not self.fused:
            return augment(self.transform, path, labels, self.seed, self.epoch, i)
        return self.fused_views(i, path, labels)

    def fused_views(self, i: int, path: Path, labels: np.ndarray) -> dict:
        g = sample_generator(self.seed, self.epoch, i)
        _, crop_to_labels, rgb, mask = self.transform.geometry(path, labels, g)
        weak = rgb.astype(np.float32) / 255.0
        strong, cut = strong_view(weak, draw_strong(g, self.transform.crop, self.cutout))
        valid = (mask != PSEUDO_IGNORE) & ~cut
        strength = self.transform.warp_values(self.strength(i), crop_to_labels, 0.0)
        return {"weak": to_tensor(weak), "strong": to_tensor(strong), "strength": torch.from_numpy(strength),
                "label": self.samples[i].label, "valid": torch.from_numpy(valid)}
