"""Dual SIE-FPN detectors: the neck parts (LFE, GAU, MIC), the necks, backbones and detectors."""

from .backbone import BackboneWithNeck, build_resnet_body
from .detectors import build_backbone, build_detector
from .gau import GAU
from .lfe import LFE
from .mic import MIC
from .neck import (
    FPN,
    DualSIEFPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    PyramidNeck,
    ShapeSpec,
)

__all__ = [
    "FPN",
    "GAU",
    "LFE",
    "MIC",
    "BackboneWithNeck",
    "DualSIEFPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "PyramidNeck",
    "ShapeSpec",
    "build_backbone",
    "build_detector",
    "build_resnet_body",
]
