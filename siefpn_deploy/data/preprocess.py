"""The one preprocessing every deployed artifact sees: resize to fit, then pad, in input pixel units.

An image [3,h,w] (RGB, 0..1) is resized keeping its aspect ratio to fit inside (H, W) and placed at the
top-left of an (H, W) canvas filled with the pixel mean, so the padding normalises to 0 exactly as
torchvision's batching pads after normalisation. Values are then scaled to the graph's input range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def letterbox(image: Tensor, size: tuple[int, int], *, pixel_mean: list[float], input_scale: float) -> tuple[Tensor, float]:
    """image [3,h,w] in 0..1 -> (canvas [3,H,W] in 0..input_scale, resize factor)."""
    h, w = image.shape[-2:]
    factor = min(size[0] / h, size[1] / w)
    nh, nw = min(size[0], round(h * factor)), min(size[1], round(w * factor))
    resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    canvas = torch.tensor(pixel_mean, dtype=image.dtype).view(3, 1, 1).expand(3, *size).clone()
    canvas[:, :nh, :nw] = resized
    return canvas * input_scale, factor
