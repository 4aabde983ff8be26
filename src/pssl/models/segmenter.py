"""Segmentation models: one factory over timm backbones and the paper's three heads.

    build_segmenter("pspnet", "resnet50", num_classes)       PSPNet, dilated ResNet-50 (output stride 8)
    build_segmenter("deeplabv3", "resnest50d", num_classes)  DeepLabV3 (torchvision's ASPP head), dilated ResNeSt
    build_segmenter("ocrnet", "hrnet_w18", num_classes)      OCRNet on HRNetV2 (all branches concatenated)

Every model returns {"out": logits at input resolution, "aux": auxiliary logits (training only)}.
Heads register themselves in HEADS (timm-style); each lives in its own small module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    def wrap(cls):
        HEADS[name] = cls
        return cls
    return wrap


def conv_bn_relu(c_in: int, c_out: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FCNAuxHead(nn.Sequential):
    """The usual auxiliary head on the third stage (deep supervision, weight 0.4 in the loss)."""

    def __init__(self, c_in: int, num_classes: int):
        super().__init__(conv_bn_relu(c_in, max(c_in // 4, 32)), nn.Dropout2d(0.1),
                         nn.Conv2d(max(c_in // 4, 32), num_classes, 1))


def backbone(name: str, pretrained: bool = False) -> nn.Module:
    """A timm features_only backbone: dilated to stride 8 for the ResNet family, raw branches for HRNet."""
    import timm
    if name.startswith("hrnet"):
        return timm.create_model(name, features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                                 pretrained=pretrained)
    return timm.create_model(name, features_only=True, output_stride=8, out_indices=(1, 2, 3, 4),
                             pretrained=pretrained)


class Segmenter(nn.Module):
    """Takes pixels in [0, 1] (like the zoo classifiers) and applies the backbone's normalisation itself.

    Inputs of any size work: they are zero-padded to a multiple of the backbone's total stride (HRNet's
    branches need multiples of 32) and the logits are cropped back.
    """

    def __init__(self, head_name: str, backbone_name: str, num_classes: int, pretrained_backbone: bool = False):
        super().__init__()
        import timm.data
        self.head_name, self.backbone_name, self.num_classes = head_name, backbone_name, num_classes
        self.backbone = backbone(backbone_name, pretrained_backbone)
        self.head = HEADS[head_name](self.backbone.feature_info.channels(), num_classes)
        cfg = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.stride = 32 if backbone_name.startswith("hrnet") else max(self.backbone.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        pad_h, pad_w = (-size[0]) % self.stride, (-size[1]) % self.stride
        x = F.pad((x - self.mean) / self.std, (0, pad_w, 0, pad_h))
        padded = x.shape[-2:]
        out = {k: F.interpolate(v, size=padded, mode="bilinear", align_corners=False)[..., :size[0], :size[1]]
               for k, v in self.head(self.backbone(x)).items()}
        result = {"out": out["out"]}
        if self.training and "aux" in out:
            result["aux"] = out["aux"]
        return result

    def classifier_layers(self) -> list[nn.Conv2d]:
        """The final per-class layers (main and auxiliary), re-initialised when fine-tuning on new classes."""
        return self.head.classifier_layers()


def build_segmenter(head: str, backbone_name: str, num_classes: int, pretrained_backbone: bool = False
                    ) -> Segmenter:
    _ensure_heads_registered()
    if head not in HEADS:
        raise ValueError(f"unknown segmentation head {head!r}; known: {', '.join(sorted(HEADS))}")
    return Segmenter(head, backbone_name, num_classes, pretrained_backbone)


def _ensure_heads_registered() -> None:
    from pssl.models import deeplabv3, ocrnet, pspnet  # noqa: F401  (imports register the heads)


def load_backbone_weights(model: Segmenter, classifier_state: dict) -> tuple[int, int]:
    """Copy a classifier's weights (same timm architecture) into the backbone; returns (loaded, expected).

    timm's features_only wrappers keep the classifier's parameter names, so keys match one to one; the
    classifier's own head (fc / classifier) has no counterpart and is left out.
    """
    own = model.backbone.state_dict()
    matched = {k: v for k, v in classifier_state.items() if k in own and own[k].shape == v.shape}
    model.backbone.load_state_dict(matched, strict=False)
    return len(matched), len(own)
