"""Multi-scale RoIAlign in the deploy graph: detectron2's ROIPooler (`model/poolers.py`) with static shapes,
in one of three lowerings (`--roi-align`):

- "onnx": the standard RoiAlign op (opset 16: `half_pixel` for ROIAlignV2, adaptive sampling), exact for
  every RoI. ONNX Runtime, OpenVINO and full TensorRT (its RoiAlign plugin) run it.
  For ROIAlignV2 it is one call for all levels: the levels sit side by side in one canvas (`pack_levels`),
  each with a one-pixel replicated border on its left, right and bottom, and each RoI is moved into its
  level's tile. With half-pixel centres a clipped RoI samples at most one pixel past its level's edge, where
  torchvision clamps to the edge pixel: the replicated border gives the same value, so the result is
  exact, and one RoI costs one RoI's samples (per level, every RoI would cost P*P*ratio^2 samples at
  every level, 4x the work at a fixed ratio). The legacy op (`aligned=False`) widens a RoI to one
  feature pixel, which can reach past that border, so it keeps one call per level, where a RoI of another
  level is given an empty box (free at the adaptive ratio, full price at a fixed one).
- "gather": plugin-free, Gather and MatMul only, for builders with no RoiAlign (TensorRT-RTX). Each output
  bin averages g_y x g_x bilinear samples at x1 + (j + (s + 0.5) / g) * bin_w (x1 shifted by half a pixel
  for ROIAlignV2), the neighbours following torchvision's bilinear_interpolate (clamped to the border, zero
  beyond one pixel outside). A fixed sampling ratio is exact for every RoI. The adaptive ratio
  (g = ceil(bin size)) needs a static bound: at most `max_samples` per bin and axis. Within it, i.e. for
  RoIs whose bins are at most `max_samples` feature pixels on each side, it is exact; a larger RoI is
  sampled `max_samples` times per bin and axis (a fixed-ratio RoIAlign), which is close but not equal.
- "bag": the gather lowering's taps and weights, each output bin's taps summed by ATen's EmbeddingBag kernel
  (`F.embedding_bag`, mode "sum" with per-sample weights), which spreads its bags over every thread where
  torchvision's CPU roi_align kernel runs on one. For AOTInductor packages only (ONNX has no EmbeddingBag op):
  the default of a CPU package at a fixed sampling ratio, where it is exact, as the gather lowering is
  (benchmarks/results/aoti_cpu_static_quiet.md: the R-CNN packages' time with it).

Every level's pixels are rows of one channels-last table [B, sum H*W, C], so one Gather per bilinear
neighbour serves every RoI whatever its level, and each gathered row is C contiguous values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..model.poolers import assign_levels, level_range
from .options import ROI_ALIGN_LOWERINGS


def _per_level(values: list, lvl: Tensor, dtype: torch.dtype) -> Tensor:
    """One value per level (ints or traced sizes), looked up by each RoI's level index lvl [B,R] -> [B,R]."""
    return torch.stack([torch.scalar_tensor(v, dtype=dtype) for v in values])[lvl]


def pack_levels(features: list[Tensor]) -> tuple[Tensor, list]:
    """The levels [B,C,h_l,w_l] side by side in one canvas [B,C,h_0+1,sum(w_l+2)], top-aligned, each level's
    border pixels replicated once on its left, right and bottom (zeros fill below the smaller levels, where
    no sample falls). Returns the canvas and each level's x offset (level pixel x is canvas pixel x+offset)."""
    height = features[0].shape[2] + 1
    tiles, offsets, x = [], [], 0
    for feature in features:
        tile = F.pad(feature, (1, 1, 0, 1), mode="replicate")  # [B,C,h+1,w+2]
        tiles.append(F.pad(tile, (0, 0, 0, height - tile.shape[2])))
        offsets.append(x + 1)
        x = x + tile.shape[3]
    return torch.cat(tiles, dim=3), offsets


