"""Mask pasting: each box's M x M probabilities into the image, as detectron2's `paste_masks_in_image`.

Every image pixel (x, y) samples its box's mask bilinearly at pixel centres:
    u = (x + 0.5 - x0) / (x1 - x0) * 2 - 1,  v likewise    (grid_sample, align_corners=False, zero padding)
and is the instance when the sample is >= MASK_THRESHOLD. This is the official models' rule; torchvision's
(expand the box by a pixel, resize to the rounded box size) moves mask borders by up to a pixel. Only the
box's pixels plus a one-pixel margin are sampled: beyond it the sample is below the threshold anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.contract import MASK_THRESHOLD


def paste_masks(masks: Tensor, boxes: Tensor, image_hw: tuple[int, int], threshold: float = MASK_THRESHOLD) -> Tensor:
    """masks [N,M,M] probabilities, boxes [N,4] xyxy in image pixels -> bool [N,H,W]."""
    h, w = image_hw
    out = torch.zeros((len(masks), h, w), dtype=torch.bool)
    masks, boxes = masks.float().cpu(), boxes.float().cpu()
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        x0, y0, x1, y1 = (float(v) for v in box)
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
        if right <= left or bottom <= top:
            continue
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [rows, cols, 2] as (u, v)
        sampled = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
        out[i, top:bottom, left:right] = sampled >= threshold
    return out
