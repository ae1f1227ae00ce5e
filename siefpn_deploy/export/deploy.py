"""The deploy wrapper: the one module that turns a trained detector into the graph `core.contract`
defines (images in; num_dets, boxes, scores, labels and, for Mask R-CNN, masks out).

It wraps the trained torchvision detector's own modules (backbone, heads, box coders, anchors)
without changing them; only the postprocessing is re-expressed with static shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from ..core.contract import BOXES, DETECTION_OUTPUTS, LABELS, MASKS, PAD_LABEL, PreprocessSpec
from ..model.torchvision_api import rpn_test_top_n
from .nms import BatchedNMS
from .options import BOX_CANDIDATES, ROI_SAMPLES
from .rcnn import BoxDecoder, MaskDecoder, RPNDecoder
from .retinanet import RetinaNetDecoder
from .roi_align import MultiScaleRoIAlign


@dataclass(frozen=True)
class PostprocessSettings:
    """What the export stage decides about the graph's postprocessing (recorded in meta.json)."""

    nms: type[BatchedNMS]
    box_candidates: int = BOX_CANDIDATES  # R-CNN box head: best per-class candidates entering NMS
    roi_align: str = "onnx"  # export.roi_align.ROI_ALIGN_LOWERINGS
    roi_samples: int = ROI_SAMPLES  # the gather lowering's bound on adaptive samples per bin and axis
    mask_detections: int | None = None  # Mask R-CNN: mask head on the first N detections (None: all K)
    masks_on_detections: bool = False  # the .pt2: on the row bucket that holds the batch's detections (MaskDecoder)


class DeployDetector(nn.Module):
    def __init__(self, *, backbone: nn.Module, decoder: nn.Module, preprocess: PreprocessSpec,
                 autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        # a reduced-precision package (export --format aoti --precision fp16): the network under autocast, as
        # the eager fp16-autocast baseline runs it; the outputs keep the contract's dtypes
        self.autocast_dtype = autocast_dtype
        # the contract's normalisation: input -> 0..255, then (x - mean) / std in 0..255 units (detectron2's
        # arithmetic exactly, at the default input range 255)
        self.to_255 = 255.0 / float(preprocess.input_scale)
        self.register_buffer("mean", torch.tensor(preprocess.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.decoder.output_names

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        """images [B,3,H,W] in 0..input_scale, image_sizes [B,2] int32 (height, width) -> the contract's outputs."""
        x = images if self.to_255 == 1.0 else images * self.to_255
        if self.autocast_dtype is None:  # FP32: no autocast scope at all, so the ONNX graph's node names stay put
            return self._run(x, image_sizes)
        with torch.autocast(images.device.type, dtype=self.autocast_dtype):
            out = self._run(x, image_sizes)
        return tuple(t.float() if t.is_floating_point() else t for t in out)

    def _run(self, x: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        features = list(self.backbone((x - self.mean) / self.std).values())
        outputs = self.decoder(features, image_sizes)
        return tuple(outputs[name] for name in self.output_names)


class OneStageDecoder(nn.Module):
    output_names = DETECTION_OUTPUTS

    def __init__(self, *, decoder: RetinaNetDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, features: list[Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        return self.decoder(features, image_sizes)


class TwoStageDecoder(nn.Module):
    """RPN -> box head [-> mask head]; the RoI heads read the strides-4..32 levels (p2..p5)."""

    def __init__(self, *, rpn: RPNDecoder, boxes: BoxDecoder, masks: MaskDecoder | None, roi_levels: int) -> None:
        super().__init__()
        self.rpn = rpn
        self.boxes = boxes
        self.masks = masks
        self.roi_levels = roi_levels
        self.output_names = DETECTION_OUTPUTS + ((MASKS,) if masks is not None else ())

    def forward(self, features: list[Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        proposals, proposals_valid = self.rpn(features, image_sizes)
        roi_features = features[: self.roi_levels]
        out = self.boxes(roi_features, proposals, proposals_valid, image_sizes)
        if self.masks is not None:
            masks = self.masks(roi_features, out[BOXES], out[LABELS])
            out[MASKS] = masks * (out[LABELS] != PAD_LABEL)[..., None, None].to(masks.dtype)
        return out


def build_deploy_model(detector: nn.Module, *, settings: PostprocessSettings, preprocess: PreprocessSpec,
                       autocast_dtype: torch.dtype | None = None) -> DeployDetector:
    """Wrap a trained torchvision RetinaNet / FasterRCNN / MaskRCNN (in eval mode) for export (optionally under
    autocast to `autocast_dtype`)."""
    strides = [spec.stride for spec in detector.backbone.output_shape().values()]
    if isinstance(detector, RetinaNet):
        nms = settings.nms(iou_threshold=detector.nms_thresh, max_keep=detector.detections_per_img,
                           num_groups=detector.head.classification_head.num_classes)
        decoder: nn.Module = OneStageDecoder(decoder=RetinaNetDecoder(detector=detector, nms=nms))
    elif isinstance(detector, FasterRCNN):
        heads = detector.roi_heads
        pool = heads.box_roi_pool  # model.poolers.ROIPooler
        roi_strides = pool.strides

        def align(pooler) -> MultiScaleRoIAlign:
            return MultiScaleRoIAlign(strides=pooler.strides, output_size=pooler.output_size,
                                      sampling_ratio=pooler.sampling_ratio, aligned=pooler.aligned,
                                      lowering=settings.roi_align, max_samples=settings.roi_samples)

        rpn_nms = settings.nms(iou_threshold=detector.rpn.nms_thresh, max_keep=rpn_test_top_n(detector.rpn)[1],
                               num_groups=len(strides))
        box_nms = settings.nms(iou_threshold=heads.nms_thresh, max_keep=heads.detections_per_img,
                               num_groups=heads.box_predictor.cls_score.out_features)
        box_align = align(pool)
        masks = None
        if isinstance(detector, MaskRCNN):
            masks = MaskDecoder(detector=detector, roi_align=align(heads.mask_roi_pool),
                                rows=settings.mask_detections or heads.detections_per_img,
                                on_detections=settings.masks_on_detections)
        decoder = TwoStageDecoder(
            rpn=RPNDecoder(detector=detector, nms=rpn_nms),
            boxes=BoxDecoder(detector=detector, roi_align=box_align, nms=box_nms,
                             box_candidates=settings.box_candidates),
            masks=masks,
            roi_levels=len(roi_strides),
        )
    else:
        raise TypeError(f"cannot export a {type(detector).__name__}: expected RetinaNet, FasterRCNN or MaskRCNN")
    return DeployDetector(backbone=detector.backbone, decoder=decoder, preprocess=preprocess,
                          autocast_dtype=autocast_dtype).eval()
