"""Multi-scale RoIAlign from standard ops (GridSample), so that no runtime needs a RoiAlign plugin.

It equals `torchvision.ops.MultiScaleRoIAlign` with `roi_align(aligned=False)`:
- level k = floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to the pyramid (torchvision's LevelMapper);
- each output bin averages sampling_ratio x sampling_ratio bilinear samples at
  x1*scale + (j + (s + 0.5)/sr) * bin_w, with RoI sizes at least 1 feature pixel;
- a sample is clamped to the map's border, and is zero beyond one pixel outside it.

All levels are laid side by side on one canvas [B,C,H_finest,sum W], so one GridSample serves every
RoI whatever its level. Samples are clamped inside their own level's region first, and a sample on a
region's last column gives its right neighbour (the next level) weight zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        lvl = level_of(boxes, k_min=self.k_min, k_max=self.k_max)  # [B,R]
        height = features[0].shape[2]
        widths = [f.shape[3] for f in features]
        canvas = torch.cat([F.pad(f, (0, 0, 0, height - f.shape[2])) for f in features], dim=3)

        # per-RoI level properties, gathered from small per-level tables
        def per_level(values: list) -> Tensor:
            table = torch.stack([torch.scalar_tensor(v, dtype=boxes.dtype) for v in values])
            return table[lvl]  # [B,R]

        scale = per_level([1.0 / s for s in self.strides])
        h_l = per_level([f.shape[2] for f in features])
        w_l = per_level(widths)
        x_off = per_level([sum(widths[:i]) for i in range(len(widths))])

        x1, y1, x2, y2 = (boxes * scale[..., None]).unbind(-1)  # aligned=False: no half-pixel shift
        bin_w = torch.clamp(x2 - x1, min=1.0) / p
        bin_h = torch.clamp(y2 - y1, min=1.0) / p
        steps = (torch.arange(p * sr, dtype=boxes.dtype, device=boxes.device) + 0.5) / sr  # j + (s+0.5)/sr
        xs = x1[..., None] + steps * bin_w[..., None]  # [B,R,P*sr]
        ys = y1[..., None] + steps * bin_h[..., None]
        inside = ((xs >= -1.0) & (xs <= w_l[..., None])).to(boxes.dtype)[..., None, :] * (
            (ys >= -1.0) & (ys <= h_l[..., None])
        ).to(boxes.dtype)[..., :, None]  # [B,R,P*sr,P*sr]
        xs = torch.minimum(torch.clamp(xs, min=0.0), (w_l - 1)[..., None]) + x_off[..., None]
        ys = torch.minimum(torch.clamp(ys, min=0.0), (h_l - 1)[..., None])

        # pixel -> grid coordinates for align_corners=False: g = (2x + 1) / size - 1
        gx = (2 * xs + 1) / canvas.shape[3] - 1
        gy = (2 * ys + 1) / canvas.shape[2] - 1
        n = p * sr
        grid = torch.stack([gx[:, :, None, :].expand(b, r, n, n), gy[:, :, :, None].expand(b, r, n, n)], dim=-1)
        samples = F.grid_sample(canvas, grid.reshape(b, r * n, n, 2), mode="bilinear", padding_mode="border",
                                align_corners=False)  # [B,C,R*n,n]
        c = canvas.shape[1]
        samples = samples.reshape(b, c, r, n, n) * inside[:, None]
        pooled = samples.reshape(b, c, r, p, sr, p, sr).mean(dim=(4, 6))  # [B,C,R,P,P]
        return pooled.permute(0, 2, 1, 3, 4)