class MultiScaleRoIAlign(nn.Module):
    def __init__(self, *, strides: list[int], output_size: int, sampling_ratio: int, aligned: bool,
                 lowering: str = "gather", max_samples: int = 2) -> None:
        super().__init__()
        if lowering not in ROI_ALIGN_LOWERINGS:
            raise ValueError(f"lowering must be one of {ROI_ALIGN_LOWERINGS}, got {lowering!r}")
        self.strides = list(strides)
        self.min_level, self.max_level = level_range(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.lowering = lowering
        # samples per bin and axis that the gather lowering provides: the ratio itself when it is fixed
        self.samples = sampling_ratio if sampling_ratio > 0 else max_samples

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        """features: one [B,C,H_l,W_l] per stride; boxes [B,R,4] in input pixels -> [B,R,C,P,P]."""
        lvl = assign_levels(boxes, min_level=self.min_level, max_level=self.max_level)  # [B,R]
        if self.lowering == "onnx":
            return self._onnx(features, boxes, lvl)
        table, index, weight = self._taps(features, boxes, lvl)  # [B*rows,C], [B,R,P,P,k], [B,R,P,P,k]
        b, r, p, c, k = *boxes.shape[:2], self.output_size, table.shape[1], index.shape[-1]
        if self.lowering == "bag":
            pooled = F.embedding_bag(index.reshape(-1, k), table, per_sample_weights=weight.reshape(-1, k), mode="sum")
        else:  # one Gather of every tap, then one batched MatMul folds each bin's taps with their weights
            values = torch.index_select(table, 0, index.flatten())
            pooled = torch.matmul(weight.reshape(-1, 1, k), values.reshape(-1, k, c))
        return pooled.reshape(b, r, p, p, c).permute(0, 1, 4, 2, 3)

    def _onnx(self, features: list[Tensor], boxes: Tensor, lvl: Tensor) -> Tensor:
        b, r = boxes.shape[:2]
        index = torch.arange(b, dtype=boxes.dtype, device=boxes.device)[:, None, None].expand(b, r, 1)
        if self.aligned:
            canvas, offsets = pack_levels(features)
            scale = _per_level([1.0 / st for st in self.strides], lvl, boxes.dtype)[..., None]  # exact: 2^-k
            shift = _per_level(offsets, lvl, boxes.dtype)
            moved = boxes * scale + torch.stack([shift, torch.zeros_like(shift)] * 2, dim=-1)  # canvas pixels
            rois = torch.cat([index, moved], dim=-1).reshape(-1, 5)
            pooled = roi_align(canvas, rois, self.output_size, spatial_scale=1.0, sampling_ratio=self.sampling_ratio,
                               aligned=True)  # [B*R,C,P,P]
            return pooled.reshape(b, r, *pooled.shape[1:])
        out = None
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            mine = (lvl == level)[..., None]
            # RoIs of other levels become empty boxes: the adaptive ratio gives them no samples
            rois = torch.cat([index, torch.where(mine, boxes, torch.zeros_like(boxes))], dim=-1).reshape(-1, 5)
            pooled = roi_align(feature, rois, self.output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)  # [B*R,C,P,P]
            pooled = pooled.reshape(b, r, *pooled.shape[1:])
            keep = mine[..., None, None]
            out = torch.where(keep, pooled, torch.zeros_like(pooled)) if out is None else torch.where(keep, pooled, out)
        return out

    def _taps(self, features: list[Tensor], boxes: Tensor, lvl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The gather and bag lowerings' bilinear taps: every level's pixels as rows of one table [B*rows,C], and
        for each output bin [B,R,P,P] its k = (2s)^2 taps' row indices (int64) and weights (the bin's mean folded
        in)."""
        b, r = boxes.shape[:2]
        p, s = self.output_size, self.samples
        # every level's pixels as rows of one channels-last table: a sample gathers C contiguous values
        table = torch.cat([f.flatten(2) for f in features], dim=2).transpose(1, 2)  # [B, sum h*w, C]
        rows, c = table.shape[1], table.shape[2]

        def per_level(values: list) -> Tensor:
            return _per_level(values, lvl, boxes.dtype)

        scale = per_level([1.0 / st for st in self.strides])
        h_l = per_level([f.shape[2] for f in features])
        w_l = per_level([f.shape[3] for f in features])
        offset = per_level([sum(f.shape[2] * f.shape[3] for f in features[:i]) for i in range(len(features))])

        shift = 0.5 if self.aligned else 0.0  # ROIAlignV2: pixel centres at +0.5
        x1, y1, x2, y2 = (boxes * scale[..., None] - shift).unbind(-1)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not self.aligned:  # the legacy op makes every RoI at least one feature pixel
            roi_w, roi_h = torch.clamp(roi_w, min=1.0), torch.clamp(roi_h, min=1.0)
        bin_w, bin_h = roi_w / p, roi_h / p  # [B,R]

        def grid(bin_size: Tensor) -> Tensor:
            """Samples per bin on one axis [B,R]: the fixed ratio, or ceil(bin) (0 for an empty RoI, as
            torchvision's kernel), at most the bound."""
            if self.sampling_ratio > 0:
                return torch.full_like(bin_size, float(self.sampling_ratio))
            return torch.clamp(torch.ceil(bin_size), min=0.0, max=float(s))

        g_x, g_y = grid(bin_w), grid(bin_h)
        # sample t of bin i sits at start + (i + (t + 0.5) / g) * bin, for t < g; slots t >= g weigh nothing
        t = torch.arange(s, dtype=boxes.dtype, device=boxes.device)
        i = torch.arange(p, dtype=boxes.dtype, device=boxes.device)

        def positions(start: Tensor, bin_size: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
            frac = (t + 0.5) / torch.clamp(g, min=1.0)[..., None]  # [B,R,s]; a slot t >= g is a valid but unused
            pos = start[..., None, None] + (i[:, None] + frac[..., None, :]) * bin_size[..., None, None]  # [B,R,P,s]
            used = (t < g[..., None])[..., None, :].expand_as(pos)
            return pos, used

        xs, used_x = positions(x1, bin_w, g_x)
        ys, used_y = positions(y1, bin_h, g_y)

        def taps(v: Tensor, used: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
            """torchvision's bilinear_interpolate along one axis: neighbour indices and weights [B,R,P,2s]."""
            size = size[..., None, None]
            inside = (v >= -1.0) & (v <= size) & used
            v = torch.clamp(v, min=0.0)
            low = torch.floor(v)
            last = low >= size - 1
            low = torch.where(last, size - 1, low)
            high = torch.where(last, low, low + 1)
            frac = torch.where(last, torch.zeros_like(v), v - low)
            index = torch.stack([low, high], dim=-1).reshape(b, r, p, s * 2)
            weight = (torch.stack([1 - frac, frac], dim=-1) * inside[..., None].to(v.dtype)).reshape(b, r, p, s * 2)
            return index, weight

        iy, wy = taps(ys, used_y, h_l)
        ix, wx = taps(xs, used_x, w_l)
        k = (s * 2) ** 2  # taps per output bin
        base = offset + (torch.arange(b, device=boxes.device, dtype=boxes.dtype) * rows)[:, None]  # [B,R]
        index = (base[..., None, None, None, None] + iy[:, :, :, None, :, None] * w_l[..., None, None, None, None]
                 + ix[:, :, None, :, None, :])  # [B,R,P,P,2s,2s]
        count = torch.clamp(g_y * g_x, min=1.0)[..., None, None, None, None]
        weight = wy[:, :, :, None, :, None] * wx[:, :, None, :, None, :] / count
        return (table.reshape(b * rows, c), index.to(torch.int64).reshape(b, r, p, p, k),
                weight.reshape(b, r, p, p, k))
