"""Synthetic checkpoints in the layout of the official Dual SIE-FPN (detectron2) models.

The key list is written out from the documented layout of the official checkpoints (docs/detectron2.md: names,
order and shapes of the keys, the containers, what a converter infers from the tensors; the § numbers below are
those of the detectron2 checkpoint notes that page condenses). It is
deliberately *not* derived from ``siefpn_deploy.model``: a converter test built on the project's own
state_dict would only prove that the converter agrees with itself.

Values are random but deterministic (one CPU ``torch.Generator``, drawn in key order) and scaled so that a
converted model gives finite features and a non-trivial number of detections.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

ARCHS = ("retinanet", "faster_rcnn", "mask_rcnn")
# residual blocks per stage res2..res5 (detectron2 ResNet)
BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NUM_ANCHORS_RETINANET = 9  # 3 sizes x 3 aspect ratios per location
NUM_ANCHORS_RPN = 3  # 1 size x 3 aspect ratios per location
PIXEL_SCALE = 64.0  # see the stem conv
NUM_BATCHES_TRACKED = 90_000  # a "1x" schedule; carries no inference information (§4.5)

# §3.5, verified by the doc's authors against the official build_model() at K = 80, C = 256:
# (number of keys, number of elements over all state_dict entries).
DOCUMENTED_TOTALS: dict[tuple[str, int], tuple[int, int]] = {
    ("retinanet", 50): (401, 46_827_348),
    ("faster_rcnn", 50): (419, 52_450_820),
    ("mask_rcnn", 50): (431, 55_094_100),
    ("retinanet", 101): (656, 65_871_700),
    ("faster_rcnn", 101): (674, 71_495_172),
    ("mask_rcnn", 101): (686, 74_138_452),
}


@dataclass(frozen=True)
class _Entry:
    """One state_dict entry and how to draw it: ``normal`` (a = mean, b = std), ``uniform`` (a = low, b = high)
    or ``count`` (an nn.BatchNorm2d ``num_batches_tracked``: int64 scalar, not drawn)."""

    key: str
    shape: tuple[int, ...]
    kind: str
    a: float = 0.0
    b: float = 0.0


class _Layout:
    """Collects entries in registration order; the helpers mirror how the official modules register them."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []

    def normal(self, key: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        self.entries.append(_Entry(key, shape, "normal", mean, std))

    def uniform(self, key: str, shape: tuple[int, ...], low: float, high: float) -> None:
        self.entries.append(_Entry(key, shape, "uniform", low, high))

    def conv(self, prefix: str, out_c: int, in_c: int, k: int, *, bias: bool = True, std: float | None = None,
             bias_mean: float = 0.0, bias_std: float = 0.01) -> None:
        """nn.Conv2d / detectron2 Conv2d (weight, then bias). Default std 1/sqrt(fan_in) keeps activations O(1)."""
        self.normal(f"{prefix}.weight", (out_c, in_c, k, k), std if std is not None else math.sqrt(1.0 / (in_c * k * k)))
        if bias:
            self.normal(f"{prefix}.bias", (out_c,), bias_std, bias_mean)

    def linear(self, prefix: str, out_f: int, in_f: int, *, std: float | None = None, bias_std: float = 0.01) -> None:
        self.normal(f"{prefix}.weight", (out_f, in_f), std if std is not None else math.sqrt(1.0 / in_f))
        self.normal(f"{prefix}.bias", (out_f,), bias_std)

    def norm(self, prefix: str, c: int, *, weight: tuple[float, float] = (0.5, 1.0), tracked: bool) -> None:
        """detectron2 FrozenBatchNorm2d (4 buffers) or, with ``tracked``, nn.BatchNorm2d (+ num_batches_tracked).
        running_var is kept well away from 0 so eval-mode normalisation does not blow activations up."""
        self.uniform(f"{prefix}.weight", (c,), *weight)
        self.normal(f"{prefix}.bias", (c,), 0.05)
        self.normal(f"{prefix}.running_mean", (c,), 0.1)
        self.uniform(f"{prefix}.running_var", (c,), 0.5, 1.5)
        if tracked:
            self.entries.append(_Entry(f"{prefix}.num_batches_tracked", (), "count"))


def _check_args(arch: str, depth: int) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"depth must be one of {tuple(BLOCKS_PER_STAGE)}, got {depth}")


