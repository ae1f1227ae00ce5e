"""The exported RoIAlign (every lowering) equals torchvision's roi_align per RoI at detectron2's level, in
PyTorch and in ONNX Runtime; the eager ROIPooler's level assignment is detectron2's formula."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim
from torchvision.ops import roi_align

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.export.options import ExportOptions
from siefpn_deploy.export.roi_align import MultiScaleRoIAlign
from siefpn_deploy.model.poolers import ROIPooler, assign_levels

STRIDES = [4, 8, 16, 32]


def pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    """Four levels with distinct content per level and channel."""
    return [F.avg_pool2d(images, s) * (i + 1) + i for i, s in enumerate(STRIDES)]


def clipped_boxes(g: torch.Generator, b: int, n: int, h: int, w: int) -> torch.Tensor:
    """Random boxes clipped to the image, a quarter of them touching a border, some tiny, some whole-image."""
    xy = torch.rand(b, n, 2, generator=g) * torch.tensor([w, h]) * 1.1 - 5
    wh = torch.rand(b, n, 2, generator=g) ** 2 * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + wh], dim=-1)
    boxes[:, ::4, 0] = 0.0
    boxes[:, 1::4, 3] = h
    boxes[:, 2::9, 2:] = boxes[:, 2::9, :2] + 0.3  # sub-pixel RoIs
    boxes[:, 3::11] = torch.tensor([0.0, 0.0, w, h])
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    return boxes


def detectron2_level(box: list[float]) -> int:
    """detectron2's assign_boxes_to_levels for one box, in Python doubles: floor(4 + log2(sqrt(area)/224 + 1e-8))."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    return min(max(math.floor(4 + math.log2(math.sqrt(area) / 224 + 1e-8)), 2), 5) - 2


def reference(features: list[torch.Tensor], boxes: torch.Tensor, size: int, sampling_ratio: int,
              aligned: bool) -> torch.Tensor:
    """torchvision's roi_align, RoI by RoI at its detectron2 level: [B,R,C,P,P]."""
    out = torch.zeros(boxes.shape[0], boxes.shape[1], features[0].shape[1], size, size)
    for b in range(boxes.shape[0]):
        for r, box in enumerate(boxes[b]):
            lvl = detectron2_level(box.tolist())
            rois = torch.cat([torch.tensor([[float(b)]]), box[None]], dim=1)
            out[b, r] = roi_align(features[lvl], rois, size, 1.0 / STRIDES[lvl], sampling_ratio, aligned)[0]
    return out


def test_level_assignment_is_detectron2s_formula():
    g = torch.Generator().manual_seed(0)
    boxes = clipped_boxes(g, 1, 2000, 1344, 1344)[0]
    levels = assign_levels(boxes, min_level=2, max_level=5)
    want = torch.tensor([detectron2_level(b) for b in boxes.double().tolist()])
    # float32 vs double can differ only for an area within rounding of a level boundary
    assert (levels != want).sum() <= 2
    assert levels.unique().tolist() == [0, 1, 2, 3]
    # the boundaries themselves: a 224 px square is level 4, just below is level 3, 112 px is level 3
    squares = torch.tensor([[0, 0, 224, 224], [0, 0, 223.9, 223.9], [0, 0, 112, 112], [0, 0, 111.9, 111.9]])
    assert assign_levels(squares, min_level=2, max_level=5).tolist() == [2, 1, 1, 0]


@pytest.mark.parametrize("lowering", ["gather", "bag", "onnx"])
@pytest.mark.parametrize(("size", "sampling_ratio", "aligned"), [(7, 2, False), (7, 2, True), (14, 2, True)])
def test_fixed_sampling_equals_torchvision_for_every_roi(lowering, size, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(size + sampling_ratio)
    images = torch.rand(2, 8, 160, 224, generator=g)
    boxes = clipped_boxes(g, 2, 150, 160, 224)
    pool = MultiScaleRoIAlign(strides=STRIDES, output_size=size, sampling_ratio=sampling_ratio, aligned=aligned,
                              lowering=lowering)
    want = reference(pyramid(images), boxes, size, sampling_ratio, aligned)
    assert (pool(pyramid(images), boxes) - want).abs().max() <= 1e-4


def test_roialignv2_adaptive_is_exact_within_the_bound_and_only_there():
    """ROIAlignV2 (aligned, sampling ratio 0: ceil(bin) samples per axis). The gather lowering provides up to
    `max_samples` per bin and axis: exact for every RoI whose bins fit, approximate beyond. The onnx lowering
    (the RoiAlign op) is exact for all."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(1, 8, 256, 320, generator=g)
    boxes = clipped_boxes(g, 1, 400, 256, 320)
    features = pyramid(images)
    want = reference(features, boxes, 7, 0, True)
    bound = 3
    got = MultiScaleRoIAlign(strides=STRIDES, output_size=7, sampling_ratio=0, aligned=True, lowering="gather",
                             max_samples=bound)(features, boxes)
    levels = assign_levels(boxes, min_level=2, max_level=5)[0]
    stride = torch.tensor(STRIDES, dtype=torch.float32)[levels]
    bins = (boxes[0, :, 2:] - boxes[0, :, :2]) / stride[:, None] / 7  # bin size in feature pixels (w, h)
    inside = (torch.ceil(bins) <= bound).all(dim=1)
    error = (got - want).abs().flatten(2).amax(dim=2)[0]
    assert inside.sum() > 100 and (~inside).sum() > 20  # both kinds of RoI occur
    assert error[inside].max() <= 1e-4
    assert error[~inside].max() > 1e-3  # beyond the bound it is a fixed-ratio RoIAlign: close, not equal
    exact = MultiScaleRoIAlign(strides=STRIDES, output_size=7, sampling_ratio=0, aligned=True, lowering="onnx")
    assert (exact(features, boxes) - want).abs().max() <= 1e-4
    # the bag lowering sums the same taps: the same bound
    bag = MultiScaleRoIAlign(strides=STRIDES, output_size=7, sampling_ratio=0, aligned=True, lowering="bag",
                             max_samples=bound)
    assert (bag(features, boxes) - got).abs().max() <= 1e-5


@pytest.mark.parametrize(("export", "ratio", "lowering"), [
    ({"format": "aoti"}, 2, "bag"),  # a CPU package at a fixed ratio: exact, and on every thread
    ({"format": "aoti"}, 0, "onnx"),  # adaptive: torchvision's kernel, exact for every RoI
    ({"format": "aoti", "device": "cuda"}, 2, "onnx"),  # CUDA's kernel is parallel already
    ({"format": "aoti", "roi_align": "gather"}, 2, "gather"),  # a choice is kept
    ({"format": "onnx"}, 2, "onnx"),
    ({"format": "onnx", "nms": "tensor"}, 2, "gather"),
])
def test_the_bag_lowering_is_a_cpu_package_s_default_at_a_fixed_ratio(export, ratio, lowering):
    cfg = load_config("synth_faster_rcnn_R18", ["MODEL.ROI_POOLER_SAMPLING_RATIO", str(ratio)])
    assert ExportOptions(**export).resolved(cfg, "synth_faster_rcnn_R18").roi_align_lowering == lowering
    # RetinaNet has no RoIAlign: its options (and so its export's request) stay as they were
    retinanet = load_config("synth_retinanet_R18", ["MODEL.ROI_POOLER_SAMPLING_RATIO", str(ratio)])
    assert ExportOptions(**export).resolved(retinanet, "synth_retinanet_R18").roi_align == export.get("roi_align")


def test_the_bag_lowering_is_refused_for_onnx_in_one_line():
    cfg = load_config("synth_faster_rcnn_R18", [])
    with pytest.raises(UserError, match="--roi-align bag is for --format aoti packages"):
        ExportOptions(roi_align="bag").resolved(cfg, "synth_faster_rcnn_R18").validate()


def test_eager_pooler_equals_torchvision_roi_by_roi():
    g = torch.Generator().manual_seed(9)
    images = torch.rand(2, 8, 160, 224, generator=g)
    boxes = clipped_boxes(g, 2, 60, 160, 224)
    features = pyramid(images)
    pooler = ROIPooler(featmap_names=["p2", "p3", "p4", "p5"], strides=STRIDES, output_size=7, sampling_ratio=0,
                       aligned=True)
    got = pooler(dict(zip(["p2", "p3", "p4", "p5"], features)), list(boxes))
    assert torch.allclose(got.reshape(2, 60, 8, 7, 7), reference(features, boxes, 7, 0, True), atol=1e-6)


class Pool(nn.Module):
    def __init__(self, lowering: str) -> None:
        super().__init__()
        self.pool = MultiScaleRoIAlign(strides=STRIDES, output_size=7, sampling_ratio=0 if lowering == "onnx" else 2,
                                       aligned=True, lowering=lowering)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.pool(pyramid(images), boxes)


@pytest.mark.parametrize("lowering", ["gather", "onnx"])
def test_onnx_equals_torchvision_at_sizes_other_than_the_example(lowering, tmp_path):
    g = torch.Generator().manual_seed(5)
    example = torch.rand(2, 4, 256, 320, generator=g)
    b, h, w = Dim("b", min=1, max=8), Dim("h", min=2, max=40), Dim("w", min=2, max=40)
    program = torch.onnx.export(Pool(lowering).eval(), (example, clipped_boxes(g, 2, 30, 256, 320)), dynamo=True,
                                input_names=["images", "boxes"],
                                dynamic_shapes={"images": {0: b, 2: 32 * h, 3: 32 * w},
                                                "boxes": {0: b, 1: Dim("n", min=1, max=4096)}})
    program.save(str(tmp_path / "roi.onnx"))
    session = ort.InferenceSession(str(tmp_path / "roi.onnx"), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert ("RoiAlign" in ops) == (lowering == "onnx")
    for hh, ww in [(256, 320), (192, 320), (320, 192), (96, 96)]:
        images = torch.rand(3, 4, hh, ww, generator=g)
        boxes = clipped_boxes(g, 3, 40, hh, ww)
        got = session.run(None, {"images": images.numpy(), "boxes": boxes.numpy()})[0]
        want = reference(pyramid(images), boxes, 7, 0 if lowering == "onnx" else 2, True).numpy()
        assert np.abs(got - want).max() <= 1e-4, (hh, ww)
