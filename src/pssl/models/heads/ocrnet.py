"""OCRNet (Yuan et al. 2020) on HRNetV2: object-contextual representations.

HRNetV2 representation: the four branch outputs upsampled to the highest resolution and concatenated.
An auxiliary head predicts soft object regions; pixels are re-represented by attention over the region
descriptors (object contextual representation) and classified.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pssl.models.catalog import register_head
from pssl.models.layers import conv_bn_relu


class SpatialGather(nn.Module):
    """Region descriptors: features averaged under each class's softmax map. (B, C, K, 1)."""

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        b, k = probs.shape[:2]
        weights = probs.flatten(2).softmax(dim=2)                 # B x K x HW
        return torch.bmm(weights, feats.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """Each pixel attends over the K region descriptors; the context is fused with the pixel feature."""

    def __init__(self, c_in: int, c_key: int):
        super().__init__()
        self.query = nn.Sequential(conv_bn_relu(c_in, c_key, 1), conv_bn_relu(c_key, c_key, 1))
        self.key = nn.Sequential(conv_bn_relu(c_in, c_key, 1), conv_bn_relu(c_key, c_key, 1))
        self.value = conv_bn_relu(c_in, c_key, 1)
        self.out = conv_bn_relu(c_key, c_in, 1)
        self.scale = c_key ** -0.5

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feats.shape
        q = self.query(feats).flatten(2).transpose(1, 2)           # B x HW x C
        k = self.key(regions).flatten(2)                           # B x C x K
        v = self.value(regions).flatten(2).transpose(1, 2)         # B x K x C
        attn = (torch.bmm(q, k) * self.scale).softmax(dim=-1)      # B x HW x K
        context = torch.bmm(attn, v).transpose(1, 2).reshape(b, -1, h, w)
        return self.out(context)


@register_head("ocrnet")
class OCRHead(nn.Module):
    # 512 mid / 256 key channels: the official HRNet-OCR, PaddleSeg and mmsegmentation widths.
    def __init__(self, channels: list[int], num_classes: int, c_mid: int = 512, c_key: int = 256):
        super().__init__()
        c_cat = sum(channels)
        self.aux = nn.Sequential(conv_bn_relu(c_cat, c_cat, 1), nn.Conv2d(c_cat, num_classes, 1))
        self.pixel = conv_bn_relu(c_cat, c_mid)
        self.gather = SpatialGather()
        self.attention = ObjectAttention(c_mid, c_key)
        self.fuse = nn.Sequential(conv_bn_relu(2 * c_mid, c_mid, 1), nn.Dropout2d(0.05))
        self.classifier = nn.Conv2d(c_mid, num_classes, 1)
        self.feature_channels = c_mid

    def contextual(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the classifier sees, the soft object regions)."""
        size = feats[0].shape[-2:]
        x = torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                    for f in feats[1:]], dim=1)   # HRNetV2 representation
        soft_regions = self.aux(x)
        pixels = self.pixel(x)
        regions = self.gather(pixels, soft_regions)
        context = self.attention(pixels, regions)
        return self.fuse(torch.cat([context, pixels], dim=1)), soft_regions

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.contextual(feats)[0]

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x, soft_regions = self.contextual(feats)
        return {"out": self.classifier(x), "aux": soft_regions}

    def classifier_layers(self) -> list[nn.Conv2d]:
        return [self.classifier, self.aux[-1]]
