"""Datasets: COCO-format loading, training transforms and a synthetic COCO-format generator."""

from .coco import CocoDetection, collate
from .synth import generate as generate_synthetic
from .transforms import build_train_transforms

__all__ = ["CocoDetection", "collate", "build_train_transforms", "generate_synthetic"]
