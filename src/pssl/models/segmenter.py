"""Segmentation models: one factory over timm backbones and the paper's three heads.

    build_segmenter("pspnet", "resnet50", num_classes)       PSPNet, dilated ResNet-50 (output stride 8)
    build_segmenter("deeplabv3", "resnest50d", num_classes)  DeepLabV3 (torchvision's ASPP head), dilated ResNeSt
    build_segmenter("ocrnet", "hrnet_w18", num_classes)      OCRNet on HRNetV2 (all branches concatenated)

Every model returns {"out": logits at input resolution, "aux": auxiliary logits (training only)}.
Heads register themselves by name (pssl.models.catalog, timm-style); each lives in pssl/models/heads/.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pssl.errors import InputError
from pssl.models import heads  # noqa: F401  (registers every head)
from pssl.models.catalog import HEAD_CLASSES


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
        if head_name not in HEAD_CLASSES:
            raise InputError(f"unknown segmentation head {head_name!r}; known: {', '.join(HEAD_CLASSES)}")
        self.head_name, self.backbone_name, self.num_classes = head_name, backbone_name, num_classes
        self.backbone = backbone(backbone_name, pretrained_backbone)
        self.head = HEAD_CLASSES[head_name](self.backbone.feature_info.channels(), num_classes)
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier sees, at the head's resolution (1/8 of the input; HRNet's 1/4), the input
        zero-padded to a multiple of `stride` as in `forward` and the features cropped back: the input's
        height and width must be multiples of that resolution's step."""
        size = x.shape[-2:]
        x = F.pad((x - self.mean) / self.std, (0, (-size[1]) % self.stride, 0, (-size[0]) % self.stride))
        features = self.head.features(self.backbone(x))
        step = x.shape[-1] // features.shape[-1]
        if size[0] % step or size[1] % step:
            raise InputError(f"features of a {tuple(size)} input: {self.backbone_name}'s head sees 1/{step} of it, "
                             f"so its sides must be multiples of {step}")
        return features[..., :size[0] // step, :size[1] // step]

    def classifier_layers(self) -> list[nn.Conv2d]:
        """The final per-class layers (main and auxiliary), re-initialised when fine-tuning on new classes."""
        return self.head.classifier_layers()


def build_segmenter(head: str, backbone_name: str, num_classes: int, pretrained_backbone: bool = False
                    ) -> Segmenter:
    return Segmenter(head, backbone_name, num_classes, pretrained_backbone)


