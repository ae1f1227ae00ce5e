"""Shape-static building blocks of in-graph postprocessing, each equal to torchvision's eager step.

Every selection is a TopK over a fixed K plus a validity mask, never boolean indexing or NonZero,
so the graph has no data-dependent shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.contract import BOXES, LABELS, NUM_DETS, PAD_LABEL, SCORES


def topk_valid(scores: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k of the valid scores [B,N] for any N, also N < k: (scores [B,k], indices [B,k], valid [B,k]).

    Padding with k invalid slots keeps k static; padded slots point at index 0 and are invalid.
    """
    b = scores.shape[0]
    lowest = torch.finfo(scores.dtype).min
    keys = torch.cat([torch.where(valid, scores, lowest), scores.new_full((b, k), lowest)], dim=1)
    flags = torch.cat([valid, valid.new_zeros((b, k))], dim=1)
    top, idx = torch.topk(keys, k, dim=1)
    ok = torch.gather(flags, 1, idx)
    return top, torch.where(ok, idx, torch.zeros_like(idx)), ok


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B,N,...] gathered along N by idx [B,M] -> [B,M,...]."""
    view = idx.reshape(idx.shape + (1,) * (x.dim() - 2))
    return torch.gather(x, 1, view.expand(idx.shape + x.shape[2:]))


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """detectron2's Boxes.clip per image: boxes [B,...,4] xyxy, image_sizes [B,2] (height, width) -> x in [0,W_b],
    y in [0,H_b]."""
    limits = image_sizes.flip(-1).to(boxes.dtype).view(boxes.shape[0], *[1] * (boxes.dim() - 2), 2)  # (W, H)
    xy = boxes.unflatten(-1, (2, 2)).clamp(min=0)  # [..., corner, (x, y)]
    return torch.minimum(xy, limits.unsqueeze(-2)).flatten(-2)


def decode(box_coder, deltas: Tensor, references: Tensor) -> Tensor:
    """torchvision BoxCoder.decode_single, batched: deltas [B,N,4*C], references [B,N,4] -> [B,N,C,4]."""
    b, n = deltas.shape[:2]
    out = box_coder.decode_single(deltas.reshape(b * n, -1), references.reshape(b * n, 4))
    return out.reshape(b, n, -1, 4)


def select_detections(nms, boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Class-aware NMS, then the contract's fixed-size outputs, padded after num_dets (boxes 0, scores 0,
    labels PAD_LABEL)."""
    keep, kept = nms(boxes, scores, labels, valid)  # [B,K]
    boxes = torch.where(kept[..., None], gather_rows(boxes, keep), torch.zeros_like(boxes[:, :1]))
    scores = torch.where(kept, torch.gather(scores, 1, keep), torch.zeros_like(scores[:, :1]))
    labels = torch.where(kept, torch.gather(labels, 1, keep), torch.full_like(labels[:, :1], PAD_LABEL))
    return {NUM_DETS: kept.sum(dim=1).to(torch.int32), BOXES: boxes, SCORES: scores, LABELS: labels.to(torch.int32)}
