"""The one preprocessing every deployed artifact sees: calibration, verification, parity, inference and
training's evaluation. `core.contract.PreprocessSpec` defines it; this carries it out.

It is torchvision's test-time transform, split where the graph begins: resize with the detector's
MIN/MAX_SIZE_TEST rule (the same `interpolate` call, so the same pixels), then put it in the model's channel
order and place it at the top-left of a canvas filled with the pixel mean. The graph normalises, so the padding becomes exactly
the zeros that torchvision's batching pads with. The canvas is the batch's largest image padded to
the size divisibility, or a fixed size (a static engine, a calibration batch), in which case an image
that would not fit is resized smaller to fit. Each image's resized size is the graph's `image_sizes` input
(`Canvas.image_sizes`). Boxes go back to image pixels with `Canvas.to_image`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.contract import PreprocessSpec
from ..core.errors import UserError
from .image import as_float, in_channel_order


@dataclass(frozen=True)
class Canvas:
    """A preprocessed batch: images [B,3,H,W] in 0..input_scale, and each image's resized and original size."""

    images: Tensor
    resized_hw: list[tuple[int, int]]
    original_hw: list[tuple[int, int]]

    @property
    def image_sizes(self) -> np.ndarray:
        """The graph's `image_sizes` input: [B,2] int32, each resized image's (height, width) on the canvas."""
        return np.array(self.resized_hw, dtype=np.int32).reshape(-1, 2)

    def to_image(self, boxes: Tensor, index: int) -> Tensor:
        """xyxy boxes [N,4] in canvas pixels -> image `index`'s pixels (torchvision's resize_boxes), clipped to it."""
        (rh, rw), (oh, ow) = self.resized_hw[index], self.original_hw[index]
        scale = torch.tensor([ow / rw, oh / rh, ow / rw, oh / rh], dtype=boxes.dtype)
        out = boxes * scale
        out[:, 0::2] = out[:, 0::2].clamp(0, ow)
        out[:, 1::2] = out[:, 1::2].clamp(0, oh)
        return out


@dataclass(frozen=True)
class Preprocess:
    """The contract's `PreprocessSpec`, carried out."""

    spec: PreprocessSpec

    def at_size(self, min_size: int, max_size: int | None = None) -> Preprocess:
        """The same preprocessing with the test resize set to (min_size, max_size or min_size)."""
        return Preprocess(replace(self.spec, min_size=min_size, max_size=max_size or min_size))

    def scale(self, h: int, w: int, canvas: tuple[int, int] | None = None) -> float:
        """The resize factor of an h x w image (torchvision's _resize_image_and_masks arithmetic, in Python
        floats); a one-line UserError when a side would resize to nothing (a 400x1 strip, say)."""
        spec = self.spec
        factor = min(spec.min_size / min(h, w), spec.max_size / max(h, w))
        if canvas is not None and (math.floor(h * factor) > canvas[0] or math.floor(w * factor) > canvas[1]):
            factor = min(canvas[0] / h, canvas[1] / w)
        if math.floor(h * factor) < 1 or math.floor(w * factor) < 1:
            raise UserError(f"an image of {w}x{h} pixels is too thin for this model: resized to fit "
                            f"{spec.min_size}..{spec.max_size} px it would be {math.floor(w * factor)}x"
                            f"{math.floor(h * factor)}")
        return factor

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The canvas (H, W) an h x w image gets on its own: its resized size padded up to the divisibility."""
        factor = self.scale(h, w)
        return self.pad(math.floor(h * factor), math.floor(w * factor))

    def pad(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) rounded up to multiples of the divisibility."""
        div = self.spec.divisibility
        return -(-h // div) * div, -(-w // div) * div

    def resize(self, image: Tensor, canvas: tuple[int, int] | None = None) -> Tensor:
        """image [3,h,w] RGB (uint8, or float 0..1) -> resized float [3,h',w'], h' = floor(h * scale) (interpolate's
        own rounding). A uint8 image becomes float here, one image at a time: a batch of large images is never
        all float at full size at once (the server's memory bound)."""
        (h, w), factor = image.shape[-2:], self.scale(*image.shape[-2:], canvas)
        if math.floor(h * factor) == h and math.floor(w * factor) == w:
            # interpolate to the same size returns its input exactly (each output pixel weighs its own source
            # pixel 1 and its neighbour 0): skip its pass over the pixels, a millisecond at 320x320 on one thread
            return as_float(image)
        return F.interpolate(as_float(image)[None], size=None, scale_factor=factor, mode="bilinear",
                             recompute_scale_factor=True, align_corners=False)[0]

    def __call__(self, images: list[Tensor], canvas: tuple[int, int] | None = None,
                 original_hw: list[tuple[int, int]] | None = None) -> Canvas:
        """RGB images [3,h,w] (`to_pixels`: uint8, or float 0..1) -> one Canvas in the model's channel order.
        `canvas` fixes (H, W); else the batch's largest image padded to the divisibility. `original_hw`: the
        images' sizes before a reduced decode (`decode_reduced`), the pixels boxes go back to; else their own."""
        resized = [in_channel_order(self.resize(im, canvas), self.spec.color) for im in images]
        if canvas is None:
            canvas = self.pad(max(r.shape[1] for r in resized), max(r.shape[2] for r in resized))
        fill = [v / 255.0 for v in self.spec.pixel_mean]  # the pixel mean, in 0..1
        batch = torch.tensor(fill, dtype=torch.float32).view(1, 3, 1, 1).repeat(len(images), 1, *canvas)
        for b, r in enumerate(resized):
            batch[b, :, : r.shape[1], : r.shape[2]] = r
        scale = self.spec.input_scale
        return Canvas(images=batch * scale if scale != 1.0 else batch,
                      resized_hw=[(r.shape[1], r.shape[2]) for r in resized],
                      original_hw=original_hw or [(im.shape[1], im.shape[2]) for im in images])
