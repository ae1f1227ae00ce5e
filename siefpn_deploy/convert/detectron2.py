"""detectron2 / official Dual SIE-FPN checkpoints -> the project's checkpoint, exactly.

    siefpn-deploy convert --from detectron2 model_final.pth --config-file retinanet_R50_1x

Reading: `.pth` (`{"model": state_dict, "trainer"?, "iteration"?}` or a bare state dict) with
`torch.load(weights_only=True)`; `.pkl` (`{"model": {name: ndarray}, "__author__"}`) with the restricted
unpickler that resolves numpy's reconstructors and nothing else. The architecture, depth, class count K
and pyramid width are read from the tensors, never from file names, and checked against the config.

Mapping: every detectron2 key has one rule below, every parameter of the model built from the config
must be filled, and every shape must agree; otherwise the error lists the keys. Never a non-strict load.
The numerics-relevant differences (docs/detectron2.md) are handled by the config
(BGR input, MSRA stride-in-1x1, ROIAlignV2, detectron2 anchors and test rules, `model/`) and by three
weight rewrites here: the R-CNN classifier's background row moves from last to first, the box
regressor and the mask predictor get a zero background slot, and the RetinaNet classifier gets a
never-firing class-0 channel per anchor, so labels are the contract's 1..C for every detector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.config import Config
from ..core.errors import UserError
from ..core.fileio import load_numpy_pickle, load_torch_file, read_json
from ..model.checkpoint import save_checkpoint
from ..model.detectors import build_detector
from ..model.detectron2_resnet import detectron2_to_torchvision

COCO_CLASSES = Path(__file__).with_name("coco_classes.json")
DEPTHS = {5: 50, 22: 101}  # blocks in res4 -> ResNet depth
BACKBONES = {50: "resnet50", 101: "resnet101"}
RETINANET_BACKGROUND_LOGIT = -50.0  # sigmoid(-50) ~ 2e-22: class 0 never passes any score threshold
IGNORED_TOP_LEVEL = ("trainer", "optimizer", "scheduler", "iteration", "__author__", "matching_heuristics")
FORMER_CODE_STATES = ("backbone.inf_block.",)  # the dormant INFBlock of earlier Dual SIE-FPN code


@dataclass(frozen=True)
class Detectron2Model:
    """What a detectron2 state dict holds, read from its tensors."""

    architecture: str  # retinanet | faster_rcnn | mask_rcnn
    depth: int
    num_classes: int  # K, without background
    channels: int  # the pyramid width
    anchors_per_location: int


def read_state(path: str | Path) -> dict[str, Tensor]:
    """The model tensors of a detectron2 checkpoint (.pth or .pkl), `module.` prefixes stripped."""
    path = Path(path)
    what = "detectron2 checkpoint"
    data = load_numpy_pickle(path, what) if path.suffix == ".pkl" else load_torch_file(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} holds a {type(data).__name__}, not a dict of tensors")
    model = data["model"] if "model" in data else {k: v for k, v in data.items() if k not in IGNORED_TOP_LEVEL}
    if not isinstance(model, dict) or not model:
        raise UserError(f"{what} {path} has no model weights (expected {{'model': state_dict}} or a state dict)")
    state = {}
    for name, value in model.items():
        if not isinstance(name, str) or not (isinstance(value, Tensor) or hasattr(value, "dtype")):
            raise UserError(f"{what} {path}: entry {name!r} is a {type(value).__name__}, not a tensor or array")
        state[name.removeprefix("module.")] = _as_tensor(value, f"{what} {path}: entry {name!r}")
    return state


def _as_tensor(value: Any, entry: str) -> Tensor:
    """A copy of one entry as a tensor; an array that no tensor can hold (dtype object, strings, dates) is a
    one-line error naming the entry, not torch's TypeError."""
    try:
        return torch.as_tensor(value).clone()
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{entry} is an array of dtype {value.dtype}, not numbers") from None


