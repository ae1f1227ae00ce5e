"""detectron2's ROIPooler: multi-scale RoIAlign with its level assignment, for the R-CNN heads.

torchvision's MultiScaleRoIAlign is fixed to `aligned=False` and adds its epsilon outside the log; the
paper's models use detectron2's ROIAlignV2 (`aligned=True`, half-pixel centres) with an adaptive
sampling ratio (0: ceil(RoI bin size) samples per bin and axis) and the level
    floor(4 + log2(sqrt(area) / 224 + 1e-8)), clamped to the pyramid.
The exported graph uses the same `assign_levels` (export/roi_align.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

CANONICAL_BOX_SIZE = 224  # FPN's Eqn. (1): a 224x224 RoI maps to level 4
CANONICAL_LEVEL = 4


def assign_levels(boxes: Tensor, *, min_level: int, max_level: int) -> Tensor:
    """boxes [..., 4] xyxy in input pixels -> level index [...] in 0..max_level-min_level (int64)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    level = torch.floor(CANONICAL_LEVEL + torch.log2(torch.sqrt(area) / CANONICAL_BOX_SIZE + 1e-8))
    return (torch.clamp(level, min=min_level, max=max_level) - min_level).to(torch.int64)


def level_range(strides: list[int]) -> tuple[int, int]:
    """(min_level, max_level) of increasing power-of-two strides, e.g. [4, 8, 16, 32] -> (2, 5)."""
    levels = [math.log2(s) for s in strides]
    if any(lv != int(lv) for lv in levels) or levels != sorted(levels):
        raise ValueError(f"strides must be increasing powers of two, got {strides}")
    return int(levels[0]), int(levels[-1])


class ROIPooler(nn.Module):
    """features {name: [B,C,H,W]} + per-image boxes [R_i,4] -> [sum R_i, C, P, P] (torchvision's call signature)."""

    def __init__(self, *, featmap_names: list[str], strides: list[int], output_size: int, sampling_ratio: int,
                 aligned: bool) -> None:
        super().__init__()
        if len(strides) != len(featmap_names):
            raise ValueError(f"one stride per feature map: {strides} for {featmap_names}")
        self.featmap_names = list(featmap_names)
        self.strides = list(strides)
        self.min_level, self.max_level = level_range(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes=None) -> Tensor:
        feats = [features[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        level = assign_levels(rois[:, 1:], min_level=self.min_level, max_level=self.max_level)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], self.output_size, self.output_size))
        for index, (feature, stride) in enumerate(zip(feats, self.strides)):
            inds = torch.nonzero(level == index).flatten()
            out[inds] = roi_align(feature, rois[inds], self.output_size, spatial_scale=1.0 / stride,
                                  sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
        return out
