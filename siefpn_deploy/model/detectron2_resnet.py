"""detectron2's ResNet parameter names -> torchvision's, shared by backbone initialisation (MSRA `R-50.pkl`)
and the checkpoint converter (`convert/`).

    detectron2 (`backbone.bottom_up.` stripped)  torchvision ResNet
    stem.conv1.weight / stem.conv1.norm.*        conv1.weight / bn1.*
    res{s}.{b}.conv{k}.weight / .conv{k}.norm.*  layer{s-1}.{b}.conv{k}.weight / .bn{k}.*
    res{s}.{b}.shortcut.weight / .shortcut.norm.* layer{s-1}.{b}.downsample.0.weight / .downsample.1.*

Caffe2's names (detectron2's ImageNet `R-50.pkl`, `R-101.pkl`) come first through `caffe2_to_detectron2`:
conv1_w, res_conv1_bn_{s,b}, res{s}_{b}_branch1_w, res{s}_{b}_branch2{a,b,c}_w and their _bn_{s,b}. Those
files fold BN into a scale and a bias; FrozenBN then runs with mean 0 and variance 1, as detectron2 does.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"res([2-5])\.(\d+)\.(conv[123]|shortcut)(\.norm)?\.(weight|bias|running_mean|running_var)$")
_C2_BLOCK = re.compile(r"res([2-5])_(\d+)_branch(1|2a|2b|2c)(_bn)?_([wsb])$")
_C2_CONV = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_C2_PARAM = {"w": "weight", "s": "weight", "b": "bias"}
IGNORED_C2 = ("fc1000_w", "fc1000_b")  # the ImageNet classifier


def detectron2_to_torchvision(name: str) -> str | None:
    """A bottom_up parameter name -> the torchvision ResNet's, or None when it is not a ResNet name."""
    stem = {"stem.conv1.weight": "conv1.weight"}
    if name in stem:
        return stem[name]
    if name.startswith("stem.conv1.norm."):
        return "bn1." + name.removeprefix("stem.conv1.norm.")
    m = _BLOCK.match(name)
    if m is None:
        return None
    stage, block, conv, norm, param = m.groups()
    if conv == "shortcut":
        return f"layer{int(stage) - 1}.{block}.downsample.{1 if norm else 0}.{param}"
    k = conv[-1]
    return f"layer{int(stage) - 1}.{block}.{'bn' if norm else 'conv'}{k}.{param}"


def caffe2_to_detectron2(name: str) -> str | None:
    """A Caffe2 ResNet blob name -> detectron2's bottom_up name, or None when it is not a ResNet blob."""
    if name == "conv1_w":
        return "stem.conv1.weight"
    if name in ("res_conv1_bn_s", "res_conv1_bn_b"):
        return "stem.conv1.norm." + _C2_PARAM[name[-1]]
    m = _C2_BLOCK.match(name)
    if m is None:
        return None
    stage, block, branch, bn, param = m.groups()
    if bool(bn) == (param == "w"):
        return None  # a BN "weight" or a conv "scale": not a name Caffe2's ResNets use
    return f"res{stage}.{block}.{_C2_CONV[branch]}{'.norm' if bn else ''}.{_C2_PARAM[param]}"
