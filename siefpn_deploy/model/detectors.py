"""RetinaNet, Faster R-CNN and Mask R-CNN from torchvision, with a Dual SIE-FPN (or FPN) neck."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from ..core.config import Config
from ..core.contract import MASK_POOL_SIZE
from .backbone import BackboneWithNeck, build_resnet_body
from .neck import FPN, DualSIEFPN, LastLevelMaxPool, LastLevelP6P7
from .torchvision_api import transform_skip_train_resize


def backbone_levels(arch: str) -> list[str]:
    """RetinaNet reads C3..C5 (P3..P7); the R-CNNs read C2..C5 (P2..P6), as in detectron2."""
    return ["c3", "c4", "c5"] if arch == "retinanet" else ["c2", "c3", "c4", "c5"]


def build_backbone(cfg: Config) -> BackboneWithNeck:
    m = cfg.MODEL
    body, in_shapes = build_resnet_body(
        m.BACKBONE,
        levels=backbone_levels(m.META_ARCHITECTURE),
        norm=m.BACKBONE_NORM,
        freeze_at=m.FREEZE_AT,
        weights=m.BACKBONE_WEIGHTS,
    )
    channels = m.FPN_OUT_CHANNELS
    if m.META_ARCHITECTURE == "retinanet":
        top_block: nn.Module = LastLevelP6P7(in_channels=in_shapes["c5"].channels, out_channels=channels)
    else:
        top_block = LastLevelMaxPool()
    neck_cls = DualSIEFPN if m.NECK == "dual_sie_fpn" else FPN
    neck = neck_cls(in_shapes=in_shapes, out_channels=channels, top_block=top_block)
    return BackboneWithNeck(body=body, neck=neck)


def build_anchor_generator(cfg: Config) -> AnchorGenerator:
    m = cfg.MODEL
    n = m.ANCHOR_OCTAVE_SCALES
    sizes = tuple(tuple(round(s * 2 ** (i / n)) for i in range(n)) for s in m.ANCHOR_SIZES)
    ratios = (tuple(m.ANCHOR_ASPECT_RATIOS),) * len(sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=ratios)


def build_detector(cfg: Config, *, num_classes: int) -> nn.Module:
    """`num_classes` counts the dataset's categories; torchvision's background class 0 is added here, so the
    model's labels are the contract's 1..C (`core.contract`)."""
    m, inp = cfg.MODEL, cfg.INPUT
    backbone = build_backbone(cfg)
    anchors = build_anchor_generator(cfg)
    channels = backbone.out_channels
    # The data pipeline does detectron2's train-time resize; the model's transform resizes only at
    # test time (MIN/MAX_SIZE_TEST), normalises, and pads to SIZE_DIVISIBILITY.
    transform = dict(
        min_size=inp.MIN_SIZE_TEST,
        max_size=inp.MAX_SIZE_TEST,
        image_mean=m.PIXEL_MEAN,
        image_std=m.PIXEL_STD,
        size_divisible=inp.SIZE_DIVISIBILITY,
        **transform_skip_train_resize(),
    )
    if m.META_ARCHITECTURE == "retinanet":
        norm = partial(nn.GroupNorm, min(32, channels // 4)) if m.RETINANET_HEAD_NORM == "GN" else None
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1, norm_layer=norm)
        return RetinaNet(
            backbone,
            num_classes + 1,
            anchor_generator=anchors,
            head=head,
            score_thresh=m.SCORE_THRESH_TEST,
            nms_thresh=m.NMS_THRESH_TEST,
            detections_per_img=m.DETECTIONS_PER_IMAGE,
            **transform,
        )
    roi_levels = [name for name in backbone.output_shape() if name != "p6"]
    rcnn = dict(
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=roi_levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, m.ROI_BOX_HEAD_DIM),
        box_predictor=FastRCNNPredictor(m.ROI_BOX_HEAD_DIM, num_classes + 1),
        box_score_thresh=m.SCORE_THRESH_TEST,
        box_nms_thresh=m.NMS_THRESH_TEST,
        box_detections_per_img=m.DETECTIONS_PER_IMAGE,
        **transform,
    )
    if m.META_ARCHITECTURE == "faster_rcnn":
        return FasterRCNN(backbone, **rcnn)
    return MaskRCNN(
        backbone,
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=roi_levels, output_size=MASK_POOL_SIZE, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, (channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes + 1),
        **rcnn,
    )
