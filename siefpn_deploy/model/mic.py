"""MIC: multiple information compensation, one module per level, on the raw backbone feature."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MIC(nn.Module):
    """MIC(C_i) = m + t(m), m = ReLU(BN(conv1x1(C_i))), t = three ReLU(BN(conv3x3)) blocks.

    It recovers what the 1x1 lateral conv throws away, so it reads C_i, not the lateral.
    """

    def __init__(self, *, in_channels: int, out_channels: int, num_convs: int = 3) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, out_channels, 1)
        self.refine = nn.Sequential(*(conv_bn_relu(out_channels, out_channels, 3) for _ in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.reduce(x)
        return m + self.refine(m)
