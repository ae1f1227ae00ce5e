"""detectron2's inference rules in torchvision's detectors: the three places where they differ in what
is kept, so that an imported detectron2 checkpoint gives the official detections.

- RetinaNet: boxes are not clipped before NMS (detectron2 clips once, after NMS, to the image's size);
  torchvision clips each level's boxes first, which changes IoUs.
- RPN: proposals are kept when non-empty (w > 0 and h > 0; detectron2's MIN_SIZE 0) and suppressed by
  their objectness logits; torchvision drops boxes under 1e-3 px and suppresses by sigmoid(logit),
  which ties for logits above ~17.
- RoI heads: no small-box filter (torchvision drops boxes under 1e-2 px).
Training is torchvision's, unchanged. The exported graph follows the same rules (export/).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork as TorchvisionRPN
from torchvision.ops import boxes as box_ops


def nonempty(boxes: Tensor) -> Tensor:
    """detectron2's Boxes.nonempty(): width and height above 0, as a mask."""
    return ((boxes[..., 2] - boxes[..., 0]) > 0) & ((boxes[..., 3] - boxes[..., 1]) > 0)


class RetinaNet(TorchvisionRetinaNet):
    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        detections = []
        for index in range(len(image_shapes)):
            boxes, scores, labels = [], [], []
            for deltas, logits, level_anchors in zip(head_outputs["bbox_regression"], head_outputs["cls_logits"],
                                                     anchors[index]):
                num_classes = logits.shape[-1]
                prob = torch.sigmoid(logits[index]).flatten()  # [h*w*A*K], anchor-major
                candidates = torch.nonzero(prob > self.score_thresh).flatten()
                top, order = prob[candidates].topk(min(self.topk_candidates, len(candidates)))
                candidates = candidates[order]
                anchor_idx = torch.div(candidates, num_classes, rounding_mode="floor")
                boxes.append(self.box_coder.decode_single(deltas[index][anchor_idx], level_anchors[anchor_idx]))
                scores.append(top)
                labels.append(candidates % num_classes)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": box_ops.clip_boxes_to_image(boxes[keep], image_shapes[index]),
                               "scores": scores[keep], "labels": labels[keep]})
        return detections


class RegionProposalNetwork(TorchvisionRPN):
    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        b = proposals.shape[0]
        objectness = objectness.detach().reshape(b, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)])
        top_idx = self._get_top_n_idx(objectness, num_anchors_per_level)  # per level, by logit
        rows = torch.arange(b, device=proposals.device)[:, None]
        objectness, proposals, levels = objectness[rows, top_idx], proposals[rows, top_idx], levels[top_idx]
        final_boxes, final_scores = [], []
        for boxes, logits, lvl, image_shape in zip(proposals, objectness, levels, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            keep = nonempty(boxes) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(logits)
            boxes, logits, lvl = boxes[keep], logits[keep], lvl[keep]
            keep = box_ops.batched_nms(boxes, logits, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(torch.sigmoid(logits[keep]))
        return final_boxes, final_scores


class RoIHeads(TorchvisionRoIHeads):
    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        num_classes = class_logits.shape[-1]
        per_image = [len(p) for p in proposals]
        all_boxes = self.box_coder.decode(box_regression, proposals).split(per_image)
        all_scores = F.softmax(class_logits, -1).split(per_image)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, image_shape in zip(all_boxes, all_scores, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)  # class 0: background
            labels = torch.arange(1, num_classes, device=scores.device).expand(len(scores), -1).reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            inds = torch.nonzero(scores > self.score_thresh).flatten()
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels
