"""The GridSample RoIAlign equals torchvision's MultiScaleRoIAlign, in PyTorch and in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim
from torchvision.ops import MultiScaleRoIAlign as TorchvisionPool
from torchvision.ops.poolers import initLevelMapper

from siefpn_deploy.export.roi_align import MultiScaleRoIAlign, level_of

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


def reference(features: list[torch.Tensor], boxes: torch.Tensor, hw: tuple[int, int], size: int) -> torch.Tensor:
    pool = TorchvisionPool([str(i) for i in range(len(features))], output_size=size, sampling_ratio=2)
    out = pool({str(i): f for i, f in enumerate(features)}, list(boxes), [hw] * len(boxes))
    return out.reshape(boxes.shape[0], boxes.shape[1], *out.shape[1:])


def test_level_assignment_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    boxes = clipped_boxes(g, 1, 2000, 1344, 1344)[0]
    mapper = initLevelMapper(2, 5)
    assert torch.equal(level_of(boxes, k_min=2, k_max=5), mapper([boxes]))


@pytest.mark.parametrize("size", [7, 14])
def test_eager_equals_torchvision(size):
    g = torch.Generator().manual_seed(size)
    images = torch.rand(2, 8, 160, 224, generator=g)
    boxes = clipped_boxes(g, 2, 150, 160, 224)
    ours = MultiScaleRoIAlign(strides=STRIDES, output_size=size, sampling_ratio=2)(pyramid(images), boxes)
    assert (ours - reference(pyramid(images), boxes, (160, 224), size)).abs().max() <= 1e-4


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = MultiScaleRoIAlign(strides=STRIDES, output_size=7, sampling_ratio=2)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.pool(pyramid(images), boxes)


def test_onnx_equals_torchvision_at_sizes_other_than_the_example(tmp_path):
    g = torch.Generator().manual_seed(5)
    example = torch.rand(2, 4, 256, 320, generator=g)
    b, h, w = Dim("b", min=1, max=8), Dim("h", min=2, max=40), Dim("w", min=2, max=40)
    program = torch.onnx.export(Pool().eval(), (example, clipped_boxes(g, 2, 30, 256, 320)), dynamo=True,
                                input_names=["images", "boxes"],
                                dynamic_shapes={"images": {0: b, 2: 32 * h, 3: 32 * w},
                                                "boxes": {0: b, 1: Dim("n", min=1, max=4096)}})
    program.save(str(tmp_path / "roi.onnx"))
    session = ort.InferenceSession(str(tmp_path / "roi.onnx"), providers=["CPUExecutionProvider"])
    for hh, ww in [(256, 320), (192, 320), (320, 192), (96, 96)]:
        images = torch.rand(3, 4, hh, ww, generator=g)
        boxes = clipped_boxes(g, 3, 40, hh, ww)
        got = session.run(None, {"images": images.numpy(), "boxes": boxes.numpy()})[0]
        want = reference(pyramid(images), boxes, (hh, ww), 7).numpy()
        assert np.abs(got - want).max() <= 1e-4, (hh, ww)
