"""Starting weights of a segmentation model: a classifier's backbone ("ImageNet init") or a pre-trained
segmentation model without its per-class layers ("PSSL init")."""

from __future__ import annotations

from pathlib import Path

import torch

from pssl.errors import InputError
from pssl.models.catalog import TRANSFERS
from pssl.models.segmenter import Segmenter


def load_backbone_weights(model: Segmenter, classifier_state: dict) -> tuple[int, int]:
    """Copy a classifier's weights (same timm architecture) into the backbone; returns (loaded, expected).

    timm's features_only wrappers keep the classifier's parameter names, so keys match one to one; the
    classifier's own head (fc / classifier) has no counterpart and is left out.
    """
    own = model.backbone.state_dict()
    matched = {k: v for k, v in classifier_state.items() if k in own and own[k].shape == v.shape}
    model.backbone.load_state_dict(matched, strict=False)
    return len(matched), len(own)


def init_backbone_from(model, classifier_path: str | None) -> str:
    """Load a zoo classifier of the backbone's architecture into the backbone ('ImageNet init')."""
    if not classifier_path:
        return "random"
    record = torch.load(classifier_path, map_location="cpu", weights_only=True)
    loaded, expected = load_backbone_weights(model, record["state_dict"])
    if loaded < 0.9 * expected:
        raise InputError(f"{classifier_path} ({record['arch']}) fits only {loaded}/{expected} tensors of the "
                         f"{model.backbone_name} backbone: use a classifier of the same architecture")
    return f"{Path(classifier_path).name} ({loaded}/{expected} tensors)"


def init_from_pretrained(model: Segmenter, checkpoint: str, transfer: str = "full") -> str:
    """Load a PSSL pre-trained model into `model`: everything but its per-class layers (transfer full, the
    paper's: backbone + segmentation module), or its backbone alone (transfer backbone: the head starts fresh,
    as from an ImageNet classifier). The layers not loaded stay freshly initialised."""
    if transfer not in TRANSFERS:
        raise InputError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    record = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = record["config"]
    if (cfg["head"], cfg["backbone"]) != (model.head_name, model.backbone_name):
        raise InputError(f"{checkpoint} is a {cfg['head']}-{cfg['backbone']}, not a "
                         f"{model.head_name}-{model.backbone_name}")
    if transfer == "full":
        fresh = {id(p) for layer in model.classifier_layers() for p in layer.parameters()}
        skip = {name for name, p in model.named_parameters() if id(p) in fresh}
    else:
        skip = {name for name in model.state_dict() if not name.startswith("backbone.")}
    state = {k: v for k, v in record["model"].items() if k not in skip}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - skip or unexpected:  # what was not skipped must load, and nothing be left over
        raise InputError(f"{checkpoint}: unexpected checkpoint layout (missing {sorted(set(missing) - skip)}, "
                         f"unexpected {unexpected})")
    source = Path(checkpoint).parent
    return f"{source.parent.name}/{source.name} ({transfer}: {len(state)} tensors, {len(skip)} fresh)"


def init_classifier(model: Segmenter, std: float) -> None:
    """The fresh per-class layers (main and auxiliary) from N(0, std^2) weights and zero biases, as
    mmsegmentation starts its conv_seg (std 0.01): the first fine-tuning steps then send little gradient back
    into a transferred segmentation module (std 0: none at the first step)."""
    for layer in model.classifier_layers():
        torch.nn.init.normal_(layer.weight, 0.0, std)
        torch.nn.init.zeros_(layer.bias)
