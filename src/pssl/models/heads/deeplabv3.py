"""DeepLabV3 (Chen et al. 2017): torchvision's ASPP head on the last stage, plus an FCN auxiliary head."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from pssl.models.catalog import register_head
from pssl.models.layers import FCNAuxHead


@register_head("deeplabv3")
class DeepLabV3Head(nn.Module):
    def __init__(self, channels: list[int], num_classes: int):
        super().__init__()
        # torchvision's head: ASPP (rates 12, 24, 36 -> 256 channels), 3x3 conv, 1x1 classifier.
        self.head = DeepLabHead(channels[-1], num_classes)
        self.aux = FCNAuxHead(channels[-2], num_classes)
        self.feature_channels = self.head[-1].in_channels

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """What the classifier sees: ASPP, then the 3x3 conv."""
        x = feats[-1]
        for layer in list(self.head)[:-1]:
            x = layer(x)
        return x

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"out": self.head[-1](self.features(feats)), "aux": self.aux(feats[-2])}

    def classifier_layers(self) -> list[nn.Conv2d]:
        return [self.head[-1], self.aux[-1]]
