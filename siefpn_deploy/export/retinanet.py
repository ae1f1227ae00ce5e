"""RetinaNet's postprocessing in the graph: `model.heads.RetinaNet.postprocess_detections` (detectron2's rules:
no clipping before NMS, boxes clipped to the image after it), shape-static."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet

from ..core.contract import BOXES
from .decode import clip_boxes, decode, gather_rows, select_detections, topk_valid
from .nms import BatchedNMS


class RetinaNetDecoder(nn.Module):
    """Per level: sigmoid scores > thresh, top-k candidates, decode; then NMS over all levels, and the kept boxes
    clipped to each image's size (detectron2 clips them in detector_postprocess, after NMS)."""

    def __init__(self, *, detector: RetinaNet, nms: BatchedNMS) -> None:
        super().__init__()
        self.head = detector.head
        self.box_coder = detector.box_coder
        self.anchors = detector.anchor_generator
        self.score_thresh = detector.score_thresh
        self.topk_candidates = detector.topk_candidates
        self.nms = nms

    def forward(self, features: list[Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        boxes, scores, labels, valid = [], [], [], []
        for level, feature in enumerate(features):
            logits = self.head.classification_head([feature])  # [B, h*w*A, K]
            deltas = self.head.regression_head([feature])  # [B, h*w*A, 4]
            num_classes = logits.shape[-1]
            prob = torch.sigmoid(logits).flatten(1)
            top, idx, ok = topk_valid(prob, prob > self.score_thresh, self.topk_candidates)
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            anchors = self.anchors.grid(level, feature).to(feature.dtype)[anchor_idx]  # [B,k,4]
            boxes.append(decode(self.box_coder, gather_rows(deltas, anchor_idx), anchors)[:, :, 0])
            scores.append(top)
            labels.append(idx % num_classes)
            valid.append(ok)
        cat = lambda xs: torch.cat(xs, dim=1)
        out = select_detections(self.nms, cat(boxes), cat(scores), cat(labels), cat(valid))
        out[BOXES] = clip_boxes(out[BOXES], image_sizes)
        return out