def _backbone(lay: _Layout, arch: str, depth: int, c: int) -> None:
    """§3.1: fpn_lateral/output (ascending stage) -> top_block (RetinaNet) -> bottom_up -> nlu -> lfe -> rfe."""
    stages = (3, 4, 5) if arch == "retinanet" else (2, 3, 4, 5)
    res_channels = {2: 256, 3: 512, 4: 1024, 5: 2048}
    for s in stages:  # FPN.NORM = "": plain convs with bias
        lay.conv(f"backbone.fpn_lateral{s}", c, res_channels[s], 1)
        lay.conv(f"backbone.fpn_output{s}", c, c, 3)
    if arch == "retinanet":  # LastLevelP6P7 on C5 (2048 channels), not on P5
        lay.conv("backbone.top_block.p6", c, 2048, 3)
        lay.conv("backbone.top_block.p7", c, c, 3)

    # ResNet, FrozenBN everywhere, no conv biases
    bu = "backbone.bottom_up"
    # detectron2 feeds BGR 0..255 minus the mean with PIXEL_STD = 1 (pixel std ~ 60): the stem absorbs that scale,
    # as trained weights do, so that the features (and the heads' logits) are O(1)
    lay.conv(f"{bu}.stem.conv1", 64, 3, 7, bias=False, std=math.sqrt(1.0 / (3 * 7 * 7)) / PIXEL_SCALE)
    lay.norm(f"{bu}.stem.conv1.norm", 64, tracked=False)
    for s, n_blocks in zip((2, 3, 4, 5), BLOCKS_PER_STAGE[depth]):
        out_c, mid_c = 256 * 2 ** (s - 2), 64 * 2 ** (s - 2)
        for b in range(n_blocks):
            p = f"{bu}.res{s}.{b}"
            in_c = out_c if b > 0 else (64 if s == 2 else out_c // 2)
            if b == 0:  # the shortcut is registered before conv1 (resnet.py:132-142)
                lay.conv(f"{p}.shortcut", out_c, in_c, 1, bias=False)
                lay.norm(f"{p}.shortcut.norm", out_c, tracked=False)
            lay.conv(f"{p}.conv1", mid_c, in_c, 1, bias=False)
            lay.norm(f"{p}.conv1.norm", mid_c, tracked=False)
            lay.conv(f"{p}.conv2", mid_c, mid_c, 3, bias=False)
            lay.norm(f"{p}.conv2.norm", mid_c, tracked=False)
            lay.conv(f"{p}.conv3", out_c, mid_c, 1, bias=False)
            # a small last-norm scale keeps each residual branch small, so 33 blocks of R101 do not explode
            lay.norm(f"{p}.conv3.norm", out_c, weight=(0.1, 0.3), tracked=False)

    # GAU (NLBlock2D): registration order g, W, theta, phi; g/phi are wrapped as Sequential(conv, MaxPool)
    inter = c // 2
    lay.conv("backbone.nlu_block.g.0", inter, c, 1)
    lay.conv("backbone.nlu_block.W.0", c, inter, 1)
    # officially zero-initialised; non-zero here so the attention branch actually contributes
    lay.norm("backbone.nlu_block.W.1", c, weight=(0.1, 0.3), tracked=True)
    lay.conv("backbone.nlu_block.theta", inter, c, 1)
    lay.conv("backbone.nlu_block.phi.0", inter, c, 1)

    # LFE: its own Parameter `w` comes before its children. Three distinct values make a wrong softmax
    # (or a dropped / permuted mixing weight) visible in a converted model's outputs.
    lay.normal("backbone.lfe_block.w", (3,), 0.5)
    for name, k in (("conv3x3_1", 3), ("conv1x1_1", 1), ("conv3x3_2", 3), ("conv3x3_3", 3), ("conv3x3_4", 3)):
        lay.conv(f"backbone.lfe_block.{name}", c, c, k)
    lay.linear("backbone.lfe_block.seblock.fc.0", c // 16, c)
    lay.linear("backbone.lfe_block.seblock.fc.2", c, c // 16)

    # MIC: ModuleList reversed, index 0 = coarsest level (res5), conv1x1_1's in-channels disambiguate
    for j, s in enumerate(reversed(stages)):
        p = f"backbone.rfe_block.{j}"
        lay.conv(f"{p}.conv1x1_1", c, res_channels[s], 1, bias=False)
        lay.norm(f"{p}.bn1", c, tracked=True)
        for i in (1, 2, 3):
            lay.conv(f"{p}.conv3x3_{i}", c, c, 3, bias=False)
            lay.norm(f"{p}.bn{i + 1}", c, tracked=True)


def _retinanet_head(lay: _Layout, c: int, num_classes: int) -> None:
    """§3.2: cls_subnet, bbox_subnet, cls_score, bbox_pred (odd subnet indices are ReLUs, no keys)."""
    for tower in ("cls_subnet", "bbox_subnet"):
        for i in (0, 2, 4, 6):
            lay.conv(f"head.{tower}.{i}", c, c, 3)
    # detectron2's prior-probability bias (p = 0.01) plus noise, and a weight large enough for the tower's
    # features move the logits: on a 512x640 image ~0.5% of the P3 scores (tens of thousands in all) exceed the
    # 0.05 test threshold, so postprocessing has real work, but far from all anchors fire
    prior = -math.log((1 - 0.01) / 0.01)
    lay.conv("head.cls_score", NUM_ANCHORS_RETINANET * num_classes, c, 3, std=0.05, bias_mean=prior, bias_std=0.5)
    lay.conv("head.bbox_pred", NUM_ANCHORS_RETINANET * 4, c, 3, std=0.01)


def _rcnn_heads(lay: _Layout, arch: str, c: int, num_classes: int) -> None:
    """§3.3 (RPN, box head, box predictor with background LAST) and, for Mask R-CNN, §3.4."""
    rpn = "proposal_generator.rpn_head"
    lay.conv(f"{rpn}.conv", c, c, 3)
    lay.conv(f"{rpn}.objectness_logits", NUM_ANCHORS_RPN, c, 1, bias_std=1.0)
    lay.conv(f"{rpn}.anchor_deltas", NUM_ANCHORS_RPN * 4, c, 1, std=0.01)
    lay.linear("roi_heads.box_head.fc1", 1024, c * 7 * 7)  # flattened (C, 7, 7) ROIAlign output
    lay.linear("roi_heads.box_head.fc2", 1024, 1024)
    lay.linear("roi_heads.box_predictor.cls_score", num_classes + 1, 1024, std=0.05, bias_std=1.0)
    lay.linear("roi_heads.box_predictor.bbox_pred", num_classes * 4, 1024, std=0.001)
    if arch == "mask_rcnn":
        dim = 256  # ROI_MASK_HEAD.CONV_DIM, independent of the FPN width
        for i in (1, 2, 3, 4):
            lay.conv(f"roi_heads.mask_head.mask_fcn{i}", dim, c if i == 1 else dim, 3)
        # ConvTranspose2d weight is [in, out, kH, kW]; with k = stride = 2 each output pixel sees one tap per
        # input channel, so fan_in = in_channels
        lay.normal("roi_heads.mask_head.deconv.weight", (dim, dim, 2, 2), math.sqrt(1.0 / dim))
        lay.normal("roi_heads.mask_head.deconv.bias", (dim,), 0.01)
        lay.conv("roi_heads.mask_head.predictor", num_classes, dim, 1, std=0.05)


def _layout(arch: str, depth: int, num_classes: int, channels: int) -> list[_Entry]:
    _check_args(arch, depth)
    lay = _Layout()
    _backbone(lay, arch, depth, channels)  # the meta-arch registers the backbone first
    if arch == "retinanet":
        _retinanet_head(lay, channels, num_classes)
    else:
        _rcnn_heads(lay, arch, channels, num_classes)
    return lay.entries


def _draw(entry: _Entry, gen: torch.Generator) -> torch.Tensor:
    if entry.kind == "count":
        return torch.tensor(NUM_BATCHES_TRACKED, dtype=torch.int64)
    # Draw in float64, then scale/shift and round to float32. torch's float32 normal_ on CPU has an AVX2-only
    # code path with approximate log/sin/cos; the float64 path is the same scalar code on every CPU, so the same
    # seed gives bit-identical tensors everywhere (torch.rand is integer-based and exact either way).
    if entry.kind == "normal":
        x = torch.randn(entry.shape, generator=gen, dtype=torch.float64) * entry.b + entry.a
    elif entry.kind == "uniform":
        x = torch.rand(entry.shape, generator=gen, dtype=torch.float64) * (entry.b - entry.a) + entry.a
    else:
        raise AssertionError(entry.kind)
    return x.to(torch.float32)


def detectron2_state_dict(arch: str, *, depth: int = 50, num_classes: int = 80, seed: int = 0,
                          channels: int = 256) -> OrderedDict[str, torch.Tensor]:
    """The state_dict of an official Dual SIE-FPN model (`arch` in {"retinanet", "faster_rcnn", "mask_rcnn"},
    ResNet-`depth` 50 or 101) with deterministic random weights.

    Keys are in the official order (§3). Dtypes are float32, except ``num_batches_tracked`` (int64 scalar) of
    the nn.BatchNorm2d layers in ``nlu_block.W.1`` and ``rfe_block.{j}.bn1..bn4``. FrozenBN norms
    (``backbone.bottom_up.*.norm``) have exactly weight, bias, running_mean, running_var. Real checkpoints
    always have ``channels`` = 256 (hard-coded in the official neck); other values make small test models.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return OrderedDict((e.key, _draw(e, gen)) for e in _layout(arch, depth, num_classes, channels))


def key_count(arch: str, depth: int) -> int:
    """The documented number of keys (§3.5: 401/419/431 for R50, 656/674/686 for R101)."""
    _check_args(arch, depth)
    return DOCUMENTED_TOTALS[arch, depth][0]


def documented_element_count(arch: str, depth: int) -> int:
    """The documented number of state_dict elements at K = 80, C = 256 (§3.5)."""
    _check_args(arch, depth)
    return DOCUMENTED_TOTALS[arch, depth][1]


def element_count(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def _trainer_state(state: dict[str, torch.Tensor], iteration: int) -> dict[str, object]:
    """What ``DefaultTrainer.state_dict()`` adds (§1): plain dicts, lists, ints, floats and small tensors, all
    loadable with ``weights_only=True``. A converter must ignore it."""
    first = next(iter(state.values()))
    return {
        "iteration": iteration,
        "hooks": {"LRScheduler": {"base_lrs": [0.01, 0.01], "last_epoch": iteration + 1}},
        "_trainer": {
            "iteration": iteration,
            "optimizer": {
                "state": {0: {"momentum_buffer": torch.zeros_like(first)}},
                "param_groups": [{"lr": 0.0001, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0001,
                                  "nesterov": False, "params": [0, 1]}],
            },
        },
    }


def save_detectron2_pth(state: dict[str, torch.Tensor], path: str | Path, *, style: str = "trainer") -> None:
    """Write `state` like detectron2 does (§1).

    ``"trainer"``: ``{"model", "trainer", "iteration"}`` (``model_final.pth`` from PeriodicCheckpointer);
    ``"best"``: ``{"model", "trainer"}`` without ``"iteration"`` (the repo's ``BestCheckpointer``);
    ``"bare"``: the state_dict alone.
    """
    iteration = 89_999
    if style == "trainer":
        obj: object = {"model": state, "trainer": _trainer_state(state, iteration), "iteration": iteration}
    elif style == "best":
        obj = {"model": state, "trainer": _trainer_state(state, iteration)}
    elif style == "bare":
        obj = state
    else:
        raise ValueError(f"style must be 'trainer', 'best' or 'bare', got {style!r}")
    torch.save(obj, path)


def save_detectron2_pkl(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a detectron2 model-zoo ``.pkl``: ``{"model": {name: numpy array}, "__author__": ...}``.
    ``num_batches_tracked`` becomes a 0-d int64 array."""
    obj = {"model": {k: v.detach().cpu().numpy() for k, v in state.items()}, "__author__": "siefpn-deploy tests"}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
