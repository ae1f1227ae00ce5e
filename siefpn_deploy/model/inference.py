"""Eager inference on already-preprocessed canvases: the PyTorch reference of every deployed artifact.

torchvision's detectors resize each image in their transform (MIN/MAX_SIZE_TEST). A deployed graph
gets a canvas that the runtime has already resized and padded, so its reference must see that same
canvas unresized. This runs the detector's own modules and its own postprocessing
(`postprocess_detections`, RPN filtering, RoI heads, mask pasting) on the canvas as given.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image


@torch.no_grad()
def detect_on_canvas(detector: nn.Module, canvas: Tensor, *, paste_masks: bool = True,
                     backbone: Callable[[Tensor], dict[str, Tensor]] | None = None) -> list[dict[str, Tensor]]:
    """canvas [B,3,H,W] RGB in 0..1 (H, W multiples of the size divisibility) -> per-image detections
    in canvas pixels: boxes [N,4], scores [N], labels [N] (1-based), and for Mask R-CNN masks [N,1,H,W]
    pasted on the canvas (or the head's [N,1,28,28] probabilities with paste_masks=False).
    `backbone` replaces the call of detector.backbone (e.g. a CUDA-graph replay of it)."""
    if detector.training:
        raise ValueError("detect_on_canvas needs the detector in eval mode")
    transform = detector.transform
    x = torch.stack([transform.normalize(im) for im in canvas])
    hw = (int(canvas.shape[2]), int(canvas.shape[3]))
    images = ImageList(x, [hw] * len(x))
    features = (backbone or detector.backbone)(images.tensors)
    if isinstance(detector, RetinaNet):
        feats = list(features.values())
        head = detector.head(feats)
        anchors = detector.anchor_generator(images, feats)
        per_level = [f.shape[2] * f.shape[3] for f in feats]
        a = head["cls_logits"].shape[1] // sum(per_level)  # anchors per location
        per_level = [n * a for n in per_level]
        split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(anc.split(per_level)) for anc in anchors]
        detections = detector.postprocess_detections(split_head, split_anchors, images.image_sizes)
    else:
        proposals, _ = detector.rpn(images, features)
        detections, _ = detector.roi_heads(features, proposals, images.image_sizes)
    for d in detections if paste_masks else []:
        if "masks" in d:
            d["masks"] = paste_masks_in_image(d["masks"], d["boxes"], hw)
    return detections
