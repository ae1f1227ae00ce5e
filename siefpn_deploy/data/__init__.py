"""Datasets: COCO-format loading, training transforms and a synthetic COCO-format generator."""

from .coco import CocoDetection, collate
from .synth import generate as generate_synthetic
from .transforms import build_train_transforms

__all__ = ["CocoDetection", "build_train_transforms", "collate", "generate_synthetic"]
