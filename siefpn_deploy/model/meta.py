"""A model's description as a runtime reads it: the graph contract for its config, its shape ranges,
postprocessing settings and classes. Export writes it to NAME.meta.json; the PyTorch runtime describes
a checkpoint with the same function, so both read alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import Config
from ..core.contract import GraphContract, PreprocessSpec, ShapeRange
from ..core.sidecar import sha256_of
from .torchvision_api import rpn_test_top_n


def default_size_range(cfg: Config) -> ShapeRange:
    """H and W from the smallest input (2 x divisibility: the GAU max-pools the stride-32 level 2x2) to the
    test resize's long side, padded to the divisibility."""
    div = cfg.INPUT.SIZE_DIVISIBILITY
    return ShapeRange(2 * div, -(-cfg.INPUT.MAX_SIZE_TEST // div) * div)


def contract_for(cfg: Config, *, input_scale: float = 255.0, mask_detections: int | None = None) -> GraphContract:
    m, i = cfg.MODEL, cfg.INPUT
    return GraphContract(
        architecture=m.META_ARCHITECTURE, max_detections=m.DETECTIONS_PER_IMAGE, mask_detections=mask_detections,
        preprocess=PreprocessSpec(min_size=i.MIN_SIZE_TEST, max_size=i.MAX_SIZE_TEST, divisibility=i.SIZE_DIVISIBILITY,
                                  pixel_mean=tuple(m.PIXEL_MEAN), pixel_std=tuple(m.PIXEL_STD),
                                  input_scale=input_scale, color=i.FORMAT))


def model_meta(cfg: Config, detector: nn.Module, classes: dict[str, list], *, batch: ShapeRange, height: ShapeRange,
               width: ShapeRange, input_scale: float = 255.0, nms: str | None = None,
               box_candidates: int | None = None, mask_detections: int | None = None) -> dict[str, Any]:
    """The contract, shape ranges, postprocessing, classes, versions and source of a trained detector."""
    import torchvision

    from .. import __version__

    m, d = cfg.MODEL, cfg.DATASETS
    post: dict[str, Any] = {"score_thresh": m.SCORE_THRESH_TEST, "iou_thresh": m.NMS_THRESH_TEST, "nms": nms}
    if m.META_ARCHITECTURE == "retinanet":
        post["topk_candidates"] = detector.topk_candidates
    else:
        pre_nms, post_nms = rpn_test_top_n(detector.rpn)
        post["rpn"] = {"pre_nms_top_n": pre_nms, "post_nms_top_n": post_nms, "iou_thresh": detector.rpn.nms_thresh}
        post["box_candidates"] = box_candidates
    return {
        **contract_for(cfg, input_scale=input_scale, mask_detections=mask_detections).as_meta(),
        "backbone": m.BACKBONE, "neck": m.NECK,
        "shapes": {"batch": vars(batch), "height": vars(height), "width": vars(width)},
        "postprocess": post,
        "classes": {"names": list(classes["names"]), "category_ids": [int(c) for c in classes["category_ids"]]},
        "precision": "fp32",
        "versions": {"siefpn_deploy": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
        "source": {"weights": str(m.WEIGHTS), "weights_sha256": _sha256_or_none(m.WEIGHTS)},
        # where calibration finds training images by default, and which split it must never use
        "datasets": {"train_images": d.TRAIN_IMAGES, "train_annotations": d.TRAIN_ANNOTATIONS,
                     "test_images": d.TEST_IMAGES, "test_annotations": d.TEST_ANNOTATIONS},
    }


def _sha256_or_none(path: str) -> str | None:
    return sha256_of(path) if path and Path(path).is_file() else None
