"""Class identity by name. A class number means nothing without the list it indexes, so every artifact that
holds class numbers carries that list (wnids, in order), and numbers cross from one artifact to another only
through the names:

  index.parquet / shards   meta `classes`: the sorted class folders; `class_idx` is a position in it
  zoo/<name>.pt            record `classes`: output j of the classifier is classes[j] (timm's ImageNet-1k
                           classifiers: the 1000 ILSVRC-2012 wnids, sorted; one trained on the index: its classes)
  explain/<shard>.zarr     attrs `classes`: what `target` (the class explained) indexes
  labels/<shard>.parquet   meta `classes`: what gt_class, teacher_class and label index; the pre-training space
  pretrain/.../final.pt    config `classes`: output j < K is classes[j], output K is background

The run's class space (explain targets, label tables) is the index's classes when the job uses the labels
(an index of any subset of ImageNet, or a tree with a folder no classifier knows, maps by name or stops);
without labels (explain target top1, label policy teacher, an unlabelled index) it is the zoo's classes.
"""

from __future__ import annotations

import numpy as np

from pssl.errors import InputError


class ClassSpaceError(InputError):
    """A class a model does not know: a wrong tree or zoo, reported before any work."""


def timm_classes(model) -> list[str]:
    """The wnids of a timm classifier's outputs, in order, from timm's own ImageNet metadata (offline)."""
    import timm.data
    subset = timm.data.infer_imagenet_subset(model)
    if subset is None:
        raise ClassSpaceError(f"timm cannot tell which classes the {model.num_classes} outputs of "
                              f"{model.default_cfg.get('architecture', type(model).__name__)} are (not an "
                              f"ImageNet-1k/22k classifier): give the zoo entry a `classes` file")
    return list(timm.data.ImageNetInfo(subset).label_names())


def record_classes(record: dict) -> list[str]:
    """A zoo record's output classes."""
    if "classes" not in record:
        raise ClassSpaceError(f"zoo record {record.get('name')!r} names no output classes (written by an older "
                              f"version): rebuild it (snakemake --forcerun zoo_model)")
    return list(record["classes"])


def columns(space: list[str], classes: list[str], owner: str) -> np.ndarray:
    """Position in `classes` (a model's outputs) of every class of `space`; a class the model does not know
    stops here, named with the model."""
    position = {wnid: j for j, wnid in enumerate(classes)}
    missing = [wnid for wnid in space if wnid not in position]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ClassSpaceError(f"class {missing[0]}{more} is not among the {len(classes)} classes of {owner}")
    return np.array([position[wnid] for wnid in space], dtype=np.int64)


def run_space(index_classes: list[str], records: list[dict], use_labels: bool) -> list[str]:
    """The class space of a job over `records`' classifiers: the index's classes when the job uses the labels
    (and the index has any), else the first classifier's. Every classifier must know every class of it."""
    space = list(index_classes) if use_labels and index_classes else record_classes(records[0])
    for record in records:
        columns(space, record_classes(record), f"classifier {record['name']!r}")
    return space


def remap(values: np.ndarray, source: list[str], target: list[str], owner: str | None) -> np.ndarray:
    """Class numbers of `source` as numbers of `target` (negative values, "no class", stay as they are). A
    class `target` lacks stops here, named with `owner`; with owner None it becomes -1 (no class) instead."""
    values = np.asarray(values, dtype=np.int64)
    if not (values >= 0).any():  # nothing to map (an unlabelled index has no classes at all)
        return values
    position = {wnid: j for j, wnid in enumerate(target)}
    used = np.unique(values[values >= 0])
    if owner is not None:
        columns([source[i] for i in used], target, owner)
    lookup = np.full(len(source), -1, dtype=np.int64)
    lookup[used] = [position.get(source[i], -1) for i in used]
    return np.where(values >= 0, lookup[np.maximum(values, 0)], values)
