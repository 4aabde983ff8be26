"""The segmentation heads by name, torch-free: the CLI, the workflow rules and the config schema's test read
these names and titles without importing torch; the head classes register themselves against them."""

from __future__ import annotations

# name -> the title tables and figures use. A new head adds its line here and its module in pssl/models/heads/.
HEAD_TITLES = {"pspnet": "PSPNet", "deeplabv3": "DeepLabV3", "ocrnet": "OCRNet"}
HEAD_NAMES = list(HEAD_TITLES)
# What a PSSL init carries into fine-tuning: all but the per-class layers (the paper's), or the backbone alone.
TRANSFERS = ("full", "backbone")

HEAD_CLASSES: dict[str, type] = {}


def register_head(name: str):
    """Class decorator: the head `name` (one of HEAD_TITLES) is built by this class."""
    if name not in HEAD_TITLES:
        raise ValueError(f"head {name!r} has no entry in pssl.models.catalog.HEAD_TITLES")

    def wrap(cls):
        cls.name, cls.title = name, HEAD_TITLES[name]
        HEAD_CLASSES[name] = cls
        return cls
    return wrap


def model_title(head: str, backbone: str) -> str:
    """'PSPNet-resnet50': a segmentation model's name in tables."""
    return f"{HEAD_TITLES[head]}-{backbone}"
