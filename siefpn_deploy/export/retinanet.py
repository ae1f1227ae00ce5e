"""RetinaNet's postprocessing in the graph: torchvision's `postprocess_detections`, shape-static."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet

from .decode import (
    clip_boxes,
    decode,
    gather_rows,
    grid_anchors,
    select_detections,
    topk_valid,
)
from .nms import BatchedNMS


class RetinaNetDecoder(nn.Module):
    """Per level: sigmoid scores > thresh, top-k candidates, decode, clip; then NMS over all levels."""

    def __init__(self, *, detector: RetinaNet, nms: BatchedNMS) -> None:
        super().__init__()
        self.head = detector.head
        self.box_coder = detector.box_coder
        self.cell_anchors = detector.anchor_generator.cell_anchors  # list of [A,4], one per level
        self.score_thresh = detector.score_thresh
        self.topk_candidates = detector.topk_candidates
        self.nms = nms

    def forward(self, features: list[Tensor], image_hw: tuple) -> dict[str, Tensor]:
        boxes, scores, labels, valid = [], [], [], []
        for feature, cell in zip(features, self.cell_anchors):
            logits = self.head.classification_head([feature])  # [B, h*w*A, K]
            deltas = self.head.regression_head([feature])  # [B, h*w*A, 4]
            num_classes = logits.shape[-1]
            prob = torch.sigmoid(logits).flatten(1)
            top, idx, ok = topk_valid(prob, prob > self.score_thresh, self.topk_candidates)
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            anchors = grid_anchors(cell, feature, image_hw)[anchor_idx]  # [B,k,4]
            decoded = decode(self.box_coder, gather_rows(deltas, anchor_idx), anchors)[:, :, 0]
            boxes.append(clip_boxes(decoded, image_hw))
            scores.append(top)
            labels.append(idx % num_classes)
            valid.append(ok)
        cat = lambda xs: torch.cat(xs, dim=1)
        return select_detections(self.nms, cat(boxes), cat(scores), cat(labels), cat(valid))
