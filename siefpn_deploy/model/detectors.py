"""RetinaNet, Faster R-CNN and Mask R-CNN from torchvision, with a Dual SIE-FPN (or FPN) neck."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, RPNHead, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead

from ..core.config import Config
from ..core.contract import MASK_POOL_SIZE
from .anchors import AnchorGenerator
from .backbone import BackboneWithNeck, build_resnet_body
from .heads import RegionProposalNetwork, RetinaNet, RoIHeads
from .neck import FPN, DualSIEFPN, LastLevelMaxPool, LastLevelP6P7
from .poolers import ROIPooler
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
        stride_in_1x1=m.RESNET_STRIDE_IN_1X1,
    )
    channels = m.FPN_OUT_CHANNELS
    if m.META_ARCHITECTURE == "retinanet":
        top_block: nn.Module = LastLevelP6P7(in_channels=in_shapes["c5"].channels, out_channels=channels)
    else:
        top_block = LastLevelMaxPool()
    neck_cls = DualSIEFPN if m.NECK == "dual_sie_fpn" else FPN
    neck = neck_cls(in_shapes=in_shapes, out_channels=channels, top_block=top_block)
    return BackboneWithNeck(body=body, neck=neck)


def build_anchor_generator(cfg: Config, strides: list[int]) -> AnchorGenerator:
    """detectron2's anchors (model/anchors.py): per level, OCTAVE_SCALES unrounded sizes x * 2**(i/n)."""
    m = cfg.MODEL
    n = m.ANCHOR_OCTAVE_SCALES
    sizes = [[s * 2 ** (i / n) for i in range(n)] for s in m.ANCHOR_SIZES]
    return AnchorGenerator(sizes=sizes, aspect_ratios=list(m.ANCHOR_ASPECT_RATIOS), strides=strides)


def build_pooler(cfg: Config, backbone: BackboneWithNeck, output_size: int) -> ROIPooler:
    """The RoI heads read p2..p5 (not p6), with detectron2's POOLER_TYPE and sampling ratio."""
    m = cfg.MODEL
    levels = {name: spec.stride for name, spec in backbone.output_shape().items() if name != "p6"}
    return ROIPooler(featmap_names=list(levels), strides=list(levels.values()), output_size=output_size,
                     sampling_ratio=m.ROI_POOLER_SAMPLING_RATIO, aligned=m.ROI_POOLER_TYPE == "ROIAlignV2")


def build_detector(cfg: Config, *, num_classes: int) -> nn.Module:
    """`num_classes` counts the dataset's categories; torchvision's background class 0 is added here, so the
    model's labels are the contract's 1..C (`core.contract`).

    The model takes images in 0..1 in INPUT.FORMAT's channel order; PIXEL_MEAN/STD are in 0..255 units."""
    m, inp = cfg.MODEL, cfg.INPUT
    backbone = build_backbone(cfg)
    strides = [spec.stride for spec in backbone.output_shape().values()]
    anchors = build_anchor_generator(cfg, strides)
    channels = backbone.out_channels
    # The data pipeline does detectron2's train-time resize; the model's transform resizes only at
    # test time (MIN/MAX_SIZE_TEST), normalises, and pads to SIZE_DIVISIBILITY.
    transform = dict(
        min_size=inp.MIN_SIZE_TEST,
        max_size=inp.MAX_SIZE_TEST,
        image_mean=[v / 255.0 for v in m.PIXEL_MEAN],
        image_std=[v / 255.0 for v in m.PIXEL_STD],
        size_divisible=inp.SIZE_DIVISIBILITY,
        **transform_skip_train_resize(),
    )
    if m.META_ARCHITECTURE == "retinanet":
        norm = partial(nn.GroupNorm, min(32, channels // 4)) if m.RETINANET_HEAD_NORM == "GN" else None
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1, norm_layer=norm)
        retinanet = RetinaNet(
            backbone,
            num_classes + 1,
            head=head,
            score_thresh=m.SCORE_THRESH_TEST,
            nms_thresh=m.NMS_THRESH_TEST,
            detections_per_img=m.DETECTIONS_PER_IMAGE,
            topk_candidates=m.RETINANET_TOPK_CANDIDATES_TEST,
            **transform,
        )
        # torchvision's constructors type-check for their own anchor and pooler classes, so detectron2's are
        # set after construction (as torchvision's fine-tuning recipes replace a predictor)
        retinanet.anchor_generator = anchors
        return retinanet
    box_head = TwoMLPHead(channels * 7 * 7, m.ROI_BOX_HEAD_DIM)
    box_predictor = FastRCNNPredictor(m.ROI_BOX_HEAD_DIM, num_classes + 1)
    cls = FasterRCNN if m.META_ARCHITECTURE == "faster_rcnn" else MaskRCNN
    masks = {}
    if cls is MaskRCNN:
        dim = m.ROI_MASK_HEAD_DIM or channels
        masks = {"mask_head": MaskRCNNHeads(channels, (dim,) * 4, 1),
                 "mask_predictor": MaskRCNNPredictor(dim, dim, num_classes + 1)}
    detector = cls(backbone, box_head=box_head, box_predictor=box_predictor, **masks, **transform)
    if masks:
        masks["mask_roi_pool"] = build_pooler(cfg, backbone, MASK_POOL_SIZE)
    # detectron2's anchors, poolers and inference rules (model/heads.py), with torchvision's training defaults;
    # set after construction, as torchvision's constructors type-check for their own anchor and pooler classes
    detector.rpn = RegionProposalNetwork(
        anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n={"training": 2000, "testing": m.RPN_PRE_NMS_TOPK_TEST},
        post_nms_top_n={"training": 2000, "testing": m.RPN_POST_NMS_TOPK_TEST},
        nms_thresh=m.RPN_NMS_THRESH)
    detector.roi_heads = RoIHeads(
        build_pooler(cfg, backbone, 7), box_head, box_predictor,
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25, bbox_reg_weights=None,
        score_thresh=m.SCORE_THRESH_TEST, nms_thresh=m.NMS_THRESH_TEST, detections_per_img=m.DETECTIONS_PER_IMAGE,
        **masks)
    return detector
