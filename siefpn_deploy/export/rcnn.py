"""Faster/Mask R-CNN postprocessing in the graph: RPN proposals, box head, mask head; shape-static.

Each step equals the eager step (`model.heads`: detectron2's RPN and box-head rules; torchvision's
`maskrcnn_inference`) with fixed-size tensors and validity masks.
The one bounded difference: the box head's per-class candidates are cut to the best
`box_candidates` before NMS (TensorRT's TopK allows K <= 3840; torchvision keeps them all), which
changes nothing unless fewer than K detections survive NMS among them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from ..core.contract import PAD_LABEL
from ..model.heads import nonempty
from ..model.torchvision_api import rpn_test_top_n
from .decode import clip_boxes, decode, gather_rows, select_detections, topk_valid
from .nms import BatchedNMS
from .roi_align import MultiScaleRoIAlign


def _flatten_level(x: Tensor, channels: int) -> Tensor:
    """[B, A*C, h, w] -> [B, h*w*A, C], torchvision's permute_and_flatten order."""
    b, _, h, w = x.shape
    return x.view(b, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels)


class RPNDecoder(nn.Module):
    """Proposals [B,R,4] + valid [B,R]: per-level top-n by logit, decode, clip, non-empty, per-level NMS by logit."""

    def __init__(self, *, detector: FasterRCNN, nms: BatchedNMS) -> None:
        super().__init__()
        rpn = detector.rpn
        self.head = rpn.head
        self.box_coder = rpn.box_coder
        self.anchors = rpn.anchor_generator
        self.pre_nms_top_n = rpn_test_top_n(rpn)[0]
        self.nms = nms  # groups are levels; max_keep is post_nms_top_n

    def forward(self, features: list[Tensor], image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        objectness, deltas = self.head(features)
        boxes, logits, levels, valid = [], [], [], []
        for level, (obj, delta, feature) in enumerate(zip(objectness, deltas, features)):
            obj = _flatten_level(obj, 1)[..., 0]  # [B, n]
            top, idx, ok = topk_valid(obj, torch.ones_like(obj, dtype=torch.bool), self.pre_nms_top_n)
            anchors = self.anchors.grid(level, feature).to(feature.dtype)[idx]
            decoded = decode(self.box_coder, gather_rows(_flatten_level(delta, 4), idx), anchors)[:, :, 0]
            boxes.append(clip_boxes(decoded, image_sizes))
            logits.append(top)
            levels.append(torch.full_like(idx, level))
            valid.append(ok)
        boxes = torch.cat(boxes, dim=1)
        valid = torch.cat(valid, dim=1) & nonempty(boxes)
        keep, kept = self.nms(boxes, torch.cat(logits, dim=1), torch.cat(levels, dim=1), valid)
        return gather_rows(boxes, keep), kept


class BoxDecoder(nn.Module):
    """Box head on the proposals, class-specific decode, clip, score filter, class-aware NMS."""

    def __init__(self, *, detector: FasterRCNN, roi_align: MultiScaleRoIAlign, nms: BatchedNMS,
                 box_candidates: int) -> None:
        super().__init__()
        heads = detector.roi_heads
        self.roi_align = roi_align
        self.box_head = heads.box_head
        self.box_predictor = heads.box_predictor
        self.box_coder = heads.box_coder
        self.score_thresh = heads.score_thresh
        self.box_candidates = box_candidates
        self.nms = nms

    def forward(self, features: list[Tensor], proposals: Tensor, proposals_valid: Tensor,
                image_sizes: Tensor) -> dict[str, Tensor]:
        b, r = proposals.shape[:2]
        pooled = self.roi_align(features, proposals)  # [B,R,C,7,7]
        logits, deltas = self.box_predictor(self.box_head(pooled.flatten(0, 1)))
        num_classes = logits.shape[-1]
        boxes = clip_boxes(decode(self.box_coder, deltas.reshape(b, r, -1), proposals), image_sizes)[:, :, 1:]
        scores = torch.softmax(logits, -1).reshape(b, r, num_classes)[:, :, 1:]  # drop background
        labels = torch.arange(1, num_classes, device=scores.device).expand(b, r, -1)
        valid = proposals_valid[..., None] & (scores > self.score_thresh)
        boxes, scores, labels, valid = boxes.flatten(1, 2), scores.flatten(1), labels.flatten(1), valid.flatten(1)
        top, idx, ok = topk_valid(scores, valid, min(self.box_candidates, r * (num_classes - 1)))
        return select_detections(self.nms, gather_rows(boxes, idx), top, torch.gather(labels, 1, idx), ok)


class MaskDecoder(nn.Module):
    """Mask head on the final boxes: the predicted class's probabilities [B,K,M,M] (M = contract.MASK_SIZE).

    The head runs on the first `rows` of the K rows only (rows are in score order), and later rows are
    zeros: a static shape whose cost does not grow with K (export --max-det-masks).

    With `on_detections` (the .pt2) it runs on fewer rows where the batch has fewer detections, as the eager model
    runs it on its detections only: on the first 8, 16, 32, ... or `rows` rows, the smallest that holds every
    image's detections, chosen at run time by `torch.cond`. Each choice is a static shape; a row count known at
    run time only (an unbacked size) would be simpler, but AOTInductor (torch 2.14, CPU) miscompiles the
    channels-last convolutions of the head with one: it reads the first convolution's output as contiguous.
    """

    def __init__(self, *, detector: FasterRCNN, roi_align: MultiScaleRoIAlign, rows: int,
                 on_detections: bool = False) -> None:
        super().__init__()
        heads = detector.roi_heads
        self.roi_align = roi_align
        self.mask_head = heads.mask_head
        self.mask_predictor = heads.mask_predictor
        self.rows = rows
        self.on_detections = on_detections

    def forward(self, features: list[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        n = min(self.rows, boxes.shape[1])
        if not self.on_detections:
            return self.masks(features, boxes, labels, n)
        # detections come first in each image's rows, padding (PAD_LABEL) after them
        count = torch.count_nonzero(labels[:, :n] != PAD_LABEL, dim=1).max()
        buckets = row_buckets(n)
        if torch.compiler.is_compiling():  # torch.export: every bucket compiled, one chosen at run time
            return self.bucketed(features, boxes, labels, count, buckets)
        return self.masks(features, boxes, labels, next(b for b in buckets if count <= b))  # eager

    def bucketed(self, features: list[Tensor], boxes: Tensor, labels: Tensor, count: Tensor,
                 buckets: list[int]) -> Tensor:
        """The head on the first buckets[i] rows, i the first bucket that holds `count` rows (the last holds all)."""
        if len(buckets) == 1:
            return self.masks(features, boxes, labels, buckets[0])
        return torch.cond(count <= buckets[0],
                          lambda feats, rows, names, n: self.masks(feats, rows, names, buckets[0]),
                          lambda feats, rows, names, n: self.bucketed(feats, rows, names, n, buckets[1:]),
                          (features, boxes, labels, count))

    def masks(self, features: list[Tensor], boxes: Tensor, labels: Tensor, n: int) -> Tensor:
        """The head on the first n rows; zeros in the rest."""
        b, k = boxes.shape[:2]
        boxes, labels = boxes[:, :n], labels[:, :n]
        logits = self.mask_predictor(self.mask_head(self.roi_align(features, boxes).flatten(0, 1)))
        logits = logits.reshape(b, n, *logits.shape[1:])  # [B,n,classes,M,M]
        index = labels.clamp(min=0).to(torch.int64).reshape(b, n, 1, 1, 1).expand(-1, -1, 1, *logits.shape[-2:])
        masks = torch.gather(logits, 2, index)[:, :, 0].sigmoid()
        if n == k:
            return masks
        return torch.cat([masks, masks.new_zeros(b, k - n, *masks.shape[-2:])], dim=1)  # [B,K,M,M]


def row_buckets(rows: int, smallest: int = 8) -> list[int]:
    """8, 16, 32, ... below `rows`, then `rows`: at most twice the rows needed, and a few compiled shapes."""
    buckets = []
    while smallest < rows:
        buckets.append(smallest)
        smallest *= 2
    return [*buckets, rows]
