"""Multi-scale RoIAlign from standard ops (Gather and arithmetic), so that no runtime needs a RoiAlign plugin.

It equals `torchvision.ops.MultiScaleRoIAlign` with `roi_align(aligned=False)`:
- level k = floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to the pyramid (torchvision's LevelMapper);
- each output bin averages sampling_ratio x sampling_ratio bilinear samples at
  x1*scale + (j + (s + 0.5)/sr) * bin_w, with RoI sizes at least 1 feature pixel;
- a sample is clamped to the map's border, and is zero beyond one pixel outside it.

Every level's pixels are rows of one channels-last table [B, sum H*W, C], so one Gather per bilinear
neighbour serves every RoI whatever its level, and each gathered row is C contiguous values (ONNX
Runtime's GridSample recomputes every sample's coordinates per channel, which made it the slowest
op of a Faster R-CNN graph). The neighbours follow torchvision's bilinear_interpolate exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def level_of(boxes: Tensor, *, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4) -> Tensor:
    """torchvision's LevelMapper: boxes [...,4] -> level index [...] in 0..k_max-k_min."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale) + torch.tensor(1e-6))
    return (torch.clamp(k, min=k_min, max=k_max) - k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    def __init__(self, *, strides: list[int], output_size: int, sampling_ratio: int) -> None:
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels) or levels != sorted(levels):
            raise ValueError(f"strides must be increasing powers of two, got {strides}")
        self.strides = list(strides)
        self.k_min, self.k_max = int(levels[0]), int(levels[-1])
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        """features: one [B,C,H_l,W_l] per stride; boxes [B,R,4] in input pixels -> [B,R,C,P,P]."""
        b, r = boxes.shape[:2]
        p, sr = self.output_size, self.sampling_ratio
        n = p * sr
        lvl = level_of(boxes, k_min=self.k_min, k_max=self.k_max)  # [B,R]
        # every level's pixels as rows of one channels-last table: a sample gathers C contiguous values
        table = torch.cat([f.flatten(2) for f in features], dim=2).transpose(1, 2)  # [B, sum h*w, C]
        rows, c = table.shape[1], table.shape[2]

        # per-RoI level properties, gathered from small per-level tables
        def per_level(values: list) -> Tensor:
            return torch.stack([torch.scalar_tensor(v, dtype=boxes.dtype) for v in values])[lvl]  # [B,R]

        scale = per_level([1.0 / s for s in self.strides])
        h_l = per_level([f.shape[2] for f in features])
        w_l = per_level([f.shape[3] for f in features])
        offset = per_level([sum(f.shape[2] * f.shape[3] for f in features[:i]) for i in range(len(features))])

        x1, y1, x2, y2 = (boxes * scale[..., None]).unbind(-1)  # aligned=False: no half-pixel shift
        steps = (torch.arange(n, dtype=boxes.dtype, device=boxes.device) + 0.5) / sr  # j + (s+0.5)/sr
        xs = x1[..., None] + steps * (torch.clamp(x2 - x1, min=1.0) / p)[..., None]  # [B,R,n]
        ys = y1[..., None] + steps * (torch.clamp(y2 - y1, min=1.0) / p)[..., None]

        def axis(v: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
            """torchvision's bilinear_interpolate along one axis: (low, high, w_low, w_high, inside)."""
            inside = (v >= -1.0) & (v <= size[..., None])
            v = torch.clamp(v, min=0.0)
            low = torch.floor(v)
            last = low >= (size - 1)[..., None]
            low = torch.where(last, (size - 1)[..., None], low)
            high = torch.where(last, low, low + 1)
            frac = torch.where(last, torch.zeros_like(v), v - low)
            return low, high, 1 - frac, frac, inside

        # per axis, bin i's sr samples x 2 neighbours: indices and weights [B,R,P,sr*2]
        def taps(v: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
            low, high, w_low, w_high, inside = axis(v, size)
            index = torch.stack([low, high], dim=-1).reshape(b, r, p, sr * 2)
            weight = (torch.stack([w_low, w_high], dim=-1) * inside[..., None].to(v.dtype)).reshape(b, r, p, sr * 2)
            return index, weight

        iy, wy = taps(ys, h_l)
        ix, wx = taps(xs, w_l)
        k = (sr * 2) ** 2  # taps per output bin
        base = offset + (torch.arange(b, device=boxes.device, dtype=boxes.dtype) * rows)[:, None]  # [B,R]
        index = (base[..., None, None, None, None] + iy[:, :, :, None, :, None] * w_l[..., None, None, None, None]
                 + ix[:, :, None, :, None, :])  # [B,R,P,P,2sr,2sr]
        weight = wy[:, :, :, None, :, None] * wx[:, :, None, :, None, :] / (sr * sr)
        # one Gather of every tap, then one batched MatMul folds each bin's taps with their weights
        values = torch.index_select(table.reshape(b * rows, c), 0, index.to(torch.int64).flatten())
        pooled = torch.matmul(weight.reshape(-1, 1, k), values.reshape(-1, k, c)).reshape(b, r, p, p, c)
        return pooled.permute(0, 1, 4, 2, 3)
