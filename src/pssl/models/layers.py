"""Layers the segmentation heads share."""

from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(c_in: int, c_out: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FCNAuxHead(nn.Sequential):
    """The usual auxiliary head on the third stage (deep supervision, weight 0.4 in the loss)."""

    def __init__(self, c_in: int, num_classes: int):
        super().__init__(conv_bn_relu(c_in, max(c_in // 4, 32)), nn.Dropout2d(0.1),
                         nn.Conv2d(max(c_in // 4, 32), num_classes, 1))
