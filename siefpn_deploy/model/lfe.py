"""LFE: lateral feature enhancement, one module shared by every pyramid level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcite(nn.Module):
    """Global average -> Linear C->C/r -> ReLU -> Linear C/r->C -> sigmoid, then scale the input."""

    def __init__(self, *, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))  # [B, C]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class LFE(nn.Module):
    """LFE(L) = w0*a + w1*b + w2*L with w = softmax(fusion_logits).

    a = conv_out(gate * conv_gated(L)) + conv_skip(L), gate = sigmoid(conv1x1(relu(conv3x3(L))));
    b = SE(L). All convs keep C channels and have a bias.
    """

    def __init__(self, *, channels: int, se_reduction: int = 16) -> None:
        super().__init__()
        self.gate_conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate_conv1 = nn.Conv2d(channels, channels, 1)
        self.conv_gated = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_skip = nn.Conv2d(channels, channels, 3, padding=1)
        self.se = SqueezeExcite(channels=channels, reduction=se_reduction)
        # initialised to ones: the three branches start equally weighted (softmax -> 1/3 each)
        self.fusion_logits = nn.Parameter(torch.ones(3))

    def forward(self, lateral: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate_conv1(F.relu(self.gate_conv3(lateral))))
        a = self.conv_out(gate * self.conv_gated(lateral)) + self.conv_skip(lateral)
        b = self.se(lateral)
        w = torch.softmax(self.fusion_logits, dim=0)
        return w[0] * a + w[1] * b + w[2] * lateral