def describe(state: dict[str, Tensor], path: str | Path) -> Detectron2Model:
    """Architecture, depth, K and width from the tensors; an earlier code state is refused by name."""
    former = sorted({p for k in state for p in FORMER_CODE_STATES if k.startswith(p)})
    if former:
        raise UserError(f"{path} has {', '.join(p.rstrip('.') for p in former)} keys: it comes from an earlier "
                        "Dual SIE-FPN code state (INFBlock), which this release of the paper's code does not build")

    def need(key: str) -> Tensor:
        if key not in state:
            raise UserError(f"{path} is not a Dual SIE-FPN detectron2 checkpoint: it has no {key}")
        return state[key]

    if any(k.startswith("head.") for k in state):
        architecture = "retinanet"
        anchors = need("head.bbox_pred.weight").shape[0] // 4
        num_classes = need("head.cls_score.weight").shape[0] // anchors
    elif any(k.startswith("roi_heads.") for k in state):
        architecture = "mask_rcnn" if any(k.startswith("roi_heads.mask_head.") for k in state) else "faster_rcnn"
        anchors = need("proposal_generator.rpn_head.objectness_logits.weight").shape[0]
        num_classes = need("roi_heads.box_predictor.cls_score.weight").shape[0] - 1
    else:
        raise UserError(f"{path} has neither a RetinaNet head (head.*) nor R-CNN heads (roi_heads.*)")
    blocks = [int(m.group(1)) for k in state if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", k))]
    last = max(blocks, default=-1)
    if last not in DEPTHS:
        raise UserError(f"{path}: res4 has {last + 1} blocks; only ResNet-50 (6) and ResNet-101 (23) are supported")
    for key in ("backbone.nlu_block.theta.weight", "backbone.lfe_block.w"):
        need(key)  # a plain detectron2 FPN model has none of the SIE blocks
    return Detectron2Model(architecture, DEPTHS[last], num_classes, need("backbone.fpn_output5.weight").shape[0],
                           anchors)


def check_config(found: Detectron2Model, cfg: Config, num_classes: int, path: str | Path) -> None:
    """The config must build the architecture the tensors describe: one line per disagreement."""
    m = cfg.MODEL
    wrong = []
    if m.META_ARCHITECTURE != found.architecture:
        wrong.append(f"MODEL.META_ARCHITECTURE is {m.META_ARCHITECTURE}, the checkpoint is a {found.architecture}")
    if m.BACKBONE != BACKBONES[found.depth]:
        wrong.append(f"MODEL.BACKBONE is {m.BACKBONE}, the checkpoint's ResNet is {BACKBONES[found.depth]}")
    if m.FPN_OUT_CHANNELS != found.channels:
        wrong.append(f"MODEL.FPN_OUT_CHANNELS is {m.FPN_OUT_CHANNELS}, the checkpoint's is {found.channels}")
    if m.NECK != "dual_sie_fpn":
        wrong.append("MODEL.NECK must be dual_sie_fpn")
    if num_classes != found.num_classes:
        wrong.append(f"the classes list has {num_classes} classes, the checkpoint has {found.num_classes}")
    if found.architecture == "retinanet" and m.RETINANET_HEAD_NORM:
        wrong.append("MODEL.RETINANET_HEAD_NORM must be empty: detectron2's RetinaNet head has no norm")
    if wrong:
        raise UserError(f"{path} does not fit the config: " + "; ".join(wrong))


# --- the mapping: one rule per detectron2 key --------------------------------------------------------------

Rewrite = Callable[[Tensor], Tensor]


def _same(t: Tensor) -> Tensor:
    return t


def _background_first(t: Tensor) -> Tensor:
    """R-CNN cls_score [K+1, ...]: detectron2's background is the last row, torchvision's the first."""
    return torch.cat([t[-1:], t[:-1]])


def _zero_slot(width: int) -> Rewrite:
    """Prepend `width` zero rows: the background slot of the box regressor (4) and mask predictor (1)."""
    return lambda t: torch.cat([t.new_zeros((width, *t.shape[1:])), t])


def _retinanet_class0(anchors: int, fill: float) -> Rewrite:
    """cls_score [A*K, ...] (channel a*K + k) -> [A*(K+1), ...] (a*(K+1) + k + 1), class 0 filled."""
    def rewrite(t: Tensor) -> Tensor:
        per_anchor = t.reshape(anchors, -1, *t.shape[1:])
        pad = per_anchor.new_full((anchors, 1, *t.shape[1:]), fill)
        return torch.cat([pad, per_anchor], dim=1).reshape(-1, *t.shape[1:])
    return rewrite


def _neck_rule(name: str, levels: int, finest: int) -> str | None:
    """backbone.* of the Dual SIE-FPN neck -> backbone.neck.*; levels counts C_finest..C5."""
    if m := re.fullmatch(r"fpn_(lateral|output)(\d)\.(weight|bias)", name):
        kind, stage, param = m.groups()
        index = int(stage) - finest
        return f"{'lateral' if kind == 'lateral' else 'output'}.{index}.{param}" if 0 <= index < levels else None
    if m := re.fullmatch(r"top_block\.(p6|p7)\.(weight|bias)", name):
        return f"top_block.{m.group(1)}.{m.group(2)}"
    gau = {"theta": "theta", "phi.0": "phi", "g.0": "g", "W.0": "out", "W.1": "bn"}
    if m := re.fullmatch(r"nlu_block\.(theta|phi\.0|g\.0|W\.0|W\.1)\.(\w+)", name):
        return f"gau.{gau[m.group(1)]}.{m.group(2)}"
    lfe = {"conv3x3_1": "gate_conv3", "conv1x1_1": "gate_conv1", "conv3x3_2": "conv_gated", "conv3x3_3": "conv_out",
           "conv3x3_4": "conv_skip", "seblock.fc.0": "se.fc1", "seblock.fc.2": "se.fc2"}
    if name == "lfe_block.w":
        return "lfe.fusion_logits"
    if m := re.fullmatch(r"lfe_block\.(conv3x3_[1-4]|conv1x1_1|seblock\.fc\.[02])\.(weight|bias)", name):
        return f"lfe.{lfe[m.group(1)]}.{m.group(2)}"
    # rfe_block.{j} is stored coarsest first: j = 0 is C5, our mic list is finest first
    mic = {"conv1x1_1": "reduce.0", "bn1": "reduce.1", "conv3x3_1": "refine.0.0", "bn2": "refine.0.1",
           "conv3x3_2": "refine.1.0", "bn3": "refine.1.1", "conv3x3_3": "refine.2.0", "bn4": "refine.2.1"}
    if m := re.fullmatch(r"rfe_block\.(\d+)\.(conv1x1_1|conv3x3_[123]|bn[1-4])\.(\w+)", name):
        j = int(m.group(1))
        return f"mic.{levels - 1 - j}.{mic[m.group(2)]}.{m.group(3)}" if j < levels else None
    return None


_P = r"\.(?P<p>weight|bias)"  # every head tensor is a weight or a bias: the target keeps the name
_RETINANET_RULES: tuple[tuple[str, str], ...] = (
    # (detectron2 pattern, project key); the subnets' odd indices are ReLUs and hold no tensors
    *((rf"head\.cls_subnet\.{2 * i}{_P}", f"head.classification_head.conv.{i}.0.{{p}}") for i in range(4)),
    *((rf"head\.bbox_subnet\.{2 * i}{_P}", f"head.regression_head.conv.{i}.0.{{p}}") for i in range(4)),
    (rf"head\.bbox_pred{_P}", "head.regression_head.bbox_reg.{p}"),
)
_RCNN_RULES: tuple[tuple[str, str, Rewrite], ...] = (
    (rf"proposal_generator\.rpn_head\.conv{_P}", "rpn.head.conv.0.0.{p}", _same),
    (rf"proposal_generator\.rpn_head\.objectness_logits{_P}", "rpn.head.cls_logits.{p}", _same),
    (rf"proposal_generator\.rpn_head\.anchor_deltas{_P}", "rpn.head.bbox_pred.{p}", _same),
    (rf"roi_heads\.box_head\.fc1{_P}", "roi_heads.box_head.fc6.{p}", _same),
    (rf"roi_heads\.box_head\.fc2{_P}", "roi_heads.box_head.fc7.{p}", _same),
    (rf"roi_heads\.box_predictor\.cls_score{_P}", "roi_heads.box_predictor.cls_score.{p}", _background_first),
    (rf"roi_heads\.box_predictor\.bbox_pred{_P}", "roi_heads.box_predictor.bbox_pred.{p}", _zero_slot(4)),
)
_MASK_RULES: tuple[tuple[str, str, Rewrite], ...] = (
    *((rf"roi_heads\.mask_head\.mask_fcn{i}{_P}", f"roi_heads.mask_head.{i - 1}.0.{{p}}", _same) for i in range(1, 5)),
    (rf"roi_heads\.mask_head\.deconv{_P}", "roi_heads.mask_predictor.conv5_mask.{p}", _same),
    (rf"roi_heads\.mask_head\.predictor{_P}", "roi_heads.mask_predictor.mask_fcn_logits.{p}", _zero_slot(1)),
)


def _head_rule(name: str, found: Detectron2Model) -> tuple[str, Rewrite] | None:
    if found.architecture == "retinanet":
        rules: list[tuple[str, str, Rewrite]] = [(pattern, key, _same) for pattern, key in _RETINANET_RULES]
        # the classifier gets its class-0 channel per anchor: weight 0, bias a never-passing logit
        rules += [(r"head\.cls_score\.(?P<p>weight)", "head.classification_head.cls_logits.{p}",
                   _retinanet_class0(found.anchors_per_location, 0.0)),
                  (r"head\.cls_score\.(?P<p>bias)", "head.classification_head.cls_logits.{p}",
                   _retinanet_class0(found.anchors_per_location, RETINANET_BACKGROUND_LOGIT))]
    else:
        rules = list(_RCNN_RULES) + (list(_MASK_RULES) if found.architecture == "mask_rcnn" else [])
    for pattern, key, rewrite in rules:
        if m := re.fullmatch(pattern, name):
            return key.format(**m.groupdict()), rewrite
    return None


def target_of(name: str, found: Detectron2Model) -> tuple[str, Rewrite] | None:
    """A detectron2 key -> (the project model's key, the rewrite of its tensor), or None: unmapped."""
    finest = 3 if found.architecture == "retinanet" else 2
    levels = 6 - finest
    if name.startswith("backbone.bottom_up."):
        body = detectron2_to_torchvision(name.removeprefix("backbone.bottom_up."))
        return (f"backbone.body.{body}", _same) if body else None
    if name.startswith("backbone."):
        neck = _neck_rule(name.removeprefix("backbone."), levels, finest)
        return (f"backbone.neck.{neck}", _same) if neck else None
    return _head_rule(name, found)


def map_state(state: dict[str, Tensor], found: Detectron2Model, own: dict[str, Tensor], path: str | Path
              ) -> dict[str, Tensor]:
    """Every detectron2 key mapped, every own key filled, every shape equal; else one line listing them."""
    mapped: dict[str, Tensor] = {}
    unmapped, duplicate = [], []
    for name, tensor in state.items():
        rule = target_of(name, found)
        if rule is None or rule[0] not in own:
            unmapped.append(name)
            continue
        key, rewrite = rule
        if key in mapped:
            duplicate.append(name)
        mapped[key] = rewrite(tensor).to(own[key].dtype)
    missing = [k for k in own if k not in mapped]
    wrong = [f"{k} {list(mapped[k].shape)} vs {list(own[k].shape)}" for k in own
             if k in mapped and mapped[k].shape != own[k].shape]
    problems = []
    for label, items in (("unmapped keys", unmapped), ("keys mapped twice", duplicate),
                         ("model keys with no source", missing), ("wrong shapes", wrong)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
    if problems:
        raise UserError(f"cannot convert {path}: " + "; ".join(problems))
    return mapped


def read_classes(path: str | Path | None) -> dict[str, list]:
    """{"names", "category_ids"} in contiguous order: COCO's 80 by default, else a COCO instances JSON's
    categories sorted by id (detectron2's contiguous mapping)."""
    if path is None:
        data = json.loads(COCO_CLASSES.read_text())
        return {"names": data["names"], "category_ids": data["category_ids"]}
    data = read_json(path, "--classes file")
    cats = data.get("categories") if isinstance(data, dict) else None
    if not cats or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise UserError(f"--classes file {path} has no COCO 'categories' list of {{id, name}}")
    cats = sorted(cats, key=lambda c: int(c["id"]))
    return {"names": [str(c["name"]) for c in cats], "category_ids": [int(c["id"]) for c in cats]}


def convert_checkpoint(source: str | Path, cfg: Config, *, output: str | Path, classes: dict[str, list],
                       config_name: str) -> dict[str, Any]:
    """Write OUTPUT (weights, config, classes), atomically: a failure at any step leaves no file behind."""
    source, output = Path(source), Path(output)
    state = read_state(source)
    found = describe(state, source)
    check_config(found, cfg, len(classes["names"]), source)
    cfg.MODEL.BACKBONE_WEIGHTS = ""  # the checkpoint carries the backbone
    cfg.MODEL.WEIGHTS = str(output)
    model = build_detector(cfg, num_classes=len(classes["names"]))
    mapped = map_state(state, found, model.state_dict(), source)
    model.load_state_dict(mapped, strict=True)
    save_checkpoint(output, {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes,
                             "source": {"format": "detectron2", "file": str(source), "keys": len(state)}},
                    mark_last=False)
    return {"architecture": found.architecture, "depth": found.depth, "num_classes": found.num_classes,
            "channels": found.channels, "keys": len(state), "output": str(output), "config": config_name}
