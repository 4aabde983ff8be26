"""PSPNet (Zhao et al. 2017): pyramid pooling over the last stage at bins 1, 2, 3, 6."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pssl.models.catalog import register_head
from pssl.models.layers import FCNAuxHead, conv_bn_relu


class PyramidPooling(nn.Module):
    def __init__(self, c_in: int, bins=(1, 2, 3, 6)):
        super().__init__()
        c_branch = c_in // len(bins)
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(c_in, c_branch, k=1))
                                    for b in bins)
        self.out_channels = c_in + c_branch * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False)
                                for s in self.stages], dim=1)


@register_head("pspnet")
class PSPHead(nn.Module):
    def __init__(self, channels: list[int], num_classes: int):
        super().__init__()
        width = max(channels[-1] // 4, 64)
        self.ppm = PyramidPooling(channels[-1])
        self.bottleneck = conv_bn_relu(self.ppm.out_channels, width)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.aux = FCNAuxHead(channels[-2], num_classes)
        self.feature_channels = width

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """What the classifier sees."""
        return self.dropout(self.bottleneck(self.ppm(feats[-1])))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.features(feats)), "aux": self.aux(feats[-2])}

    def classifier_layers(self) -> list[nn.Conv2d]:
        return [self.classifier, self.aux[-1]]
