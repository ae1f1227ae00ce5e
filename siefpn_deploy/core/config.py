"""Typed configs read from YAML, detectron2-style: UPPER_CASE keys, `_BASE_` inheritance and
`KEY VALUE` overrides from the command line. Values are parsed with yaml.safe_load, never eval'd;
an unknown key or a value of the wrong type is a one-line UserError.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .contract import DEFAULT_MAX_DETECTIONS, has_masks
from .errors import UserError

PRESET_DIR = Path(__file__).parent.parent / "configs"


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class ModelConfig:
    META_ARCHITECTURE: str = _choice("retinanet", "retinanet", "faster_rcnn", "mask_rcnn")
    BACKBONE: str = _choice("resnet50", "resnet18", "resnet34", "resnet50", "resnet101")
    # "" = random init, "imagenet" = torchvision's file in the torch hub cache, else a path to a .pth
    BACKBONE_WEIGHTS: str = ""
    BACKBONE_NORM: str = _choice("FrozenBN", "FrozenBN", "BN")
    # detectron2's RESNETS.STRIDE_IN_1X1: MSRA/Caffe2 ResNets (detectron2's R-50.pkl and every model trained
    # from it) stride the first 1x1 conv of res3..res5; torchvision's stride the 3x3. Shapes cannot tell.
    RESNET_STRIDE_IN_1X1: bool = False
    # detectron2's FREEZE_AT: 0 trains everything, 1 freezes the stem, 2 the stem and res2, ...
    FREEZE_AT: int = 2
    NECK: str = _choice("dual_sie_fpn", "dual_sie_fpn", "fpn")
    FPN_OUT_CHANNELS: int = 256
    # one base anchor size per pyramid level; each gets OCTAVE_SCALES sizes x * 2**(i/OCTAVE_SCALES), unrounded,
    # size-major, at the level's fixed stride: detectron2's DefaultAnchorGenerator (model/anchors.py)
    ANCHOR_SIZES: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    ANCHOR_OCTAVE_SCALES: int = 3
    ANCHOR_ASPECT_RATIOS: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # "" = detectron2's plain RetinaNet head; "GN" = GroupNorm after each head conv (trains from scratch faster)
    RETINANET_HEAD_NORM: str = _choice("", "", "GN")
    # R-CNN box head width (torchvision TwoMLPHead); 1024 in the paper's models
    ROI_BOX_HEAD_DIM: int = 1024
    # Mask R-CNN mask head conv width (detectron2's ROI_MASK_HEAD.CONV_DIM, 256); 0: the pyramid width
    ROI_MASK_HEAD_DIM: int = 0
    # detectron2's ROI_BOX_HEAD/ROI_MASK_HEAD.POOLER_TYPE and POOLER_SAMPLING_RATIO: ROIAlignV2 is
    # roi_align(aligned=True) (half-pixel centres); sampling ratio 0 = adaptive, ceil(RoI bin size) per axis
    ROI_POOLER_TYPE: str = _choice("ROIAlignV2", "ROIAlignV2", "ROIAlign")
    ROI_POOLER_SAMPLING_RATIO: int = 0
    # test-time candidate counts (detectron2's RETINANET.TOPK_CANDIDATES_TEST, RPN.PRE/POST_NMS_TOPK_TEST)
    RETINANET_TOPK_CANDIDATES_TEST: int = 1000
    RPN_PRE_NMS_TOPK_TEST: int = 1000
    RPN_POST_NMS_TOPK_TEST: int = 1000
    RPN_NMS_THRESH: float = 0.7
    SCORE_THRESH_TEST: float = 0.05
    NMS_THRESH_TEST: float = 0.5
    DETECTIONS_PER_IMAGE: int = DEFAULT_MAX_DETECTIONS  # K
    # in 0..255 units and in INPUT.FORMAT's channel order, as detectron2: torchvision's ImageNet statistics
    # here; MSRA weights take BGR with [103.53, 116.28, 123.675] and std [1, 1, 1]
    PIXEL_MEAN: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    PIXEL_STD: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    WEIGHTS: str = ""

    @property
    def has_masks(self) -> bool:
        return has_masks(self.META_ARCHITECTURE)


@dataclass
class DatasetsConfig:
    TRAIN_IMAGES: str = "datasets/synth/train"
    TRAIN_ANNOTATIONS: str = "datasets/synth/annotations/instances_train.json"
    TEST_IMAGES: str = "datasets/synth/val"
    TEST_ANNOTATIONS: str = "datasets/synth/annotations/instances_val.json"


@dataclass
class InputConfig:
    # the channel order the model's first conv expects (detectron2's INPUT.FORMAT); images are read as RGB and
    # reordered once, in training and in the contract's preprocessing
    FORMAT: str = _choice("RGB", "RGB", "BGR")
    MIN_SIZE_TRAIN: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    MAX_SIZE_TRAIN: int = 1333
    MIN_SIZE_TEST: int = 800
    MAX_SIZE_TEST: int = 1333
    FLIP_PROB: float = 0.5
    SIZE_DIVISIBILITY: int = 32


@dataclass
class SolverConfig:
    OPTIMIZER: str = _choice("SGD", "SGD", "AdamW")
    IMS_PER_BATCH: int = 16
    BASE_LR: float = 0.02
    MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 1e-4
    MAX_ITER: int = 90000
    LR_SCHEDULER: str = _choice("multistep", "multistep", "cosine")
    STEPS: list[int] = field(default_factory=lambda: [60000, 80000])
    GAMMA: float = 0.1
    WARMUP_ITERS: int = 1000
    WARMUP_FACTOR: float = 0.001
    CLIP_GRAD_NORM: float = 0.0  # 0 disables clipping
    CHECKPOINT_PERIOD: int = 5000
    # training arithmetic (train/precision.py): bf16 autocast on CPUs that compute bf16 natively (auto), always
    # (bf16), or never (fp32)
    AMP: str = _choice("auto", "auto", "bf16", "fp32")
    # the model's weights and activations in NHWC while training: what the CPU's oneDNN and the GPU's
    # tensor-core convolutions run fastest
    CHANNELS_LAST: bool = True


@dataclass
class DataloaderConfig:
    NUM_WORKERS: int = 2
    # batch landscape with landscape and portrait with portrait images: less padding (detectron2's default)
    ASPECT_RATIO_GROUPING: bool = True


@dataclass
class TestConfig:
    EVAL_PERIOD: int = 0  # 0: evaluate only at the end of training
    # images per evaluation batch, for training's evaluation and parity alike (one canvas per batch; 1 as
    # detectron2's test loader, so no image's detections depend on the others' sizes)
    IMS_PER_BATCH: int = 1


@dataclass
class Config:
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    DATASETS: DatasetsConfig = field(default_factory=DatasetsConfig)
    INPUT: InputConfig = field(default_factory=InputConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    DATALOADER: DataloaderConfig = field(default_factory=DataloaderConfig)
    TEST: TestConfig = field(default_factory=TestConfig)
    OUTPUT_DIR: str = "output/default"
    SEED: int = 0
    LOG_PERIOD: int = 20  # iterations between metrics.jsonl records and progress-bar updates

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _unknown(key: str, known: list[str], where: str) -> UserError:
    hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    suggestion = f" (did you mean {prefix}{hint[0]}?)" if hint else ""
    return UserError(f"unknown config key {key} in {where}{suggestion}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key} in {where} must be a list, got {value!r}")
        return [_coerce(v, item_tp, key, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and value is None:
        return ""
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"config key {key} in {where} must be {tp.__name__}, got {value!r}")
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise _unknown(full, list(fields), where)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key {full} in {where} must be a mapping, got {value!r}")
            _apply(current, value, f"{full}.", where)
            continue
        value = _coerce(value, hints[key], full, where)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"config key {full} in {where} must be one of {', '.join(choices)}; got {value!r}")
        setattr(obj, key, value)


def resolve_config_file(name: str | Path) -> Path:
    """A path as given, else a preset shipped with the package, with or without `.yaml`
    (`configs/synth_retinanet_R18.yaml`, `synth_retinanet_R18.yaml`, `synth_retinanet_R18`)."""
    path = Path(name)
    if path.is_file():
        return path
    for preset in (PRESET_DIR / path.name, PRESET_DIR / f"{path.name}.yaml"):
        if preset.is_file():
            return preset
    available = ", ".join(sorted(p.name for p in PRESET_DIR.glob("*.yaml") if not p.name.startswith("Base")))
    raise UserError(f"config file not found: {name} (presets: {available})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    merged = _read_yaml(resolve_config_file(path.parent / base))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def parse_overrides(opts: list[str]) -> dict[str, Any]:
    """`["SOLVER.BASE_LR", "0.02", "MODEL.WEIGHTS", "x.pth"]` -> nested dict, values parsed as YAML."""
    if len(opts) % 2:
        raise UserError(f"overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    options = [o for o in opts[::2] if isinstance(o, str) and o.startswith("-")]
    if options:
        raise UserError(f"option {options[0]} must come before the KEY VALUE overrides")
    nested: dict[str, Any] = {}
    for key, text in zip(opts[::2], opts[1::2]):
        try:
            value = yaml.safe_load(text) if isinstance(text, str) else text
        except yaml.YAMLError:
            value = text
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key}: {p} is not a section")
        node[leaf] = value
    return nested


def load_config(config_file: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if config_file is not None:
        path = resolve_config_file(config_file)
        _apply(cfg, _read_yaml(path), "", str(path))
    if overrides:
        _apply(cfg, parse_overrides(overrides), "", "command-line overrides")
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], where: str, overrides: list[str] | None = None) -> Config:
    """A config from a mapping (a checkpoint's stored config), then `KEY VALUE` overrides."""
    cfg = Config()
    _apply(cfg, data, "", where)
    if overrides:
        _apply(cfg, parse_overrides(overrides), "", "command-line overrides")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    s, i = cfg.SOLVER, cfg.INPUT
    if i.SIZE_DIVISIBILITY % 32:
        raise UserError(f"INPUT.SIZE_DIVISIBILITY must be a multiple of 32, got {i.SIZE_DIVISIBILITY}")
    if s.IMS_PER_BATCH < 1 or s.MAX_ITER < 1:
        raise UserError("SOLVER.IMS_PER_BATCH and SOLVER.MAX_ITER must be positive")
    if sorted(s.STEPS) != s.STEPS:
        raise UserError(f"SOLVER.STEPS must be increasing, got {s.STEPS}")
    m = cfg.MODEL
    if len(m.PIXEL_MEAN) != 3 or len(m.PIXEL_STD) != 3 or min(m.PIXEL_STD) <= 0:
        raise UserError(f"MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need 3 values each (std > 0), got {m.PIXEL_MEAN}, "
                        f"{m.PIXEL_STD}")
    if max(m.PIXEL_MEAN) <= 1.0:
        raise UserError(f"MODEL.PIXEL_MEAN is in 0..255 units (detectron2's convention), got {m.PIXEL_MEAN}")
    if m.ROI_POOLER_SAMPLING_RATIO < 0:
        raise UserError(f"MODEL.ROI_POOLER_SAMPLING_RATIO must be 0 (adaptive) or positive, got "
                        f"{m.ROI_POOLER_SAMPLING_RATIO}")
    levels = 5
    if len(cfg.MODEL.ANCHOR_SIZES) != levels:
        raise UserError(f"MODEL.ANCHOR_SIZES needs one size per pyramid level ({levels}), got {cfg.MODEL.ANCHOR_SIZES}")
