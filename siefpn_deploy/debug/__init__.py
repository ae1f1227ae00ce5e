"""Finding where a reduced-precision model loses accuracy: `debug compare` runs two versions of one export (FP32
and its FP16 or INT8, or an ONNX model and its PyTorch checkpoint) on the same images and measures every tensor
they share, layer by layer (`compare.py`), into compare.{json,md,png} (`report.py`)."""

from .compare import DEFAULT_IMAGES, DEFAULT_TOLERANCE, METRICS, Comparison, Tolerance, compare
from .report import default_folder, quantize_command, write

__all__ = ["DEFAULT_IMAGES", "DEFAULT_TOLERANCE", "METRICS", "Comparison", "Tolerance", "compare", "default_folder",
           "quantize_command", "write"]
