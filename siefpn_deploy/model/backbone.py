"""ResNet bodies (c2..c5, named by stride) and the backbone+neck module the detectors consume."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..core.errors import UserError
from ..core.fileio import load_torch_file
from .neck import PyramidNeck, ShapeSpec
from .torchvision_api import intermediate_layers

RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, 64),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1, 64),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1, 256),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1, 256),
}
_STAGES = ["layer1", "layer2", "layer3", "layer4"]  # -> c2..c5


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision keeps its ImageNet file for `name` (the torch hub cache); never downloads."""
    url = RESNETS[name][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_backbone_weights(model: nn.Module, name: str, weights: str) -> None:
    if weights == "imagenet":
        path = imagenet_weights_path(name)
        if not path.is_file():
            raise UserError(
                f"ImageNet weights for {name} are not in the torch hub cache ({path}) and this machine "
                "does not download them; copy the file there or set MODEL.BACKBONE_WEIGHTS to a local .pth"
            )
    else:
        path = Path(weights)
    state = load_torch_file(path, "MODEL.BACKBONE_WEIGHTS file")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(
            f"backbone weights {path} do not fit {name}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def build_resnet_body(
    name: str, *, levels: list[str], norm: str, freeze_at: int, weights: str
) -> tuple[nn.Module, dict[str, ShapeSpec]]:
    """A torchvision ResNet cut after the stages that give `levels` (subset of c2..c5)."""
    ctor, _, c2_channels = RESNETS[name]
    norm_layer = FrozenBatchNorm2d if norm == "FrozenBN" else nn.BatchNorm2d
    resnet = ctor(weights=None, norm_layer=norm_layer)
    if weights:
        load_backbone_weights(resnet, name, weights)
    # detectron2's FREEZE_AT: 1 freezes the stem, 2 also res2 (layer1), ...
    frozen = (["conv1", "bn1"] if freeze_at >= 1 else []) + _STAGES[: max(freeze_at - 1, 0)]
    for module_name in frozen:
        getattr(resnet, module_name).requires_grad_(False)
    return_layers = {stage: f"c{i + 2}" for i, stage in enumerate(_STAGES) if f"c{i + 2}" in levels}
    body = intermediate_layers(resnet, return_layers)
    shapes = {
        f"c{i + 2}": ShapeSpec(channels=c2_channels * 2**i, stride=4 * 2**i) for i in range(4) if f"c{i + 2}" in levels
    }
    return body, shapes


class BackboneWithNeck(nn.Module):
    """Image -> backbone features (c*) -> pyramid (p*). torchvision's detectors read `out_channels`."""

    def __init__(self, *, body: nn.Module, neck: PyramidNeck) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels = neck.out_channels

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.neck.output_shape()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.neck(self.body(x))
