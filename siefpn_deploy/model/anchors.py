"""detectron2's DefaultAnchorGenerator, for the eager detectors and the exported graph alike.

It differs from torchvision's AnchorGenerator in three ways that change numbers (and so decide whether
an imported detectron2 checkpoint gives the official detections):
- cell anchors are not rounded: w = size / sqrt(ratio), h = size * sqrt(ratio) (torchvision rounds);
- per location they are size-major, a = size_index * R + ratio_index (torchvision is ratio-major);
- each level has a fixed stride (4, 8, ..., 128), where torchvision derives image // feature, which is
  wrong at P6/P7 when the input is not a multiple of 128 (800 // 13 = 61, not 64).
Anchor centres are at (x * stride, y * stride) (detectron2's OFFSET 0.0), locations row-major, then the
cell anchors: [h * w * A, 4] per level, the order both libraries' heads flatten to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cell_anchors(sizes: list[float], aspect_ratios: list[float]) -> Tensor:
    """[len(sizes) * len(aspect_ratios), 4] xyxy anchors centred on 0, size-major (in Python doubles, as
    detectron2 computes them, then float32)."""
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors per pyramid level; torchvision's detectors call it as `generator(image_list, features)`."""

    def __init__(self, *, sizes: list[list[float]], aspect_ratios: list[float], strides: list[int]) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size list per level: {len(sizes)} sizes for {len(strides)} strides")
        self.strides = list(strides)
        for level, level_sizes in enumerate(sizes):
            # buffers (not persistent): they follow .to(device) but are no checkpoint state, as in detectron2
            self.register_buffer(f"cell_anchors_{level}", cell_anchors(level_sizes, aspect_ratios), persistent=False)

    @property
    def cell_anchors(self) -> list[Tensor]:
        return [getattr(self, f"cell_anchors_{level}") for level in range(len(self.strides))]

    def num_anchors_per_location(self) -> list[int]:
        return [len(cells) for cells in self.cell_anchors]

    def grid(self, level: int, feature: Tensor) -> Tensor:
        """Anchors of one level for a feature map [B, C, h, w]: [h * w * A, 4] in input pixels, float32.

        Only the feature's shape is read, so the exported graph computes them from its runtime sizes."""
        h, w = feature.shape[-2:]
        stride = self.strides[level]
        cells = self.cell_anchors[level].to(feature.device)
        shifts_x = torch.arange(w, dtype=torch.float32, device=feature.device) * stride
        shifts_y = torch.arange(h, dtype=torch.float32, device=feature.device) * stride
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [h*w, 4]
        return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)

    def forward(self, image_list, feature_maps: list[Tensor]) -> list[Tensor]:
        """torchvision's interface: one [sum_l h_l * w_l * A, 4] tensor per image."""
        per_level = [self.grid(level, f) for level, f in enumerate(feature_maps)]
        anchors = torch.cat(per_level).to(feature_maps[0].dtype)
        return [anchors for _ in range(len(image_list.image_sizes))]
