"""Stage 6: run any artifact (checkpoint, ONNX, TensorRT engine) from Python, and benchmark it."""

from .detector import Detections, Detector

__all__ = ["Detections", "Detector"]
