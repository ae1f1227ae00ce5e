"""Pyramid necks: Dual SIE-FPN and the plain FPN baseline, behind one interface.

Both read backbone features named by stride ("c2".."c5") and return pyramid levels named by stride
("p2".."p7"), finest first, all with `out_channels` channels. The extra coarse levels come from a
small top-block strategy module, as in detectron2.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gau import GAU
from .lfe import LFE
from .mic import MIC


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class LastLevelMaxPool(nn.Module):
    """P6 = maxpool(k=1, s=2)(P5): Faster and Mask R-CNN."""

    num_levels = 1

    def forward(self, p_last: torch.Tensor, c_last: torch.Tensor) -> list[torch.Tensor]:
        return [F.max_pool2d(p_last, kernel_size=1, stride=2)]


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/s2(C5), P7 = conv3x3/s2(relu(P6)): RetinaNet."""

    num_levels = 2

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = _init_conv(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1))
        self.p7 = _init_conv(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))

    def forward(self, p_last: torch.Tensor, c_last: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(c_last)
        return [p6, self.p7(F.relu(p6))]


class PyramidNeck(nn.Module):
    """Lateral 1x1 convs, a top-down merge (the subclass's `merge`), 3x3 output convs, a top block."""

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], out_channels: int, top_block: nn.Module) -> None:
        super().__init__()
        if list(in_shapes) != sorted(in_shapes, key=lambda n: in_shapes[n].stride):
            raise ValueError(f"in_shapes must be ordered finest first, got {list(in_shapes)}")
        self.in_features = list(in_shapes)
        self.out_channels = out_channels
        self.lateral = nn.ModuleList(_init_conv(nn.Conv2d(s.channels, out_channels, 1)) for s in in_shapes.values())
        self.output = nn.ModuleList(
            _init_conv(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_shapes
        )
        self.top_block = top_block
        strides = [s.stride for s in in_shapes.values()]
        strides += [strides[-1] * 2 ** (i + 1) for i in range(top_block.num_levels)]
        self._out_shapes = OrderedDict((f"p{int(math.log2(s))}", ShapeSpec(out_channels, s)) for s in strides)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._out_shapes)

    def merge(self, feats: list[torch.Tensor], laterals: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, features: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        feats = [features[name] for name in self.in_features]
        laterals = [conv(x) for conv, x in zip(self.lateral, feats)]
        merged = self.merge(feats, laterals)
        outs = [conv(m) for conv, m in zip(self.output, merged)]
        outs += self.top_block(outs[-1], feats[-1])
        return OrderedDict(zip(self._out_shapes, outs))


class FPN(PyramidNeck):
    """Plain FPN (Lin et al.): M_i = lat_i + nearest-upsample(M_{i+1}). The A/B baseline."""

    def merge(self, feats: list[torch.Tensor], laterals: list[torch.Tensor]) -> list[torch.Tensor]:
        merged = [laterals[-1]]
        for lat in reversed(laterals[:-1]):
            merged.insert(0, lat + F.interpolate(merged[0], size=lat.shape[-2:], mode="nearest"))
        return merged


class DualSIEFPN(PyramidNeck):
    """Dual SIE-FPN: M_top = LFE(lat) + MIC(C); M_i = GAU(M_{i+1}) + LFE(lat_i) + MIC_i(C_i).

    One LFE and one GAU are shared by all levels; each level has its own MIC.
    """

    def __init__(self, *, in_shapes: dict[str, ShapeSpec], out_channels: int, top_block: nn.Module) -> None:
        super().__init__(in_shapes=in_shapes, out_channels=out_channels, top_block=top_block)
        self.lfe = LFE(channels=out_channels)
        self.gau = GAU(channels=out_channels)
        self.mic = nn.ModuleList(MIC(in_channels=s.channels, out_channels=out_channels) for s in in_shapes.values())

    def merge(self, feats: list[torch.Tensor], laterals: list[torch.Tensor]) -> list[torch.Tensor]:
        enhanced = [self.lfe(lat) + mic(x) for lat, mic, x in zip(laterals, self.mic, feats)]
        merged = [enhanced[-1]]
        for lat, enh in zip(reversed(laterals[:-1]), reversed(enhanced[:-1])):
            merged.insert(0, self.gau(merged[0], lat.shape[-2:]) + enh)
        return merged
