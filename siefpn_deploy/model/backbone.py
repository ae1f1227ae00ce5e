"""ResNet bodies (c2..c5, named by stride) and the backbone+neck module the detectors consume."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..core.errors import UserError
from ..core.fileio import load_numpy_pickle, load_torch_file
from .detectron2_resnet import IGNORED_C2, caffe2_to_detectron2
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
    if path.suffix == ".pkl":
        state = read_msra_resnet(path)
    else:
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


def move_stride_to_1x1(resnet: nn.Module) -> None:
    """MSRA-style bottlenecks: the first block of layer2..layer4 strides its 1x1 conv1, not the 3x3 conv2
    (detectron2's STRIDE_IN_1X1, the layout of its R-50.pkl and of every model trained from it)."""
    for stage in _STAGES[1:]:
        block = getattr(resnet, stage)[0]
        if not hasattr(block, "conv3"):
            raise UserError("MODEL.RESNET_STRIDE_IN_1X1 applies to bottleneck ResNets (50, 101), not basic blocks")
        block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride


def read_msra_resnet(path: Path) -> dict[str, torch.Tensor]:
    """detectron2's ImageNet `R-50.pkl` / `R-101.pkl` (Caffe2 blob names, numpy arrays, read by the restricted
    unpickler) -> a torchvision ResNet state dict. Their BN is folded into scale and bias, so FrozenBN gets
    mean 0 and variance 1, as detectron2 gives it; an unknown blob is an error naming it."""
    from .detectron2_resnet import detectron2_to_torchvision

    data = load_numpy_pickle(path, "MODEL.BACKBONE_WEIGHTS file")
    blobs = data.get("blobs", data.get("model", data)) if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise UserError(f"MODEL.BACKBONE_WEIGHTS file {path} holds no dict of named arrays")
    state, unknown = {}, []
    for name, value in blobs.items():
        if name.endswith("_momentum") or name in IGNORED_C2:
            continue
        d2 = caffe2_to_detectron2(name)
        tv = detectron2_to_torchvision(d2) if d2 else None
        if tv is None:
            unknown.append(name)
            continue
        state[tv] = torch.as_tensor(value).clone()
    if unknown:
        raise UserError(f"MODEL.BACKBONE_WEIGHTS file {path} has {len(unknown)} blobs that are not a Caffe2 ResNet's "
                        f"(e.g. {', '.join(unknown[:3])})")
    for name in [k for k in state if k.endswith(".weight") and (k.startswith("bn") or ".bn" in k or "downsample.1" in k)]:
        prefix = name.removesuffix("weight")
        state.setdefault(prefix + "running_mean", torch.zeros_like(state[name]))
        state.setdefault(prefix + "running_var", torch.ones_like(state[name]))
    return state


def build_resnet_body(
    name: str, *, levels: list[str], norm: str, freeze_at: int, weights: str, stride_in_1x1: bool = False
) -> tuple[nn.Module, dict[str, ShapeSpec]]:
    """A torchvision ResNet cut after the stages that give `levels` (subset of c2..c5)."""
    ctor, _, c2_channels = RESNETS[name]
    norm_layer = FrozenBatchNorm2d if norm == "FrozenBN" else nn.BatchNorm2d
    resnet = ctor(weights=None, norm_layer=norm_layer)
    if stride_in_1x1:
        move_stride_to_1x1(resnet)
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
