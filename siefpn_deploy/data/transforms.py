"""Detectron2-style training augmentation on (image [3, H, W], target) pairs.

Every random choice is drawn from the `torch.Generator` passed in (one per sample, seeded by the
training sampler), never from the global RNG: a resumed run repeats the augmentation exactly, with
any number of DataLoader workers. Padding and normalisation are left to the model's own transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Target = dict[str, torch.Tensor]


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge.get_output_shape: (new_h, new_w)."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


class ResizeShortestEdge:
    def __init__(self, *, short_edge_lengths: Sequence[int], max_size: int):
        if not short_edge_lengths or min(short_edge_lengths) <= 0 or max_size <= 0:
            raise ValueError(f"bad resize: short_edge_lengths={short_edge_lengths}, max_size={max_size}")
        self.short_edge_lengths = [int(s) for s in short_edge_lengths]
        self.max_size = int(max_size)

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator) -> tuple[torch.Tensor, Target]:
        h, w = image.shape[-2:]
        short = self.short_edge_lengths[int(torch.randint(len(self.short_edge_lengths), (), generator=generator))]
        new_h, new_w = shortest_edge_size(h, w, short, self.max_size)
        if (new_h, new_w) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                              align_corners=False, antialias=False)[0]
        target = dict(target)
        if "boxes" in target:
            scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=target["boxes"].dtype)
            target["boxes"] = target["boxes"] * scale
        if "masks" in target:
            masks = target["masks"]  # [N, H, W] uint8
            if masks.shape[0]:
                masks = F.interpolate(masks[None].float(), size=(new_h, new_w), mode="nearest")[0]
            target["masks"] = masks.new_zeros((0, new_h, new_w)) if not masks.shape[0] else masks.to(torch.uint8)
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(short_edge_lengths={self.short_edge_lengths}, max_size={self.max_size})"


class RandomHorizontalFlip:
    def __init__(self, *, prob: float = 0.5):
        self.prob = float(prob)

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator) -> tuple[torch.Tensor, Target]:
        if not float(torch.rand((), generator=generator)) < self.prob:
            return image, target
        w = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        if "boxes" in target:
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def build_train_transforms(*, min_sizes: Sequence[int], max_size: int, flip_prob: float) -> Compose:
    return Compose([ResizeShortestEdge(short_edge_lengths=min_sizes, max_size=max_size),
                    RandomHorizontalFlip(prob=flip_prob)])
