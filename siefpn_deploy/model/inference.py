"""Eager inference on already-preprocessed canvases: the PyTorch reference of every deployed artifact,
and `EagerBackend`, which pads its detections into the contract's fixed-size outputs.

torchvision's detectors resize each image in their transform (MIN/MAX_SIZE_TEST). A deployed graph
gets a canvas that the runtime has already resized and padded, so its reference must see that same
canvas unresized. This runs the detector's own modules and its own postprocessing
(`postprocess_detections`, RPN filtering, RoI heads, mask pasting) on the canvas as given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList

from ..core.contract import BOXES, IMAGE_SIZES, INPUT, LABELS, MASKS, NUM_DETS, SCORES, GraphContract, graph_inputs
from ..core.errors import UserError


@torch.no_grad()
def detect_on_canvas(detector: nn.Module, canvas: Tensor, image_sizes: list[tuple[int, int]] | None = None, *,
                     backbone: Callable[[Tensor], dict[str, Tensor]] | None = None) -> list[dict[str, Tensor]]:
    """canvas [B,3,H,W] in 0..1, in the model's channel order (H, W multiples of the size divisibility), and each
    image's (height, width) on it (default: the whole canvas) -> per-image detections in canvas pixels, clipped
    to the image: boxes [N,4], scores [N], labels [N] (the contract's 1..C), and for Mask R-CNN the head's mask
    probabilities [N,1,M,M] (M = contract.MASK_SIZE).
    `backbone` replaces the call of detector.backbone (e.g. a CUDA-graph replay of it)."""
    if detector.training:
        raise ValueError("detect_on_canvas needs the detector in eval mode")
    transform = detector.transform
    x = torch.stack([transform.normalize(im) for im in canvas])
    hw = (int(canvas.shape[2]), int(canvas.shape[3]))
    images = ImageList(x, [(int(h), int(w)) for h, w in image_sizes] if image_sizes is not None else [hw] * len(x))
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
    return detections


class EagerBackend:
    """A trained torchvision detector, eager PyTorch (CPU or CUDA), as a backend of the graph contract:
    `run(images [B,3,H,W] in 0..input_scale, image_sizes [B,2])` -> the same padded outputs an exported graph
    returns for the same feeds (`core.contract.graph_inputs`).

    On CUDA it can also run under autocast (`autocast_dtype=torch.float16`) and replay the backbone and
    neck as CUDA graphs (`cuda_graphs=True`, one capture per input shape; see cuda_graphs.py)."""

    kind = "pytorch"
    computes_in_torch = True

    def __init__(self, detector: nn.Module, contract: GraphContract, device: torch.device, *,
                 autocast_dtype: torch.dtype | None = None, cuda_graphs: bool = False) -> None:
        if (autocast_dtype is not None or cuda_graphs) and device.type != "cuda":
            raise UserError("FP16 autocast and CUDA graphs need a CUDA device; use --device cuda on a GPU machine")
        self.detector = detector.to(device).eval()
        self.contract = contract
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.backbone = None
        if cuda_graphs:
            from .cuda_graphs import GraphedBackbone

            self.backbone = GraphedBackbone(self.detector.backbone, autocast_dtype=autocast_dtype)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def variant(self) -> str:
        """e.g. "fp32", "fp16-autocast", "fp16-autocast+cuda-graphs"."""
        name = "fp32" if self.autocast_dtype is None else f"{str(self.autocast_dtype).removeprefix('torch.')}-autocast"
        name = name.replace("float16", "fp16").replace("bfloat16", "bf16")
        return name + ("+cuda-graphs" if self.backbone is not None else "")

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feeds = graph_inputs(images, image_sizes)
        batch = torch.from_numpy(feeds[INPUT]).to(self.device) / self.contract.preprocess.input_scale
        autocast: Any = (torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
                         if self.autocast_dtype is not None else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            dets = detect_on_canvas(self.detector, batch, feeds[IMAGE_SIZES].tolist(), backbone=self.backbone)
        out = self.contract.empty_outputs(len(dets))
        for i, d in enumerate(dets):
            n = min(len(d["boxes"]), self.contract.max_detections)
            out[NUM_DETS][i] = n
            out[BOXES][i, :n] = d["boxes"][:n].float().cpu().numpy()
            out[SCORES][i, :n] = d["scores"][:n].float().cpu().numpy()
            out[LABELS][i, :n] = d["labels"][:n].cpu().numpy()
            if MASKS in out:  # as the graph: masks for the first mask_rows rows only
                m = min(n, self.contract.mask_rows)
                out[MASKS][i, :m] = d["masks"][:m, 0].float().cpu().numpy()
        return out
